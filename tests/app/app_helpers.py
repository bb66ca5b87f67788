"""Helpers for the service tests: generated CT/PET/MR cases as NIfTI, DICOM and zips."""

from __future__ import annotations

import gzip
import io
import json
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

from models.contract import Volume
from models.dicom import series_from_volume
from tests.common import assert_problem, ct_volume, make_settings, seg_bytes, zip_bytes

__all__ = ["assert_problem", "ct_volume", "make_settings", "seg_bytes", "zip_bytes"]

__all__ = ["ct_volume", "make_settings", "seg_bytes", "zip_bytes"]  # shared with the other folders


# -- generated cases ---------------------------------------------------------------------


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


def series_zip(volume: Volume, **kwargs: object) -> bytes:
    return zip_bytes({f"series/{n:03d}.dcm": d for n, d in enumerate(dicom_files(volume, **kwargs))})


def liver_lesion_mask(ct: Volume) -> tuple[Volume, np.ndarray]:
    """`ct_volume`'s liver (1) and lesion (2) as a label map, and the lesion's centre in mm."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s) for s in ct.array.shape), indexing="ij")
    labels = np.zeros(ct.array.shape, np.uint8)
    labels[((x + 0.3) / 0.4) ** 2 + (y / 0.35) ** 2 + (z / 0.8) ** 2 < 1] = 1
    labels[((x + 0.3) / 0.12) ** 2 + (y / 0.12) ** 2 + (z / 0.25) ** 2 < 1] = 2
    centre = ct.affine @ np.append(np.argwhere(labels == 2).mean(axis=0), 1.0)
    return Volume(labels, ct.affine), centre[:3]


def card(model_dir: Path, name: str) -> dict:
    return json.loads((model_dir / f"{name}.json").read_text())
