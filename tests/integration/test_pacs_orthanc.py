"""Against a real Orthanc: upload a CT series, predict by `study_uid`, store the results over
STOW-RS, and read them back with QIDO-RS and WADO-RS, value by value and on the source geometry."""

from __future__ import annotations

import gzip
import io

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from app.explain.case import load_stored_case
from app.pacs.results import region_labels
from app.store import Store
from models.contract import Volume
from models.dicom import series_from_volume
from tests.common import ct_volume, seg_bytes

PATIENT = {"PatientID": "RKD-INT-1", "PatientName": "Integration^Test", "StudyDescription": "generated CT"}
SR, PM, SEG, SC = (
    "1.2.840.10008.5.1.4.1.1.88.34",
    "1.2.840.10008.5.1.4.1.1.30",
    "1.2.840.10008.5.1.4.1.1.66.4",
    "1.2.840.10008.5.1.4.1.1.7",
)


def part10(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


class Source:
    """The generated CT series as uploaded to Orthanc."""

    def __init__(self) -> None:
        self.study_uid, self.frame_uid = generate_uid(), generate_uid()
        generated = series_from_volume(
            ct_volume(), study_uid=self.study_uid, frame_of_reference_uid=self.frame_uid, extra=PATIENT
        )
        # As a modality sends them: Part-10 files (preamble, DICM, file meta), which dicomweb-client
        # only writes for datasets read from such files.
        self.datasets = [part10(ds) for ds in generated]
        self.series_uid = str(self.datasets[0].SeriesInstanceUID)

    @property
    def positions(self) -> np.ndarray:
        return np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds in self.datasets])


@pytest.fixture(scope="module")
def pacs(orthanc) -> DICOMwebClient:  # type: ignore[no-untyped-def]
    return DICOMwebClient(url=orthanc.dicomweb_url)


@pytest.fixture(scope="module")
def source(pacs: DICOMwebClient) -> Source:
    study = Source()
    pacs.store_instances(study.datasets)
    return study


@pytest.fixture(scope="module")
def prediction(client: TestClient, source: Source) -> dict:
    response = client.post("/v1/predict", json={"task": "hcc", "study_uid": source.study_uid})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def stored(client: TestClient, prediction: dict) -> dict:
    response = client.post(f"/v1/explain/{prediction['id']}/store")
    assert response.status_code == 200, response.text
    return response.json()


def _series_by_sop_class(pacs: DICOMwebClient, study_uid: str) -> dict[str, Dataset]:
    """One instance of each series of the study (QIDO-RS to find, WADO-RS to fetch), by SOP class."""
    found: dict[str, Dataset] = {}
    for series in pacs.search_for_series(study_instance_uid=study_uid):
        series_uid = series["0020000E"]["Value"][0]
        instances = pacs.search_for_instances(study_instance_uid=study_uid, series_instance_uid=series_uid)
        sop_uid = instances[0]["00080018"]["Value"][0]
        ds = pacs.retrieve_instance(study_uid, series_uid, sop_uid)
        found.setdefault(str(ds.SOPClassUID), ds)
    return found


@pytest.fixture(scope="module")
def read_back(pacs: DICOMwebClient, source: Source, stored: dict) -> dict[str, Dataset]:
    return _series_by_sop_class(pacs, source.study_uid)


def test_prediction_fetched_the_study(prediction: dict, source: Source) -> None:
    assert prediction["study"]["study_uid"] == source.study_uid
    assert prediction["study"]["series_uids"] == {"ct": source.series_uid}
    assert prediction["modalities"]["used"] == ["ct"]
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0)


def test_store_reports_four_instances(stored: dict, source: Source) -> None:
    assert {item["kind"] for item in stored["stored"]} == {"sr", "pm", "seg", "capture"}
    assert stored["study_uid"] == source.study_uid


def test_qido_finds_the_results_under_the_source_study(
    pacs: DICOMwebClient, source: Source, stored: dict
) -> None:
    series = pacs.search_for_series(study_instance_uid=source.study_uid)
    by_uid = {s["0020000E"]["Value"][0]: s for s in series}
    assert source.series_uid in by_uid
    for item in stored["stored"]:
        found = by_uid[item["series_uid"]]
        description = found.get("0008103E", {}).get("Value", [""])[0]
        assert "research use only" in description
    modalities = sorted(s["00080060"]["Value"][0] for s in series)
    assert modalities == ["CT", "OT", "OT", "SEG", "SR"]


