"""DICOM results (SR, Parametric Map, SEG, RGB capture) re-read with pydicom and highdicom, and
the PACS error paths (no server, server down, server silent, bad UIDs) as problem+json."""

from __future__ import annotations

import gzip
import io
import socket
from collections.abc import Iterator

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from app_helpers import assert_problem, ct_volume, make_settings, nifti_bytes, series_zip
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from app.explain.case import load_stored_case
from app.main import create_app
from app.pacs.results import region_labels
from app.store import Store
from models.dicom import series_from_volume

NII = "application/gzip"
STUDY, FRAME = generate_uid(), generate_uid()
PATIENT = {"PatientID": "RKD-0001", "PatientName": "Test^Patient", "AccessionNumber": "ACC1"}
SOURCE = {"study_uid": STUDY, "frame_of_reference_uid": FRAME, "extra": PATIENT}


def _read(response) -> pydicom.Dataset:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    return pydicom.dcmread(io.BytesIO(response.content))


@pytest.fixture(scope="module")
def dicom_case(client) -> dict:  # type: ignore[no-untyped-def]
    files = [("ct", ("ct.zip", series_zip(ct_volume(), **SOURCE), "application/zip"))]
    response = client.post("/v1/predict", data={"task": "hcc"}, files=files)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def source_positions() -> list[list[float]]:
    """LPS positions of the source slices, in slice order (as `series_from_volume` writes them)."""
    return [[float(v) for v in ds.ImagePositionPatient] for ds in series_from_volume(ct_volume(), **SOURCE)]


def _common(ds: pydicom.Dataset, prediction: dict) -> None:
    """What every result shares with its source study: study, patient, model, research use."""
    assert ds.StudyInstanceUID == STUDY
    assert ds.SeriesInstanceUID != prediction["study"]["series_uids"]["ct"]
    assert ds.PatientID == PATIENT["PatientID"] and str(ds.PatientName) == PATIENT["PatientName"]
    assert ds.AccessionNumber == PATIENT["AccessionNumber"]
    assert "research use only" in ds.SeriesDescription
    assert prediction["model"]["name"] in ds.SeriesDescription
    assert ds.ManufacturerModelName == prediction["model"]["name"]
    assert prediction["model"]["version"] in str(ds.SoftwareVersions)


