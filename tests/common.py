"""Helpers the test folders share: settings for a test service, the small generated CT
they post, zips of members, and checkpoints of seeded random networks.

Imported as `tests.common` (pytest puts the repository root on `sys.path`).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import torch

from app.settings import Settings
from models.contract import Volume
from models.registry import create_model


def make_settings(model_dir: Path, store_dir: Path, **overrides: object) -> Settings:
    """Settings of a test service: one thread per session, no `.env` file read."""
    values: dict[str, object] = {
        "model_dir": model_dir,
        "store_dir": store_dir,
        "intra_op_threads": 1,
        "inter_op_threads": 1,
        "_env_file": None,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def ct_volume(shape: tuple[int, int, int] = (32, 32, 16), spacing: float = 8.0, seed: int = 0) -> Volume:
    """A body (50 HU) with a liver (110 HU), a hypo-attenuating lesion (60 HU), in air."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    array = np.full(shape, -1000.0)
    array[(x / 0.9) ** 2 + (y / 0.7) ** 2 < 1] = 50.0
    array[((x + 0.3) / 0.4) ** 2 + (y / 0.35) ** 2 + (z / 0.8) ** 2 < 1] = 110.0
    array[((x + 0.3) / 0.12) ** 2 + (y / 0.12) ** 2 + (z / 0.25) ** 2 < 1] = 60.0
    array += np.round(rng.normal(0, 5, size=shape))
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -spacing * (np.array(shape) - 1) / 2
    return Volume(array.astype(np.float32), affine)


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def random_checkpoint(architecture: str, task: str, seed: int = 0, **model_kwargs: object) -> dict:
    """A registry checkpoint of `architecture` with seeded random weights (width 4 unless given)."""
    kwargs = {"width": 4, **model_kwargs}
    torch.manual_seed(seed)
    model = create_model(architecture, **kwargs)
    return {"model": architecture, "model_kwargs": kwargs, "task": task, "state_dict": model.state_dict()}