def test_sr_read_back(read_back: dict[str, Dataset], prediction: dict, source: Source) -> None:
    ds = read_back[SR]
    assert ds.StudyInstanceUID == source.study_uid and ds.FrameOfReferenceUID == source.frame_uid
    assert ds.PatientID == PATIENT["PatientID"]
    assert ds.ManufacturerModelName == prediction["model"]["name"]
    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    [group] = sr.content.get_image_measurement_groups()
    [evaluation] = group.get_qualitative_evaluations()
    grade = {"well": "Grade 1", "moderate": "Grade 2", "poor": "Grade 3"}[prediction["label"]]
    assert evaluation.value.meaning.startswith(grade)
    measured = {m.name.meaning: m.value for m in group.get_measurements()}
    for name, probability in prediction["probabilities"].items():
        assert measured[f"Probability of {name}"] == pytest.approx(probability, abs=1e-6)
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == source.series_uid


def _frame_slices(ds: Dataset, source: Source) -> list[int]:
    """Which source slice each frame lies on (by ImagePositionPatient, to 1 micrometre)."""
    slices = []
    for frame in ds.PerFrameFunctionalGroupsSequence:
        position = np.asarray([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient])
        distances = np.linalg.norm(source.positions - position, axis=1)
        assert distances.min() < 1e-3, f"frame at {position} is on no source slice"
        slices.append(int(np.argmin(distances)))
    return slices


def test_parametric_map_read_back(
    read_back: dict[str, Dataset], client: TestClient, prediction: dict, source: Source
) -> None:
    ds = read_back[PM]
    assert ds.StudyInstanceUID == source.study_uid and ds.FrameOfReferenceUID == source.frame_uid
    shape = ct_volume().array.shape
    assert (int(ds.NumberOfFrames), ds.Rows, ds.Columns) == (shape[2], shape[1], shape[0])
    orientation = ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    np.testing.assert_allclose([float(v) for v in orientation], source.datasets[0].ImageOrientationPatient)
    spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    np.testing.assert_allclose([float(v) for v in spacing], source.datasets[0].PixelSpacing)
    slices = _frame_slices(ds, source)
    assert sorted(slices) == list(range(shape[2]))
    nifti = client.get(f"/v1/explain/{prediction['id']}/attention", params={"format": "nifti"})
    expected = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(nifti.content)).dataobj)
    for frame, k in enumerate(slices):
        np.testing.assert_allclose(ds.pixel_array[frame], expected[:, :, k].T, atol=1e-6)


def test_seg_read_back(
    read_back: dict[str, Dataset], client: TestClient, prediction: dict, source: Source
) -> None:
    ds = read_back[SEG]
    assert ds.StudyInstanceUID == source.study_uid and ds.FrameOfReferenceUID == source.frame_uid
    seg = hd.seg.Segmentation.from_dataset(ds)
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source.series_uid
    store = Store(client.app.state.settings.store_dir)
    expected, names = region_labels(load_stored_case(store, store.get(prediction["id"])))
    labels = [seg.get_segment_description(n).segment_label for n in seg.segment_numbers]
    assert labels == names and len(names) >= 1
    graph = client.get(f"/v1/explain/{prediction['id']}/graph").json()
    assert set(labels) <= {node["label"] for node in graph["nodes"]}
    _frame_slices(ds, source)
    uids = [str(d.SOPInstanceUID) for d in source.datasets]  # slice order
    decoded = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, skip_overlap_checks=True
    )
    np.testing.assert_array_equal(decoded, np.transpose(expected.array, (2, 1, 0)))


def test_capture_read_back(read_back: dict[str, Dataset], source: Source) -> None:
    ds = read_back[SC]
    assert ds.StudyInstanceUID == source.study_uid and ds.PatientID == PATIENT["PatientID"]
    assert ds.PhotometricInterpretation == "RGB" and ds.pixel_array.shape[2] == 3


