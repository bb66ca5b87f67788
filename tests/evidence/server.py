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

__all__ = ["ct_nifti", "free_port", "lesion_mask_nifti", "start_server", "stop"]


def start_server(store: Path, port: int, **env: str) -> subprocess.Popen:
    """The service on the demo models at `port` (one inference thread), once ready."""
    process, _ = bench_server.start_server(DEMO_MODELS, store, port, REACTKD_INTRA_OP_THREADS="1", **env)
    return process


SHAPE = (32, 32, 16)
AFFINE = np.diag([8.0, 8.0, 8.0, 1.0])


def _grid() -> tuple[np.ndarray, ...]:
    return tuple(np.meshgrid(*(np.linspace(-1, 1, s) for s in SHAPE), indexing="ij"))


def ct_nifti() -> bytes:
    """A small CT: a body of soft tissue holding a brighter blob (what the segmenter makes of
    it depends on the shipped model; send `lesion_mask_nifti` with it for a graded case)."""
    x, y, z = _grid()
    array = np.full(SHAPE, -1000.0, np.float32)
    array[(x / 0.9) ** 2 + (y / 0.7) ** 2 < 1] = 50.0
    array[((x + 0.3) / 0.4) ** 2 + (y / 0.35) ** 2 + (z / 0.8) ** 2 < 1] = 110.0
    return gzip.compress(nib.Nifti1Image(array, AFFINE).to_bytes())


def lesion_mask_nifti() -> bytes:
    """A label map for `ct_nifti` (1 liver, 2 lesion: the blob's core), as a client sends one."""
    x, y, z = _grid()
    labels = np.zeros(SHAPE, np.uint8)
    labels[((x + 0.3) / 0.55) ** 2 + (y / 0.5) ** 2 + (z / 0.95) ** 2 < 1] = 1
    labels[((x + 0.3) / 0.3) ** 2 + (y / 0.25) ** 2 + (z / 0.6) ** 2 < 1] = 2
    return gzip.compress(nib.Nifti1Image(labels, AFFINE).to_bytes())
