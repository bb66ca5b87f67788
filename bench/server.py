"""The service as a real `reactkd serve` subprocess on loopback, for benchmarks and evidence.

One way to start it (`start_server`: a free or given port, wait until `/readyz` is 200)
and to stop it (`stop`: terminate, then kill), shared by `bench.predict`,
`bench.concurrency` and the kill and load evidence in `tests/evidence/`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    model_dir: Path, store: str | Path, port: int | None = None, **env: str
) -> tuple[subprocess.Popen, str]:
    """`reactkd serve` on 127.0.0.1 (development mode, quiet logs, `env` on top); returns the
    process and its base URL once `/readyz` answers 200 (RuntimeError after 120 s)."""
    port = port or free_port()
    environ = {
        **os.environ,
        "REACTKD_ENVIRONMENT": "development",
        "REACTKD_MODEL_DIR": str(model_dir),
        "REACTKD_STORE_DIR": str(store),
        "REACTKD_LOG_LEVEL": "WARNING",
        **env,
    }
    command = [sys.executable, "-m", "training.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--log-level", "warning"],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode} before it was ready")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop(process)
    raise RuntimeError(f"the service did not become ready within {READY_TIMEOUT_S} s")


def stop(process: subprocess.Popen) -> None:
    """Terminate the service (SIGTERM, then SIGKILL after 30 s) and reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