def test_storing_twice_keeps_one_copy(
    client: TestClient, pacs: DICOMwebClient, prediction: dict, source: Source, stored: dict
) -> None:
    again = client.post(f"/v1/explain/{prediction['id']}/store").json()
    assert {i["sop_instance_uid"] for i in again["stored"]} == {
        i["sop_instance_uid"] for i in stored["stored"]
    }
    assert len(pacs.search_for_series(study_instance_uid=source.study_uid)) == 5


def test_predict_by_series_uid_ignores_stored_results(
    client: TestClient, source: Source, stored: dict
) -> None:
    response = client.post(
        "/v1/predict", data={"task": "hcc", "study_uid": source.study_uid, "series_uids": source.series_uid}
    )
    assert response.status_code == 200, response.text
    assert response.json()["study"]["series_uids"] == {"ct": source.series_uid}
    # By study only: the results stored above (SR, SEG, OT) are not fetched as inputs; the SEG
    # is told from a SEG drawn in a viewer (which may be the mask) by its Manufacturer.
    response = client.post("/v1/predict", json={"task": "hcc", "study_uid": source.study_uid})
    assert response.status_code == 200, response.text
    study = response.json()["study"]
    assert study["ignored"] == [] and all(a["modality"] != "mask" for a in study["assignments"])


def test_a_seg_drawn_in_a_viewer_is_the_studys_mask(client: TestClient, pacs: DICOMwebClient) -> None:
    """A lesion segmented in a viewer and stored with the CT: predicting by study UID reads it."""
    study = Source()
    ct = ct_volume()
    labels = np.zeros(ct.array.shape, np.uint8)
    labels[10:14, 12:18, 6:10] = 1
    drawn = part10(
        pydicom.dcmread(io.BytesIO(seg_bytes(study.datasets, Volume(labels, ct.affine), names=("Lesion",))))
    )
    pacs.store_instances([*study.datasets, drawn])
    response = client.post("/v1/predict", json={"task": "hcc", "study_uid": study.study_uid})
    assert response.status_code == 200, response.text
    prediction = response.json()
    (mask,) = [a for a in prediction["study"]["assignments"] if a["modality"] == "mask"]
    assert mask["series_uid"] == drawn.SeriesInstanceUID and "1 Lesion" in mask["reason"]
    graph = client.get(f"/v1/explain/{prediction['id']}/graph")
    assert graph.status_code == 200, graph.text
    assert graph.json()["regions"] == "mask"


def test_unknown_study_and_series_are_404(client: TestClient, source: Source) -> None:
    response = client.post("/v1/predict", json={"task": "hcc", "study_uid": generate_uid()})
    assert response.status_code == 404 and response.json()["type"].endswith("/study-not-found")
    response = client.post(
        "/v1/predict", json={"task": "hcc", "study_uid": source.study_uid, "series_uids": [generate_uid()]}
    )
    assert response.status_code == 404 and response.json()["field"] == "series_uids"


def test_auto_store_after_predict(auto_client: TestClient, pacs: DICOMwebClient) -> None:
    study = Source()
    pacs.store_instances(study.datasets)
    response = auto_client.post("/v1/predict", json={"task": "hcc", "study_uid": study.study_uid})
    assert response.status_code == 200, response.text
    assert not any("PACS" in w for w in response.json()["warnings"])
    classes = {str(ds.SOPClassUID) for ds in _series_by_sop_class(pacs, study.study_uid).values()}
    assert {SR, PM, SEG, SC} <= classes


def test_instances_without_part10_header_are_a_pacs_error(client: TestClient, pacs: DICOMwebClient) -> None:
    """Orthanc returns instances as they were stored; one stored without preamble is refused clearly."""
    study_uid = generate_uid()
    pacs.store_instances(series_from_volume(ct_volume((16, 16, 4)), study_uid=study_uid))
    response = client.post("/v1/predict", json={"task": "hcc", "study_uid": study_uid})
    assert response.status_code == 502, response.text
    body = response.json()
    assert body["type"].endswith("/pacs-error") and "Part-10" in body["detail"]
