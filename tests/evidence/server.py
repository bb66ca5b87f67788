"""Run the real service as a subprocess on 127.0.0.1 (for the kill and load evidence)."""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np

from .evidence_helpers import DEMO_MODELS

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(store: Path, port: int, **env: str) -> subprocess.Popen:
    """Start `training.cli serve` and wait (at most 90 s) until /healthz answers."""
    environ = {
        **os.environ,
        "REACTKD_ENVIRONMENT": "development",
        "REACTKD_MODEL_DIR": str(DEMO_MODELS),
        "REACTKD_STORE_DIR": str(store),
        "REACTKD_INTRA_OP_THREADS": "1",
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "training.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before answering")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError("the server did not become ready within 90 s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def ct_nifti() -> bytes:
    shape = (32, 32, 16)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    array = np.full(shape, -1000.0, np.float32)
    array[(x / 0.9) ** 2 + (y / 0.7) ** 2 < 1] = 50.0
    array[((x + 0.3) / 0.4) ** 2 + (y / 0.35) ** 2 + (z / 0.8) ** 2 < 1] = 110.0
    return gzip.compress(nib.Nifti1Image(array, np.diag([8.0, 8.0, 8.0, 1.0])).to_bytes())
