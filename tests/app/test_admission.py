"""Admission before work: a slot and a memory reservation per request, taken before its body
is read, held until it is answered; refusals are 503 + Retry-After at once."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.admission import MIN_PREDICTION_BYTES, PEAK_PER_BODY_BYTE, InferenceGate, prediction_memory
from app.errors import BusyError, TooLargeError
from app.settings import Settings
from bench.server import start_server, stop

MiB = 2**20


def test_an_admitted_request_keeps_its_slot_through_every_stage() -> None:
    async def scenario() -> None:
        gate = InferenceGate(1)
        async with gate.admit(0) as admission:
            # Its stages run under its slot: never refused half-way...
            assert await admission.run(sum, [1, 2], timeout=5) == 3
            assert await admission.run(sum, [3], timeout=5) == 3
            # ...while any other request, or an explanation, is refused at once.
            with pytest.raises(BusyError) as info:
                gate.admit(0)
            assert info.value.headers["Retry-After"]
            with pytest.raises(BusyError):
                await gate.run(sum, [1], timeout=5)
        assert gate.busy == 0
        assert await gate.run(sum, [1], timeout=5) == 1

    asyncio.run(scenario())


def test_the_memory_budget_admits_by_declared_size_and_gives_it_back() -> None:
    async def scenario() -> None:
        gate = InferenceGate(4, memory_budget=1000 * MiB)
        first = gate.admit(600 * MiB)
        with pytest.raises(BusyError, match="needs about 500 MiB"):
            gate.admit(500 * MiB)
        with pytest.raises(TooLargeError, match="more than the whole memory budget"):
            gate.admit(1001 * MiB)  # never fits: 413, not a 503 inviting a retry
        second = gate.admit(400 * MiB)  # fits beside the first
        assert gate.reserved == 1000 * MiB
        first.close()
        first.close()  # closing twice gives back once
        assert gate.reserved == 400 * MiB and gate.busy == 1
        second.close()

    asyncio.run(scenario())


def test_a_prediction_reserves_by_what_its_client_declares() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    upload = {"content-type": "multipart/form-data; boundary=x", "content-length": str(100 * 10**6)}
    assert prediction_memory(upload, settings) == PEAK_PER_BODY_BYTE * 100 * 10**6
    tiny = {**upload, "content-length": "1000"}
    assert prediction_memory(tiny, settings) == MIN_PREDICTION_BYTES
    # A study to pull declares nothing of its size: it reserves as for a large series.
    pull = {"content-type": "application/json", "content-length": "80"}
    assert prediction_memory(pull, settings) > prediction_memory(upload, settings)
    huge = {**upload, "content-length": str(10**12)}  # capped at the largest upload allowed
    assert prediction_memory(huge, settings) == PEAK_PER_BODY_BYTE * settings.max_upload_bytes


def _headers_only(base: str, content_length: int) -> socket.socket:
    """A connection that sent the request line and headers of a multipart upload, no body."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        (
            "POST /v1/predict?task=hcc HTTP/1.1\r\n"
            f"Host: {host}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {content_length}\r\n\r\n"
        ).encode()
    )
    return sock


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    while len(body) < int(headers.get("content-length", "0")):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, json.loads(body or b"{}")


@pytest.fixture(scope="module")
def one_slot_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, base = start_server(
        model_dir,
        tmp_path_factory.mktemp("store"),
        None,
        REACTKD_MAX_CONCURRENT_INFERENCES="1",
        REACTKD_MEMORY_BUDGET_MB="1000",
        REACTKD_WARMUP="false",
    )
    try:
        yield base
    finally:
        stop(process)


@pytest.mark.timeout(120)
def test_refusals_come_before_the_body_is_read(one_slot_server: str) -> None:
    """A real server, one slot: while an upload holds it (its body still coming), another
    request is answered 503 + Retry-After in well under 100 ms, its body never sent; a
    request declaring more than the whole memory budget is refused alike, 413, naming it."""
    holder = _headers_only(one_slot_server, 10 * 10**6)
    holder.sendall(b"--b\r\n")  # the body has begun: the request holds its slot
    time.sleep(0.5)
    try:
        start = time.perf_counter()
        waiting = _headers_only(one_slot_server, 10 * 10**6)
        status, headers, body = _answer(waiting)
        elapsed = time.perf_counter() - start
        assert status == 503 and headers.get("retry-after"), (status, headers, body)
        assert body["type"].endswith("/busy") and "already at work" in body["detail"], body
        assert elapsed < 0.1, elapsed
        waiting.close()
    finally:
        holder.close()
    time.sleep(0.5)  # the holder's disconnect frees its slot
    # 1000 MiB of budget; 200 MB declared needs 1.6 GB, more than the whole budget: 413 at
    # once, naming the budget (waiting would not help, so no Retry-After).
    big = _headers_only(one_slot_server, 200 * 10**6)
    status, headers, body = _answer(big)
    big.close()
    assert status == 413 and "retry-after" not in headers, body
    assert "memory budget" in body["detail"] and body["field"] == "body", body
