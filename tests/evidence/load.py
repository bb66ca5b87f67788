"""Loopback load run against a served subprocess: statuses, Retry-After on 503s, ids fetchable.

Short version in CI (tests/evidence/test_load.py); the issue's full run:
    python -m tests.evidence.load --concurrency 32 --seconds 60
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .server import ct_nifti, free_port, start_server, stop


@dataclass
class LoadResult:
    statuses: collections.Counter = field(default_factory=collections.Counter)
    ids: list[str] = field(default_factory=list)
    bad_5xx: list[str] = field(default_factory=list)  # any 5xx but a 503 carrying Retry-After
    transport_errors: int = 0
    latencies: list[float] = field(default_factory=list)
    unfetchable: list[str] = field(default_factory=list)


def run_load(store: Path, concurrency: int, seconds: float, max_inferences: int = 2) -> LoadResult:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data = ct_nifti()
    result = LoadResult()
    lock = threading.Lock()
    server = start_server(store, port, REACTKD_MAX_CONCURRENT_INFERENCES=str(max_inferences))
    end = time.monotonic() + seconds

    def worker() -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            while time.monotonic() < end:
                start = time.monotonic()
                try:
                    response = client.post(
                        "/v1/predict", data={"task": "hcc"}, files=[("ct", ("ct.nii.gz", data))]
                    )
                except httpx.HTTPError:
                    with lock:
                        result.transport_errors += 1
                    continue
                with lock:
                    result.latencies.append(time.monotonic() - start)
                    result.statuses[response.status_code] += 1
                    if response.status_code == 200:
                        result.ids.append(response.json()["id"])
                    elif response.status_code >= 500 and not (
                        response.status_code == 503 and "retry-after" in response.headers
                    ):
                        result.bad_5xx.append(f"{response.status_code} {response.text[:200]}")
                if response.status_code == 503:
                    time.sleep(0.05)  # a polite client backs off a little

    try:
        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=seconds + 60)
        with httpx.Client(base_url=base, timeout=10) as client:
            result.unfetchable = [
                i for i in result.ids if client.get(f"/v1/predictions/{i}").status_code != 200
            ]
    finally:
        stop(server)
    return result


def summary(result: LoadResult, seconds: float) -> str:
    lat = sorted(result.latencies) or [0.0]
    p50, p95 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.95))]
    return (
        f"statuses {dict(result.statuses)}, {len(result.ids) / seconds:.1f} predictions/s, "
        f"latency p50 {p50:.2f} s p95 {p95:.2f} s, transport errors {result.transport_errors}, "
        f"bad 5xx {len(result.bad_5xx)}, unfetchable ids {len(result.unfetchable)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-inferences", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as store:
        result = run_load(Path(store), args.concurrency, args.seconds, args.max_inferences)
    print(summary(result, args.seconds))
    raise SystemExit(1 if result.bad_5xx or result.unfetchable else 0)


if __name__ == "__main__":
    main()
