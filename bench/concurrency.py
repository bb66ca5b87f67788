"""`/v1/predict` under concurrent clients: p50, p95, p99, throughput, 503s, peak memory. JSON.

    python -m bench.concurrency [--levels 1 4 16] [--seconds 20] [--quick]

The service runs as a real `reactkd serve` subprocess on 127.0.0.1 with its default settings
(at most `max_concurrent_inferences` predictions at once, 2 by default; a request finding
every slot taken gets 503 with Retry-After at once). For each concurrency level, that many
client threads post one generated HCC CT as NIfTI in a loop for `--seconds` (and at most
`--max-requests` requests in all); a client that gets a 503 backs off 50 ms, as a polite
client would. Reported per level: 200s and 503s counted apart, latency percentiles of the
200s (nearest rank), throughput (200s per second of wall time) and attempts per second.
At the end: the server's peak resident memory (VmHWM of /proc/PID/status) and its
resident memory after warm-up.

The client threads run on the same machine as the server (loopback only), so on few cores
their own CPU time is part of what is measured; the load average is printed beside.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.settings import Settings
from bench.predict import DEFAULT_MODELS, ct_case, nifti_bytes, rss_mib
from bench.server import start_server, stop
from models.contract import Volume
from training.data.synth_hcc import generate_hcc_case

BACKOFF_S = 0.05
"""A client's pause after a 503 before it tries again."""


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def percentile_ms(seconds: list[float], q: float) -> float | None:
    """Nearest-rank percentile `q` (0-100) of `seconds`, in milliseconds; None when empty."""
    if not seconds:
        return None
    ordered = sorted(seconds)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return round(1000.0 * ordered[rank - 1], 1)


def run_level(base: str, body: bytes, clients: int, seconds: float, max_requests: int) -> dict[str, Any]:
    """`clients` threads posting `body` for `seconds` (at most `max_requests` in all)."""
    statuses: collections.Counter = collections.Counter()
    ok_latencies: list[float] = []
    transport_errors = 0
    lock = threading.Lock()
    sent = 0
    end = time.monotonic() + seconds

    def take_ticket() -> bool:
        nonlocal sent
        with lock:
            if sent >= max_requests or time.monotonic() >= end:
                return False
            sent += 1
            return True

    def client() -> None:
        nonlocal transport_errors
        with httpx.Client(base_url=base, timeout=60) as http:
            while take_ticket():
                start = time.perf_counter()
                try:
                    response = http.post(
                        "/v1/predict", data={"task": "hcc"}, files=[("ct", ("ct.nii", body))]
                    )
                except httpx.HTTPError:
                    with lock:
                        transport_errors += 1
                    continue
                elapsed = time.perf_counter() - start
                with lock:
                    statuses[response.status_code] += 1
                    if response.status_code == 200:
                        ok_latencies.append(elapsed)
                if response.status_code == 503:
                    time.sleep(BACKOFF_S)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 120)
    wall = time.perf_counter() - started
    ok = statuses.get(200, 0)
    return {
        "clients": clients,
        "wall_s": round(wall, 2),
        "requests": sum(statuses.values()) + transport_errors,
        "ok_200": ok,
        "busy_503": statuses.get(503, 0),
        "other_statuses": {str(k): v for k, v in sorted(statuses.items()) if k not in (200, 503)},
        "transport_errors": transport_errors,
        "p50_ms": percentile_ms(ok_latencies, 50),
        "p95_ms": percentile_ms(ok_latencies, 95),
        "p99_ms": percentile_ms(ok_latencies, 99),
        "throughput_rps": round(ok / wall, 2),
        "attempts_per_second": round(sum(statuses.values()) / wall, 2),
    }


def serve_levels(
    model_dir: Path,
    body: bytes,
    levels: list[int],
    seconds: float,
    max_requests: int,
    workers: int,
    overrides: dict[str, str],
) -> dict[str, Any]:
    """One server of `workers` processes through every level; its memory (the parent's and
    its workers' resident memory added up)."""
    out: dict[str, Any] = {"levels": {}}
    with tempfile.TemporaryDirectory() as store:
        server, base = start_server(model_dir, store, None, REACTKD_WORKERS=str(workers), **overrides)
        try:
            pids = [server.pid, *_children(server.pid)]
            rss_ready = sum(rss_mib(pid) for pid in pids)
            with httpx.Client(base_url=base, timeout=60) as http:
                for _ in range(2 * workers):  # warm-up, each worker likely once
                    http.post("/v1/predict", data={"task": "hcc"}, files=[("ct", ("ct.nii", body))])
            for clients in levels:
                print(
                    f"{workers} worker(s), {clients} concurrent clients for {seconds:.0f} s ...",
                    file=sys.stderr,
                    flush=True,
                )
                out["levels"][str(clients)] = run_level(base, body, clients, seconds, max_requests)
            out["server_memory_mib"] = {
                "rss_after_ready": round(rss_ready, 1),
                "rss_at_end": round(sum(rss_mib(pid) for pid in pids), 1),
                "peak_rss": round(sum(peak_rss_mib(pid) for pid in pids), 1),
            }
        finally:
            stop(server)
    return out


def _children(pid: int) -> list[int]:
    """The worker processes of a server started with several workers."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        found += [int(c) for c in children]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=20.0, help="per level")
    parser.add_argument("--max-requests", type=int, default=2000, help="per level, a bound in count")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODELS)
    parser.add_argument(
        "--max-inferences",
        type=int,
        default=None,
        help="REACTKD_MAX_CONCURRENT_INFERENCES (default: the service's)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1, 2],
        help="worker processes of the server; each count is served and measured in turn",
    )
    parser.add_argument("--quick", action="store_true", help="a 64x64x32 CT and 2 s per level (for CI)")
    args = parser.parse_args(argv)
    seconds = 2.0 if args.quick else args.seconds
    if args.quick:
        case = generate_hcc_case(0, 0, shape=(64, 64, 32))
        volume = Volume(case.volumes["ct"].astype(np.float32), case.affines["ct"])
    else:
        volume = ct_case()
    body = nifti_bytes(volume)
    overrides = {}
    if args.max_inferences is not None:
        overrides["REACTKD_MAX_CONCURRENT_INFERENCES"] = str(args.max_inferences)
    by_workers = {
        str(n): serve_levels(args.model_dir, body, args.levels, seconds, args.max_requests, n, overrides)
        for n in args.workers
    }
    first = by_workers[str(args.workers[0])]
    levels, memory = first["levels"], first["server_memory_mib"]
    report = {
        "volume": list(volume.array.shape),
        "upload_megabytes": round(len(body) / 2**20, 2),
        "seconds_per_level": seconds,
        "max_concurrent_inferences": args.max_inferences
        or Settings.model_fields["max_concurrent_inferences"].default,
        "backoff_after_503_s": BACKOFF_S,
        "quick": args.quick,
        "workers": args.workers[0],
        "levels": levels,
        "server_memory_mib": memory,
        "by_workers": by_workers,
        "throughput_over_first_workers": {
            n: {
                level: round(x["throughput_rps"] / levels[level]["throughput_rps"], 2)
                for level, x in w["levels"].items()
                if levels[level]["throughput_rps"]
            }
            for n, w in by_workers.items()
            if n != str(args.workers[0])
        },
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
