"""Helpers for the service tests: generated CT/PET/MR cases as NIfTI, DICOM and zips."""

from __future__ import annotations

import gzip
import io
import json
import random
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

from app.settings import Settings
from models.contract import Volume
from models.dicom import series_from_volume


def make_settings(model_dir: Path, store_dir: Path, **overrides: object) -> Settings:
    values = {
        "model_dir": model_dir,
        "store_dir": store_dir,
        "intra_op_threads": 1,
        "inter_op_threads": 1,
        "_env_file": None,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


# -- generated cases ---------------------------------------------------------------------


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


def pet_volume(seed: int = 1) -> Volume:
    """A coarser PET (SUV) on the same field of view."""
    ct = ct_volume((16, 16, 8), spacing=16.0, seed=seed)
    return Volume(np.clip((ct.array + 1000) / 300, 0, None).astype(np.float32), ct.affine)


def mr_volume(seed: int = 2) -> Volume:
    ct = ct_volume((24, 24, 16), spacing=8.0, seed=seed)
    return Volume(np.clip(ct.array + 1000, 0, None).astype(np.float32), ct.affine)


def nifti_bytes(volume: Volume, compress: bool = True) -> bytes:
    data = nib.Nifti1Image(volume.array, volume.affine).to_bytes()
    return gzip.compress(data) if compress else data


def dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dicom_files(volume: Volume, seed: int = 0, **kwargs: object) -> list[bytes]:
    datasets = series_from_volume(volume, **kwargs)  # type: ignore[arg-type]
    random.Random(seed).shuffle(datasets)
    return [dicom_bytes(ds) for ds in datasets]


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def series_zip(volume: Volume, **kwargs: object) -> bytes:
    return zip_bytes({f"series/{n:03d}.dcm": d for n, d in enumerate(dicom_files(volume, **kwargs))})


def card(model_dir: Path, name: str) -> dict:
    return json.loads((model_dir / f"{name}.json").read_text())


def assert_problem(response, status: int, slug: str, field: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == f"https://reactkd.dev/problems/{slug}", body
    assert body["status"] == status and body["title"] and body["detail"] and body["instance"]
    if field is not None:
        assert body["field"] == field, body
    return body
