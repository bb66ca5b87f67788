"""The SR a viewer shows (TID 1500, a SCOORD outline per lesion, volume and diameter, the grade
or "not gradable") read back with highdicom, the lesions it measures, and `dciodvfy` on every
DICOM object the service writes (skipped without dicom3tools)."""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from app_helpers import ct_volume, dicom_bytes, liver_lesion_mask, make_settings, nifti_bytes, zip_bytes
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from app.explain import dicom_out
from app.explain.lesions import measure_lesions
from app.main import create_app
from models.contract import Volume
from models.dicom import series_from_volume

NII, ZIP = "application/gzip", "application/zip"
SOURCE = {"study_uid": generate_uid(), "frame_of_reference_uid": generate_uid()}
GRADES = {"well": "Grade 1", "moderate": "Grade 2", "poor": "Grade 3"}


@dataclass(frozen=True)
class Sent:
    """A prediction, the SOP Instance UIDs of the series sent, and the DICOM results by kind."""

    prediction: dict
    instances: set[str]
    objects: dict[str, bytes]


def _predict_and_fetch(client: TestClient) -> Sent:
    """A DICOM CT with the phantom's liver and lesion sent as the mask, and its results."""
    series = series_from_volume(ct_volume(), **SOURCE)  # type: ignore[arg-type]
    labels, _ = liver_lesion_mask(ct_volume())
    files = [
        ("ct", ("ct.zip", zip_bytes({f"{n}.dcm": dicom_bytes(ds) for n, ds in enumerate(series)}), ZIP)),
        ("mask", ("mask.nii.gz", nifti_bytes(labels), NII)),
    ]
    response = client.post("/v1/predict", data={"task": "hcc"}, files=files)
    assert response.status_code == 200, response.text
    prediction = response.json()
    index = client.get(f"/v1/explain/{prediction['id']}/dicom")
    assert index.status_code == 200, index.text
    kinds = [r["kind"] for r in index.json()["results"]]
    objects = {kind: client.get(f"/v1/explain/{prediction['id']}/dicom/{kind}").content for kind in kinds}
    return Sent(prediction, {str(ds.SOPInstanceUID) for ds in series}, objects)


@pytest.fixture(scope="module")
def graded(client: TestClient) -> Sent:
    sent = _predict_and_fetch(client)
    assert sent.prediction["gradable"], sent.prediction["not_gradable"]
    return sent