def test_index_lists_four_results_in_new_series(client, dicom_case) -> None:  # type: ignore[no-untyped-def]
    assert dicom_case["links"]["dicom_results"].endswith("/dicom")
    body = client.get(dicom_case["links"]["dicom_results"]).json()
    results = {r["kind"]: r for r in body["results"]}
    assert set(results) == {"sr", "pm", "seg", "capture"}
    assert {r["study_uid"] for r in results.values()} == {STUDY}
    assert len({r["series_uid"] for r in results.values()}) == 4
    assert results["sr"]["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert results["seg"]["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.66.4"
    assert results["pm"]["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.30"
    assert results["capture"]["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.7"
    assert body["stored"] is None
    again = client.get(f"/v1/explain/{dicom_case['id']}/dicom").json()
    assert again["results"] == body["results"]  # built once: the same instances every time


def test_sr_holds_class_and_probabilities(client, dicom_case) -> None:  # type: ignore[no-untyped-def]
    response = client.get(f"/v1/explain/{dicom_case['id']}/dicom/sr")
    ds = _read(response)
    _common(ds, dicom_case)
    assert ds.Modality == "SR" and ds.FrameOfReferenceUID == FRAME
    assert ds.ContentQualification == "RESEARCH"
    sr = hd.sr.srread(io.BytesIO(response.content))
    [group] = sr.content.get_image_measurement_groups()
    [evaluation] = group.get_qualitative_evaluations()
    assert evaluation.name == hd.sr.CodedConcept("371469007", "SCT", "Histologic grade")
    expected_code = {"well": "G1", "moderate": "G2", "poor": "G3"}[dicom_case["label"]]
    assert expected_code.lower()[1] in evaluation.value.meaning  # "Grade 3: poorly differentiated"
    measured = {m.name.meaning: m for m in group.get_measurements()}
    for name, probability in dicom_case["probabilities"].items():
        item = measured[f"Probability of {name}"]
        assert item.value == pytest.approx(probability, abs=1e-6)
        assert item.unit.value == "1" and item.unit.scheme_designator == "UCUM"
    assert sum(measured[f"Probability of {n}"].value for n in dicom_case["probabilities"]) == pytest.approx(1)
    peak = measured["Peak attention"]
    assert 0 < peak.value <= 1
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == dicom_case["study"]["series_uids"]["ct"]
    assert len(evidence.ReferencedSOPSequence) == ct_volume().array.shape[2]


def test_parametric_map_is_the_attention_on_the_source_frames(  # type: ignore[no-untyped-def]
    client, dicom_case, source_positions
) -> None:
    ds = _read(client.get(f"/v1/explain/{dicom_case['id']}/dicom/pm"))
    _common(ds, dicom_case)
    assert ds.FrameOfReferenceUID == FRAME
    shape = ct_volume().array.shape
    assert (int(ds.NumberOfFrames), ds.Rows, ds.Columns) == (shape[2], shape[1], shape[0])
    positions = [
        [float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient]
        for f in ds.PerFrameFunctionalGroupsSequence
    ]
    # highdicom orders frames its own way (3D dimension organisation): match them by position.
    slices = [_slice_at(p, source_positions) for p in positions]
    assert sorted(slices) == list(range(shape[2]))
    nifti = client.get(f"/v1/explain/{dicom_case['id']}/attention", params={"format": "nifti"})
    expected = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(nifti.content)).dataobj)
    assert expected.max() > 0
    for frame, k in enumerate(slices):
        np.testing.assert_allclose(ds.pixel_array[frame], expected[:, :, k].T, atol=1e-6)


def _slice_at(position: list[float], source_positions: list[list[float]]) -> int:
    distances = np.linalg.norm(np.asarray(source_positions) - np.asarray(position), axis=1)
    assert distances.min() < 1e-3, f"frame at {position} matches no source slice"
    return int(np.argmin(distances))


def test_seg_has_the_graph_regions_on_the_source_grid(  # type: ignore[no-untyped-def]
    client, dicom_case, source_positions, model_dir, tmp_path
) -> None:
    response = client.get(f"/v1/explain/{dicom_case['id']}/dicom/seg")
    ds = _read(response)
    _common(ds, dicom_case)
    seg = hd.seg.segread(io.BytesIO(response.content))
    assert seg.FrameOfReferenceUID == FRAME and seg.SegmentationType == "BINARY"
    graph = client.get(f"/v1/explain/{dicom_case['id']}/graph").json()
    graph_labels = {node["label"] for node in graph["nodes"]}
    segment_labels = [seg.get_segment_description(n).segment_label for n in seg.segment_numbers]
    assert segment_labels and set(segment_labels) <= graph_labels
    assert all(
        seg.get_segment_description(n).algorithm_identification[0].AlgorithmName
        == dicom_case["model"]["name"]
        for n in seg.segment_numbers
    )
    positions = [
        [float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient]
        for f in ds.PerFrameFunctionalGroupsSequence
    ]
    assert {tuple(np.round(p, 3)) for p in positions} <= {tuple(np.round(p, 3)) for p in source_positions}
    # Voxel by voxel: the decoded label map equals the region map resampled to the source grid.
    store = Store(client.app.state.settings.store_dir)
    case = load_stored_case(store, store.get(dicom_case["id"]))
    expected, names = region_labels(case)
    assert names == segment_labels
    in_slice_order = [header.SOPInstanceUID for header in case.headers(store)]
    decoded = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=in_slice_order, combine_segments=True, skip_overlap_checks=True
    )  # [frame, row, column]
    np.testing.assert_array_equal(decoded, np.transpose(expected.array, (2, 1, 0)))
    assert len(np.unique(decoded)) == len(names) + 1


def test_rgb_capture_in_the_source_study(client, dicom_case) -> None:  # type: ignore[no-untyped-def]
    ds = _read(client.get(f"/v1/explain/{dicom_case['id']}/dicom/capture"))
    _common(ds, dicom_case)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3
    assert ds.BurnedInAnnotation == "YES"
    pixels = ds.pixel_array
    assert pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.std() > 0


def test_results_need_a_dicom_source(client) -> None:  # type: ignore[no-untyped-def]
    files = [("ct", ("ct.nii.gz", nifti_bytes(ct_volume()), NII))]
    prediction = client.post("/v1/predict", data={"task": "hcc"}, files=files).json()
    assert "dicom_results" not in prediction["links"]
    assert_problem(client.get(f"/v1/explain/{prediction['id']}/dicom/sr"), 409, "not-available", "id")
    assert_problem(client.get(f"/v1/explain/{prediction['id']}/dicom"), 409, "not-available", "id")


def test_unknown_result_kind_and_id(client, dicom_case) -> None:  # type: ignore[no-untyped-def]
    assert_problem(client.get(f"/v1/explain/{dicom_case['id']}/dicom/xray"), 422, "invalid-request")
    assert_problem(client.get(f"/v1/explain/{'0' * 32}/dicom/sr"), 404, "unknown-id")


