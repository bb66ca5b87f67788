"""Helpers for the evidence tests: settings on the shipped demo models, a timed post, problem checks."""

from __future__ import annotations

import time
from pathlib import Path

from tests.common import make_settings, zip_bytes

__all__ = ["make_settings", "zip_bytes"]

DEMO_MODELS = Path(__file__).resolve().parents[2] / "app" / "demo_models"


def timed_post(client, name: str, data: bytes, task: str = "hcc"):  # type: ignore[no-untyped-def]
    """POST one file as the `ct` field; returns (response, seconds)."""
    start = time.monotonic()
    response = client.post(
        "/v1/predict", data={"task": task}, files=[("ct", (name, data, "application/octet-stream"))]
    )
    return response, time.monotonic() - start


def check_problem(response) -> str:  # type: ignore[no-untyped-def]
    """Assert a 4xx problem+json with the RFC 9457 members; returns the problem type slug."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    for key in ("type", "title", "status", "detail"):
        assert body.get(key), (key, body)
    assert body["status"] == response.status_code
    return str(body["type"]).rsplit("/", 1)[-1]
