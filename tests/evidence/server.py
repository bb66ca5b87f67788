"""The real service as a subprocess on 127.0.0.1 (for the kill and load evidence), and its input."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np

from bench import server as bench_server
from bench.server import free_port, stop

from .evidence_helpers import DEMO_MODELS

__all__ = ["ct_nifti", "free_port", "start_server", "stop"]


def start_server(store: Path, port: int, **env: str) -> subprocess.Popen:
    """The service on the demo models at `port` (one inference thread), once ready."""
    process, _ = bench_server.start_server(DEMO_MODELS, store, port, REACTKD_INTRA_OP_THREADS="1", **env)
    return process


def ct_nifti() -> bytes:
    shape = (32, 32, 16)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    array = np.full(shape, -1000.0, np.float32)
    array[(x / 0.9) ** 2 + (y / 0.7) ** 2 < 1] = 50.0
    array[((x + 0.3) / 0.4) ** 2 + (y / 0.35) ** 2 + (z / 0.8) ** 2 < 1] = 110.0
    return gzip.compress(nib.Nifti1Image(array, np.diag([8.0, 8.0, 8.0, 1.0])).to_bytes())