# -- PACS error paths ----------------------------------------------------------------------


def test_study_uid_without_a_pacs(client) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/v1/predict", json={"task": "hcc", "study_uid": "1.2.3"})
    assert_problem(response, 501, "pacs-not-configured", "study_uid")
    response = client.post("/v1/predict", data={"task": "hcc", "study_uid": "1.2.3"})
    assert_problem(response, 501, "pacs-not-configured", "study_uid")


def test_store_without_a_destination(client, dicom_case) -> None:  # type: ignore[no-untyped-def]
    response = client.post(f"/v1/explain/{dicom_case['id']}/store")
    assert_problem(response, 501, "pacs-not-configured", "destination")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"task": "hcc", "study_uid": "1.2.3/../../x"}, "study_uid"),
        ({"task": "hcc", "study_uid": "1." + "2" * 80}, "study_uid"),
        ({"task": "hcc", "study_uid": "1.2", "series_uids": ["abc"]}, "series_uids"),
    ],
)
def test_bad_study_requests(client, body, field) -> None:  # type: ignore[no-untyped-def]
    assert_problem(client.post("/v1/predict", json=body), 422, "invalid-study", field)


def test_json_body_that_is_not_json(client) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/v1/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert_problem(response, 422, "invalid-study", "body")
    # JSON without `study_uid` is not a way to send images.
    assert_problem(client.post("/v1/predict", json={"task": "hcc"}), 415, "unsupported-media", "body")


def test_unknown_task_by_study_uid(client) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/v1/predict", json={"task": "lung", "study_uid": "1.2.3"})
    assert_problem(response, 422, "unknown-task", "task")


def test_files_and_study_uid_together(client) -> None:  # type: ignore[no-untyped-def]
    files = [("ct", ("ct.nii.gz", nifti_bytes(ct_volume()), NII))]
    response = client.post("/v1/predict", data={"task": "hcc", "study_uid": "1.2.3"}, files=files)
    assert_problem(response, 422, "conflicting-input", "study_uid")


@pytest.fixture(scope="module")
def silent_server() -> Iterator[str]:
    """A loopback socket that accepts connections (the kernel does) and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield f"http://127.0.0.1:{server.getsockname()[1]}/dicom-web"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def pacs_down_client(model_dir, tmp_path_factory, silent_server) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    down = f"http://127.0.0.1:{_closed_port()}/dicom-web"
    settings = make_settings(
        model_dir,
        tmp_path_factory.mktemp("store"),
        dicomweb_url=down,
        dicomweb_stow_url=silent_server,
        dicomweb_timeout_s=0.5,
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_unreachable_pacs_is_502(pacs_down_client) -> None:  # type: ignore[no-untyped-def]
    response = pacs_down_client.post("/v1/predict", json={"task": "hcc", "study_uid": "1.2.3"})
    body = assert_problem(response, 502, "pacs-unreachable", "study_uid")
    assert "cannot connect" in body["detail"]


def test_silent_destination_is_504(pacs_down_client) -> None:  # type: ignore[no-untyped-def]
    files = [("ct", ("ct.zip", series_zip(ct_volume()), "application/zip"))]
    prediction = pacs_down_client.post("/v1/predict", data={"task": "hcc"}, files=files).json()
    response = pacs_down_client.post(f"/v1/explain/{prediction['id']}/store")
    assert_problem(response, 504, "pacs-timeout", "destination")


def test_auto_store_failure_is_a_warning(model_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    down = f"http://127.0.0.1:{_closed_port()}/dicom-web"
    settings = make_settings(
        model_dir, tmp_path, dicomweb_stow_url=down, dicomweb_auto_store=True, dicomweb_timeout_s=0.5
    )
    files = [("ct", ("ct.zip", series_zip(ct_volume()), "application/zip"))]
    with TestClient(create_app(settings)) as test_client:
        response = test_client.post("/v1/predict", data={"task": "hcc"}, files=files)
    assert response.status_code == 200, response.text
    assert any("not stored in the PACS" in w for w in response.json()["warnings"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dicomweb_url": "ftp://pacs"}, "http"),
        ({"dicomweb_auto_store": True}, "STOW_URL"),
        ({"dicomweb_username": "u"}, "go together"),
        ({"dicomweb_username": "u", "dicomweb_password": "p", "dicomweb_token": "t"}, "not both"),
    ],
)
def test_dicomweb_settings_are_checked(tmp_path, overrides, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        make_settings(tmp_path, tmp_path, **overrides)
