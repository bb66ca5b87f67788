"""Helpers for the evidence tests: settings on the shipped demo models, a timed post, problem checks.

The few lines copied from tests/app/app_helpers.py (make_settings, zip_bytes) are copied, not
imported, so this folder stands alone.
"""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

from app.settings import Settings

DEMO_MODELS = Path(__file__).resolve().parents[2] / "app" / "demo_models"


def make_settings(model_dir: Path, store_dir: Path, **overrides: object) -> Settings:
    values = {
        "model_dir": model_dir,
        "store_dir": store_dir,
        "intra_op_threads": 1,
        "inter_op_threads": 1,
        "_env_file": None,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


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
