"""Odd but possible requests answer a 4xx problem naming the field, never a 500 or a silent guess."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest
from app_helpers import assert_problem, ct_volume, dicom_bytes, make_settings, nifti_bytes, series_zip
from fastapi.testclient import TestClient

from app.logs import JsonFormatter
from app.main import create_app
from models.dicom import series_from_volume

NII = "application/gzip"
DICOM_OUTPUTS = ("dicom", "dicom/sr", "dicom/pm", "dicom/seg", "dicom/capture", "attention?format=dicom")


def _dicom_without(client, keyword: str, invalid: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    """A graded CT series lacking `keyword`, or holding `invalid` in it."""
    datasets = series_from_volume(ct_volume())
    for ds in datasets:
        if invalid is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, invalid)
    files = [("ct", (f"{n}.dcm", dicom_bytes(ds), "application/dicom")) for n, ds in enumerate(datasets)]
    response = client.post("/v1/predict", data={"task": "hcc"}, files=files)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(
    ("keyword", "invalid"),
    [
        ("StudyInstanceUID", None),
        ("SeriesInstanceUID", None),
        ("FrameOfReferenceUID", None),
        ("SOPClassUID", None),
        ("StudyInstanceUID", "not a uid!"),  # a PACS refuses results that reference it
        ("FrameOfReferenceUID", "1." + "2" * 70),  # longer than the 64 characters of a UID
    ],
)
def test_dicom_results_need_the_source_uids(client, keyword, invalid) -> None:  # type: ignore[no-untyped-def]
    """Graded without a valid UID, but DICOM results must reference it: 409 naming it, not a 500."""
    prediction = _dicom_without(client, keyword, invalid)
    base = f"/v1/explain/{prediction['id']}"
    for path in DICOM_OUTPUTS:
        body = assert_problem(client.get(f"{base}/{path}"), 409, "not-available", "id")
        assert keyword in body["detail"] and "PNG and NIfTI" in body["detail"], body
    body = assert_problem(client.post(f"{base}/store"), 409, "not-available", "id")
    assert keyword in body["detail"]
    # What cannot be made is not advertised; the other outputs still are, and work.
    assert {"dicom_results", "store", "attention_dicom"}.isdisjoint(prediction["links"])
    index = {e["kind"]: e for e in client.get(base).json()["explanations"]}
    assert index["attention"]["formats"] == ["png", "nifti"]
    assert client.get(f"{base}/attention", params={"format": "nifti"}).status_code == 200


def test_a_complete_dicom_source_still_advertises_dicom_results(client) -> None:  # type: ignore[no-untyped-def]
    files = [("ct", ("ct.zip", series_zip(ct_volume()), "application/zip"))]
    prediction = client.post("/v1/predict", data={"task": "hcc"}, files=files).json()
    assert {"dicom_results", "store", "attention_dicom"} <= set(prediction["links"])
    index = {e["kind"]: e for e in client.get(prediction["links"]["explanations"]).json()["explanations"]}
    assert "dicom" in index["attention"]["formats"]


def test_deeply_nested_json_body(client) -> None:  # type: ignore[no-untyped-def]
    """Python's JSON parser gives up on deep nesting with a RecursionError, not a ValueError."""
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"study_uid": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"):
        response = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
        problem = assert_problem(response, 422, "invalid-study", "body")
        assert "nest" in problem["detail"] and "study_uid" in problem["detail"]


@pytest.fixture(scope="module")
def nifti_case(client) -> str:  # type: ignore[no-untyped-def]
    files = [("ct", ("ct.nii.gz", nifti_bytes(ct_volume()), NII))]
    return client.post("/v1/predict", data={"task": "hcc"}, files=files).json()["id"]


