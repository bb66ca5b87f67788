"""Patient identifiers never reach the logs: names, IDs and birth dates from real and generated DICOM."""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from models.contract import Volume
from models.dicom import series_from_volume

from .evidence_helpers import DEMO_MODELS, make_settings

GENERATED = {"PatientName": "Doe^Evidence", "PatientID": "EVID-7731-PHI", "PatientBirthDate": "19420817"}


def _generated_series_zip() -> bytes:
    """A small CT (body and a liver-like blob) as a DICOM series carrying distinctive identifiers."""
    shape = (32, 32, 16)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    array = np.full(shape, -1000.0, np.float32)
    array[(x / 0.9) ** 2 + (y / 0.7) ** 2 < 1] = 50.0
    array[((x + 0.3) / 0.4) ** 2 + (y / 0.35) ** 2 + (z / 0.8) ** 2 < 1] = 110.0
    affine = np.diag([8.0, 8.0, 8.0, 1.0])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for n, ds in enumerate(series_from_volume(Volume(array, affine))):
            for key, value in GENERATED.items():
                setattr(ds, key, value)
            member = io.BytesIO()
            ds.save_as(member, enforce_file_format=True)
            zf.writestr(f"series/{n:03d}.dcm", member.getvalue())
    return buffer.getvalue()


def _identifiers(path: Path) -> set[str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    values = {str(ds.get(key, "")) for key in ("PatientName", "PatientID", "PatientBirthDate")}
    return {v for v in values if len(v) >= 4}  # very short values would match by chance


def test_patient_identifiers_never_appear_in_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    real = [Path(pydicom.data.get_testdata_file(name)) for name in ("CT_small.dcm", "MR_small.dcm")]
    secrets = set(GENERATED.values()) | {"Doe", "Evidence"}
    for path in real:
        secrets |= _identifiers(path)
    assert len(secrets) >= 7, secrets
    uploads = [(p.name, p.read_bytes()) for p in real] + [("series.zip", _generated_series_zip())]

    # The app's logger does not propagate to the root, so caplog's handler is attached to it too.
    app_logger = logging.getLogger("app")
    app_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="app"):
            settings = make_settings(DEMO_MODELS, tmp_path / "store", log_level="DEBUG")
            with TestClient(create_app(settings)) as client:
                statuses = [
                    client.post("/v1/predict", data={"task": "hcc"}, files=[("ct", (name, data))]).status_code
                    for name, data in uploads
                ]
    finally:
        app_logger.removeHandler(caplog.handler)
    captured = capfd.readouterr()

    # Everything a record carries: formatted message, traceback text and extra attributes.
    lines = [caplog.text, captured.out, captured.err]
    lines += [repr(vars(record)) for record in caplog.records]
    print(f"\nstatuses {statuses}; {len(caplog.records)} log records, {len(captured.err)} chars of stderr")
    assert 200 in statuses  # at least the generated series was graded, so the full path was logged
    assert len(caplog.records) > 0
    for secret in secrets:
        for text in lines:
            assert secret not in text, f"patient identifier {secret!r} found in the logs"
