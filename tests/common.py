"""Helpers the test folders share: settings for a test service, the small generated CT
they post, zips of members, DICOM SEGs drawn on a series, checkpoints of seeded random
networks, and the one check of a problem+json answer.

Imported as `tests.common` (pytest puts the repository root on `sys.path`).
"""

from __future__ import annotations

import copy
import io
import zipfile
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import torch
from pydicom.sr.codedict import codes

from app.explain.dicom_out import PATIENT_STUDY_TYPE2
from app.settings import Settings
from models.contract import Volume
from models.registry import create_model

PROBLEM_BASE = "https://reactkd.dev/problems/"


def assert_problem(  # type: ignore[no-untyped-def]
    response,
    status: int | range = range(400, 500),
    slug: str | None = None,
    field: str | None = None,
) -> dict:
    """Assert an RFC 9457 problem+json answer: its status (a code, or a range: any 4xx by
    default), its members, and its type and field where given. Returns the body."""
    assert response.status_code in (status if isinstance(status, range) else [status]), response.text[:300]
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    assert body["status"] == response.status_code
    assert body["type"].startswith(PROBLEM_BASE) and body["title"] and body["detail"] and body["instance"], (
        body
    )
    if slug is not None:
        assert body["type"] == PROBLEM_BASE + slug, body
    if field is not None:
        assert body["field"] == field, body
    return dict(body)


def slug_of(problem: dict) -> str:
    """The problem type's last path segment (``not-a-volume``)."""
    return str(problem["type"]).removeprefix(PROBLEM_BASE)


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


def seg_bytes(
    sources: list[pydicom.Dataset],
    labels: Volume,
    *,
    names: tuple[str, ...] = ("Liver", "Lesion"),
    nested: bool = False,
    manufacturer: str = "Viewer workstation",
) -> bytes:
    """A binary DICOM SEG of `labels` (1..N) drawn on the `sources` slices, made with highdicom.

    Each frame is sampled from `labels` at the pixel centres the slice's own DICOM geometry
    gives (position, orientation, spacing), not through the service's affine code. `nested`:
    segment n holds every voxel of label >= n (a lesion inside the liver segment, overlapping).
    """
    sources = [copy.deepcopy(ds) for ds in sources]
    for ds in sources:
        for keyword in PATIENT_STUDY_TYPE2:  # a SEG copies them from its sources
            ds.setdefault(keyword, "")
    frames = []
    for ds in sources:
        position = np.asarray(ds.ImagePositionPatient, dtype=float)
        row_dir, col_dir = np.asarray(ds.ImageOrientationPatient, dtype=float).reshape(2, 3)
        between_rows, between_columns = (float(v) for v in ds.PixelSpacing)
        r, c = np.mgrid[0 : ds.Rows, 0 : ds.Columns]
        lps = position + c[..., None] * between_columns * row_dir + r[..., None] * between_rows * col_dir
        ras = np.c_[lps.reshape(-1, 3) * [-1.0, -1.0, 1.0], np.ones(lps.shape[0] * lps.shape[1])]
        ijk = np.rint(ras @ np.linalg.inv(labels.affine).T)[:, :3].astype(int)
        frames.append(labels.array[tuple(ijk.T)].reshape(ds.Rows, ds.Columns))
    label_frames = np.stack(frames).astype(np.uint8)
    if nested:
        pixels = np.stack([label_frames >= n for n in range(1, len(names) + 1)], axis=-1).astype(np.uint8)
    else:
        pixels = label_frames
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number, name in enumerate(names, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=90,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="0",
    )
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
