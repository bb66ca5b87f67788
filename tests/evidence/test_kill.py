"""SIGKILL mid-request: after a restart on the same store every returned prediction is whole."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from .server import ct_nifti, free_port, start_server, stop


@pytest.mark.slow
def test_sigkill_during_predictions_leaves_a_consistent_store(tmp_path: Path) -> None:
    store, port = tmp_path / "store", free_port()
    base = f"http://127.0.0.1:{port}"
    data = ct_nifti()
    returned: list[str] = []
    errors: list[str] = []
    stop_sending = threading.Event()

    def send() -> None:
        with httpx.Client(timeout=15) as client:
            while not stop_sending.is_set():
                try:
                    response = client.post(
                        f"{base}/v1/predict", data={"task": "hcc"}, files=[("ct", ("ct.nii.gz", data))]
                    )
                except httpx.HTTPError as exc:
                    errors.append(type(exc).__name__)  # the kill cuts requests in flight
                    return
                if response.status_code == 200:
                    returned.append(response.json()["id"])

    server = start_server(store, port)
    try:
        sender = threading.Thread(target=send)
        sender.start()
        deadline = time.monotonic() + 30
        while len(returned) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
        stop_sending.set()
        sender.join(timeout=20)
        assert not sender.is_alive()
    finally:
        stop(server)
    assert len(returned) >= 3, f"only {len(returned)} predictions before the deadline"

    # Half-written work is left as .tmp-* folders or files without a row; neither is listed.
    leftovers = sorted(p.name for p in (store / "files").iterdir() if p.name.startswith(".tmp-"))
    server = start_server(store, port)
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            fetched = [client.get(f"/v1/predictions/{pid}").status_code for pid in returned]
            # Ids the store holds files for but that were never returned: 404, or complete.
            others = [p.name for p in (store / "files").iterdir() if p.name not in returned]
            other_statuses = [client.get(f"/v1/predictions/{name.removeprefix('.tmp-')}") for name in others]
    finally:
        stop(server)
    print(
        f"\nkill: {len(returned)} returned before SIGKILL, in-flight errors {errors}, "
        f"tmp leftovers {len(leftovers)}, unreturned entries {len(others)}"
    )
    assert fetched == [200] * len(returned)
    for response in other_statuses:
        assert response.status_code in (200, 404)
        if response.status_code == 200:
            assert response.json()["id"] and response.json()["label"]