@pytest.mark.parametrize("index", ["99999", str(10**23), "-1", "-99999"])
@pytest.mark.parametrize(
    "path", ["attention", "attention?plane=coronal", "attention?format=dicom", "attribution?method=occlusion"]
)
def test_a_slice_outside_the_volume_is_refused(client, nifti_case, path, index) -> None:  # type: ignore[no-untyped-def]
    """It used to be clamped to the last slice without a word."""
    separator = "&" if "?" in path else "?"
    response = client.get(f"/v1/explain/{nifti_case}/{path}{separator}slice={index}")
    body = assert_problem(response, 422, "invalid-request", "slice")
    assert f"slice {index} " in body["detail"] and "0 to " in body["detail"], body


def test_the_last_slice_is_served(client, nifti_case) -> None:  # type: ignore[no-untyped-def]
    refused = client.get(f"/v1/explain/{nifti_case}/attention", params={"slice": 99999}).json()["detail"]
    last = int(refused.split("0 to ")[1].split()[0].rstrip(",;:)"))
    response = client.get(f"/v1/explain/{nifti_case}/attention", params={"slice": last})
    assert response.status_code == 200 and response.headers["x-slice"] == str(last)


def test_unhandled_error_is_logged_with_the_request_id(model_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The 500 body says the request id finds the error in the logs: the log line must carry it."""
    app = create_app(make_settings(model_dir, tmp_path))

    @app.get("/test-only-boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())  # formats at emit time, while the request id is set
    logging.getLogger("app").addHandler(handler)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            response = client.get("/test-only-boom", headers={"X-Request-ID": "probe-42"})
    finally:
        logging.getLogger("app").removeHandler(handler)
    body = assert_problem(response, 500, "internal")
    assert body["request_id"] == "probe-42"
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    [error] = [r for r in records if r["message"] == "unhandled error"]
    assert error["request_id"] == "probe-42" and error["error_type"] == "RuntimeError"


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_head_probes(client, path) -> None:  # type: ignore[no-untyped-def]
    """Load balancers probe with HEAD."""
    response = client.head(path)
    assert response.status_code == 200 and response.content == b""
    assert response.headers["content-type"] == "application/json"


def _post_over_asgi(app, headers: list, pieces: list[bytes]) -> tuple[int, dict]:  # type: ignore[no-untyped-def]
    """POST /v1/predict to the real app over ASGI, the body in `pieces`, then silence (when the
    last piece says more is coming); TestClient cannot do this, it always sends the whole body."""
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "path": "/v1/predict",
        "raw_path": b"/v1/predict",
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 5000),
        "headers": headers,
    }
    queue = list(pieces)
    sent: list[dict] = []

    async def receive() -> dict:
        if queue:
            return {"type": "http.request", "body": queue.pop(0), "more_body": True}
        await asyncio.sleep(3600)  # the rest never comes
        raise AssertionError("unreachable")

    async def send(message: dict) -> None:
        sent.append(message)

    async def run() -> None:
        async with app.router.lifespan_context(app):
            await asyncio.wait_for(app(scope, receive, send), timeout=30)

    asyncio.run(run())
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body)


BOUNDARY = "b0undary"
MULTIPART = (b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode())


def test_a_body_that_stalls_is_cut_with_a_408(model_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A client announcing more than it sends held the request open forever; now each piece
    of the body must come within the idle timeout."""
    app = create_app(make_settings(model_dir, tmp_path / "store", body_idle_timeout_s=0.2))
    first = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="task"\r\n\r\nhcc\r\n'.encode()
    status, body = _post_over_asgi(app, [MULTIPART, (b"content-length", b"100000")], [first])
    assert status == 408 and body["type"].endswith("/body-timeout") and body["field"] == "body"
    assert "0.2 s" in body["detail"]


def test_a_streamed_body_over_the_limit_is_a_413(model_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Without a Content-Length (chunked) the size is counted as the body streams in: that
    refusal used to reach the client as a 500 (raised inside the logging middleware)."""
    app = create_app(make_settings(model_dir, tmp_path / "store", max_upload_bytes=1000))
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="ct"; filename="ct.nii"\r\n\r\n'.encode()
    status, body = _post_over_asgi(app, [MULTIPART], [head + b"x" * 600, b"x" * 600])
    assert status == 413 and body["type"].endswith("/too-large") and body["field"] == "body"
