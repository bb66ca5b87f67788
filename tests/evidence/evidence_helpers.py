"""Helpers for the evidence tests: settings on the shipped demo models, a timed post."""

from __future__ import annotations

import time
from pathlib import Path

from tests.common import assert_problem, make_settings, slug_of, zip_bytes

__all__ = ["assert_problem", "make_settings", "slug_of", "zip_bytes"]

DEMO_MODELS = Path(__file__).resolve().parents[2] / "app" / "demo_models"


def timed_post(client, name: str, data: bytes, task: str = "hcc"):  # type: ignore[no-untyped-def]
    """POST one file as the `ct` field; returns (response, seconds)."""
    start = time.monotonic()
    response = client.post(
        "/v1/predict", data={"task": task}, files=[("ct", (name, data, "application/octet-stream"))]
    )
    return response, time.monotonic() - start