@pytest.fixture(scope="module")
def not_graded(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Sent:
    """The same study where a lesion must hold a litre to be graded: not gradable (no-lesion)."""
    settings = make_settings(model_dir, tmp_path_factory.mktemp("store"), min_lesion_ml=1000.0)
    with TestClient(create_app(settings)) as client:
        sent = _predict_and_fetch(client)
    assert not sent.prediction["gradable"], sent.prediction
    return sent


def _groups(data: bytes) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    sr = hd.sr.srread(io.BytesIO(data))
    assert sr.content.get_image_measurement_groups() == []  # every group is placed on the image
    return sr.content.get_planar_roi_measurement_groups()


def _check_lesion(group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations, sent: Sent) -> None:
    """Lesion 1: a closed outline on an instance of the sent series, its volume the response's."""
    assert group.tracking_identifier == "Lesion 1" and group.finding_type == codes.SCT.Neoplasm
    [site] = group.finding_sites
    assert site.value == codes.SCT.Liver
    region = group.roi
    assert region is not None and region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    points = region.value
    assert len(points) >= 4 and np.array_equal(points[0], points[-1])
    [image] = region.ContentSequence
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID in sent.instances
    volume = {m.name: m for m in group.get_measurements()}[codes.SCT.Volume]
    assert volume.unit == hd.sr.CodedConcept("ml", "UCUM", "milliliter")
    assert volume.value == pytest.approx(sent.prediction["mask"]["lesion_ml"], rel=0.1)


def test_the_sr_outlines_and_measures_the_lesion_with_the_grade(graded: Sent) -> None:
    lesion, peak = _groups(graded.objects["sr"])
    _check_lesion(lesion, graded)
    measured = {m.name: m for m in lesion.get_measurements()}
    diameter = measured[codes.SCT.LongAxis]
    assert diameter.unit.value == "mm"
    assert diameter.value == pytest.approx(0.12 * 31 * 8, rel=0.25)  # the phantom's lesion: 0.24 of 2 wide
    [grade] = lesion.get_qualitative_evaluations()
    assert grade.name == codes.SCT.HistologicGrade
    assert grade.value.meaning.startswith(GRADES[graded.prediction["label"]])
    by_meaning = {m.name.meaning: m.value for m in lesion.get_measurements()}
    for name, probability in graded.prediction["probabilities"].items():
        assert by_meaning[f"Probability of {name}"] == pytest.approx(probability, abs=1e-6)
    # The attention peak: a SCOORD3D point in the source's Frame of Reference.
    assert peak.tracking_identifier == "Attention peak"
    [point] = [item for item in peak[0].ContentSequence if item.ValueType == "SCOORD3D"]
    assert point.GraphicType == "POINT"
    assert point.ReferencedFrameOfReferenceUID == SOURCE["frame_of_reference_uid"]
    [attention] = peak.get_measurements()
    assert attention.name == dicom_out.PEAK_ATTENTION and 0 < attention.value <= 1
    sr = pydicom.dcmread(io.BytesIO(graded.objects["sr"]))
    assert sr.FrameOfReferenceUID == SOURCE["frame_of_reference_uid"]


def test_a_study_not_graded_says_so_and_still_outlines_its_lesion(not_graded: Sent) -> None:
    assert set(not_graded.objects) == {"sr", "mask"}
    [lesion] = _groups(not_graded.objects["sr"])
    _check_lesion(lesion, not_graded)
    [evaluation] = lesion.get_qualitative_evaluations()
    assert evaluation.value == dicom_out.NOT_GRADABLE
    names = {m.name.meaning for m in lesion.get_measurements()}
    assert names == {"Volume", "Long axis"}  # no probability, no attention


def test_lesions_are_measured_largest_first() -> None:
    labels = np.zeros((20, 12, 6), np.uint8)
    labels[2:12, 5, 3] = 2  # 10 voxels in a row: 20 mm at 2 mm
    labels[14:17, 2:5, 1:4] = 2  # 27 voxels
    labels[0:20, 0, 0] = 1  # liver is no lesion
    affine = np.diag([2.0, 1.0, 3.0, 1.0])
    big, row = measure_lesions(Volume(labels, affine), has_organ=True)
    assert big.volume_ml == pytest.approx(27 * 6 / 1000) and row.volume_ml == pytest.approx(10 * 6 / 1000)
    assert big.slice_index in (1, 2, 3) and row.slice_index == 3
    assert row.diameter_mm == pytest.approx(20.0)
    columns, rows = row.outline[:, 0], row.outline[:, 1]
    assert columns.min() == pytest.approx(2.0) and columns.max() == pytest.approx(12.0)  # pixel edges
    assert rows.min() >= 5.0 and rows.max() <= 6.0


def test_a_glioma_is_its_whole_tumour() -> None:
    labels = np.zeros((8, 8, 4), np.uint8)
    labels[2:4, 2:4, 1] = 1
    labels[4:6, 2:4, 1] = 4
    labels[2:6, 4:6, 1] = 2
    [tumour] = measure_lesions(Volume(labels, np.eye(4)), has_organ=False)
    assert tumour.volume_ml == pytest.approx(16 / 1000) and tumour.slice_index == 1
    assert measure_lesions(Volume(np.zeros((4, 4, 2), np.uint8), np.eye(4)), has_organ=False) == []


def _glioma_report() -> tuple[list[pydicom.Dataset], hd.sr.Comprehensive3DSR]:
    """An SR of a glioma (sub-regions 1, 2 and 4) straight from `structured_report`."""
    mr = Volume(np.full((16, 16, 6), 100.0, np.float32), np.diag([2.0, 2.0, 4.0, 1.0]))
    sources = series_from_volume(mr, modality="MR", rescale_intercept=0.0, **SOURCE)  # type: ignore[arg-type]
    labels = np.zeros(mr.array.shape, np.uint8)
    labels[4:8, 4:10, 2:4], labels[8:10, 4:10, 2:4], labels[4:10, 10:12, 3] = 1, 4, 2
    lesions = measure_lesions(Volume(labels, mr.affine), has_organ=False)
    report = dicom_out.structured_report(
        sources,
        task="brats",
        label="HGG",
        probabilities={"LGG": 0.3, "HGG": 0.7},
        provenance=dicom_out.Provenance("brats_test", "1"),
        lesions=lesions,
    )
    return sources, report


def test_a_glioma_report_outlines_the_whole_tumour() -> None:
    sources, report = _glioma_report()
    [tumour] = _groups(dicom_out.to_bytes(report))
    assert tumour.finding_sites[0].value == codes.SCT.Brain
    volume = {m.name: m.value for m in tumour.get_measurements()}[codes.SCT.Volume]
    assert volume == pytest.approx((48 + 24 + 12) * 16 / 1000)
    [image] = tumour.roi.ContentSequence
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sources[3].SOPInstanceUID
    [evaluation] = tumour.get_qualitative_evaluations()
    assert evaluation.value.meaning == "HGG"


# -- dciodvfy ------------------------------------------------------------------------------

DCIODVFY = shutil.which("dciodvfy")


def _errors(data: bytes, folder: Path, name: str) -> list[str]:
    path = folder / f"{name}.dcm"
    path.write_bytes(data)
    run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy not on PATH: install dicom3tools")
def test_dciodvfy_finds_no_error_in_any_object(graded: Sent, not_graded: Sent, tmp_path: Path) -> None:
    objects = {f"graded-{k}": v for k, v in graded.objects.items()}
    objects |= {f"not-graded-{k}": v for k, v in not_graded.objects.items()}
    objects["nifti-capture"] = dicom_out.secondary_capture(_png(), "REACT-KD attention", None)
    objects["glioma-sr"] = dicom_out.to_bytes(_glioma_report()[1])
    assert {"graded-sr", "graded-pm", "graded-seg", "graded-capture", "graded-mask"} <= set(objects)
    errors = {name: _errors(data, tmp_path, name) for name, data in objects.items()}
    assert errors == {name: [] for name in objects}
