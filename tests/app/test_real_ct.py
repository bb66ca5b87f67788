"""Real CT through the service: TotalSegmentator's reference scans (fetched from the package
registry into a cache by `training.data.reference_ct`; skipped with the reason when it
cannot be reached).

- Its DICOM series (20 slices of 512 x 512, 2 mm apart) is not a volume of a liver.
- Its labelled abdomen, posted to the service on the shipped models: the shipped segmenter
  finds the liver (the Dice is printed; `reports/segmenter/real-ct/` has the pictures).
- The whole trunk that abdomen was cut from (chest to pelvis): the liver the segmenter keeps
  is the labelled one, on the patient's right.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from app_helpers import assert_problem, make_settings
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import DEFAULT_MODEL_DIR
from training.data.readers import load_volume
from training.data.reference_ct import LIVER_LABEL, ReferenceUnavailable, reference_files
from training.real_ct import labels_on_trunk, score_scan
from training.segmentation_report import SegmenterRunner

SHIPPED_SEGMENTER = DEFAULT_MODEL_DIR / "hcc_segmenter.json"


@pytest.fixture(scope="module")
def reference() -> Path:
    try:
        return reference_files()
    except ReferenceUnavailable as exc:
        pytest.skip(f"TotalSegmentator's reference CTs are not available: {exc}")


@pytest.fixture(scope="module")
def demo_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = make_settings(
        DEFAULT_MODEL_DIR,
        tmp_path_factory.mktemp("store"),
        warmup=False,
        served_segmenters={"hcc": "hcc_segmenter"},
        served_models={"hcc": "hcc_lesion_student"},
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_the_real_20_slice_series_is_not_a_volume(client: TestClient, reference: Path) -> None:
    files = [
        ("ct", (path.name, path.read_bytes(), "application/dicom"))
        for path in sorted((reference / "example_ct_dicom").iterdir())
    ]
    assert len(files) == 20
    response = client.post("/v1/predict", data={"task": "hcc"}, files=files)
    body = assert_problem(response, 422, "not-a-volume", "ct")
    assert "20 slices covering 40 mm" in body["detail"]


@pytest.mark.skipif(not SHIPPED_SEGMENTER.is_file(), reason="no segmenter is shipped in app/demo_models")
def test_the_shipped_segmenter_finds_the_real_liver(demo_client: TestClient, reference: Path) -> None:
    ct = reference / "example_ct_sm.nii.gz"
    files = [("ct", (ct.name, ct.read_bytes(), "application/gzip"))]
    response = demo_client.post("/v1/predict", data={"task": "hcc"}, files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mask"]["source"] == "model" and body["mask"]["model"]["name"] == "hcc_segmenter"
    # No tumour is known in this scan: a grade, or no grade with the reasons, never both.
    assert body["gradable"] == (body["label"] is not None) == (body["not_gradable"] == [])
    nifti = demo_client.get(f"/v1/explain/{body['id']}/segmentation?format=nifti")
    assert nifti.status_code == 200
    predicted = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(nifti.content)).dataobj)
    truth = np.asarray(nib.load(reference / "example_seg.nii.gz").dataobj) == LIVER_LABEL
    assert predicted.shape == truth.shape
    liver = predicted > 0
    dice = 2 * (liver & truth).sum() / (liver.sum() + truth.sum())
    print(f"\nreal CT (TotalSegmentator example_ct_sm): liver Dice {dice:.3f}")
    assert dice > 0.8  # 0.847 when shipped (issue #34's bar: 0.85); 0.71 on the painter of before
    liver_ml = liver.sum() * 27 / 1000  # 3 mm voxels
    assert body["mask"]["liver_ml"] == pytest.approx(liver_ml, rel=0.05)


@pytest.mark.skipif(not SHIPPED_SEGMENTER.is_file(), reason="no segmenter is shipped in app/demo_models")
def test_on_the_real_trunk_the_liver_kept_is_the_labelled_one_on_the_right(reference: Path) -> None:
    runner = SegmenterRunner(SHIPPED_SEGMENTER.with_suffix(".onnx"), threads=2)
    labels = load_volume(reference / "example_seg.nii.gz")
    slab, trunk = (load_volume(reference / name) for name in ("example_ct_sm.nii.gz", "example_ct.nii.gz"))
    scores = score_scan(runner, trunk, labels_on_trunk(labels, slab, trunk))
    print(f"\nreal trunk: liver Dice {scores['liver_dice']:.3f}, raw pieces {scores['raw_liver_components']}")
    assert scores["liver_dice"] > 0.8  # 0.878 when shipped; 0.61 on the painter of before
    largest = scores["raw_liver_components"][0]
    right, _, up = largest["from_body_center_mm"]
    assert right > 40 and up > 0  # the patient's right (RAS+: +x), the upper half of the trunk
