"""Every DICOM file pydicom ships (CT, MR, PET, RT, ultrasound, broken and odd encodings)
sent to /v1/predict: none may crash the service or be graded as something it is not."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from app_helpers import assert_problem, zip_bytes
from pydicom.data import get_testdata_file

from tests.common import slug_of

PYDICOM_FILES = sorted(p for p in Path(get_testdata_file("CT_small.dcm")).parent.rglob("*") if p.is_file())


def _modality(path: Path) -> str | None:
    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True, force=True).get("Modality", "")) or None
    except Exception:
        return None


def _check(response) -> int:  # type: ignore[no-untyped-def]
    """A 200, or a 4xx problem+json naming a field: never a 5xx."""
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert assert_problem(response)["field"], response.text
    return int(response.status_code)


def test_pydicom_files_as_ct_are_answered_or_refused_never_misread(client) -> None:  # type: ignore[no-untyped-def]
    """Sent as `ct`: only CT-tagged (or untagged) images may be graded; MR, PET and dose
    grids are refused as another modality. pydicom ships slices, not volumes: CT_small.dcm
    (one 5 mm slice) is refused as not a volume, not graded."""
    assert len(PYDICOM_FILES) > 50
    slugs = {}
    for path in PYDICOM_FILES:
        files = [("ct", (path.name, path.read_bytes(), "application/dicom"))]
        response = client.post("/v1/predict", data={"task": "hcc"}, files=files)
        if _check(response) == 200:
            assert _modality(path) in ("CT", None), f"{path.name} ({_modality(path)}) was graded as CT"
        else:
            slugs[path.name] = slug_of(response.json())
    assert slugs["CT_small.dcm"] == "not-a-volume"
    assert slugs["MR_small.dcm"] == "modality-mismatch"


@pytest.mark.parametrize("task", ["hcc", "brats"])
def test_pydicom_files_as_studies_are_assigned_or_refused(client, has_brats, task) -> None:  # type: ignore[no-untyped-def]
    """Inside a `study` zip each file is assigned from its tags or the study is refused."""
    if task == "brats" and not has_brats:
        pytest.skip("brats_student is not registered")
    for path in PYDICOM_FILES:
        study = zip_bytes({path.name: path.read_bytes()})
        response = client.post(
            "/v1/predict", data={"task": task}, files=[("study", ("s.zip", study, "application/zip"))]
        )
        if _check(response) == 200:
            used = response.json()["modalities"]["used"]
            expected = {"hcc": "CT", "brats": "MR"}[task]
            assert _modality(path) == expected, f"{path.name} assigned to {used}"
