"""A student on the lesion grid, served: it needs the lesion's mask, grades the cube around
that lesion, and its maps still overlay the image that was sent."""

from __future__ import annotations

import gzip
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from app_helpers import (
    assert_problem,
    ct_volume,
    dicom_bytes,
    liver_lesion_mask,
    make_settings,
    nifti_bytes,
    pet_volume,
    seg_bytes,
    zip_bytes,
)
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from app.identity import MANUFACTURER
from app.main import create_app
from app.runtime import ServedModels
from models.contract import Volume
from models.dicom import series_from_volume
from tests.common import random_checkpoint
from training.export import export_model

NII = "application/gzip"


@pytest.fixture(scope="module")
def lesion_client(lesion_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = make_settings(lesion_model_dir, tmp_path_factory.mktemp("store"))
    with TestClient(create_app(settings)) as client:
        yield client


def files(ct: Volume, mask: Volume | None) -> list:
    sent = [("ct", ("ct.nii.gz", nifti_bytes(ct), NII))]
    if mask is not None:
        sent.append(("mask", ("mask.nii.gz", nifti_bytes(mask), NII)))
    return sent


def test_the_card_says_the_model_reads_the_lesion_grid(lesion_client: TestClient) -> None:
    (model,) = lesion_client.get("/v1/models").json()["models"]
    assert model["status"] == "ready" and model["card"]["input"]["grid"] == "lesion"
    assert model["card"]["input"]["shape"] == [48, 48, 48]


def test_without_the_mask_the_study_is_refused_naming_it(lesion_client: TestClient) -> None:
    response = lesion_client.post("/v1/predict", data={"task": "hcc"}, files=files(ct_volume(), None))
    body = assert_problem(response, 422, "missing-field", "mask")
    assert "lesion" in body["detail"]


def test_a_lesion_outside_the_image_is_refused(lesion_client: TestClient) -> None:
    ct = ct_volume()
    mask, _ = liver_lesion_mask(ct)
    moved = mask.affine.copy()
    moved[2, 3] += 1000.0
    response = lesion_client.post(
        "/v1/predict", data={"task": "hcc"}, files=files(ct, Volume(mask.array, moved))
    )
    assert_problem(response, 422, "invalid-study", "mask")


def test_the_cube_around_the_lesion_is_graded_and_explained_on_the_sent_image(
    lesion_client: TestClient,
) -> None:
    ct = ct_volume()
    mask, centre = liver_lesion_mask(ct)
    response = lesion_client.post("/v1/predict", data={"task": "hcc"}, files=files(ct, mask))
    assert response.status_code == 200, response.text
    prediction = response.json()
    assert prediction["modalities"]["used"] == ["ct"]
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0)

    nifti = lesion_client.get(f"/v1/explain/{prediction['id']}/attention", params={"format": "nifti"})
    assert nifti.status_code == 200
    image = nib.Nifti1Image.from_bytes(gzip.decompress(nifti.content))
    assert image.shape == ct.array.shape
    np.testing.assert_allclose(image.affine, ct.affine, atol=1e-4)
    # The map covers the 96 mm cube around the lesion, nothing else of the sent image.
    attention = np.asarray(image.dataobj)
    assert (attention > 0).any()
    covered = (image.affine @ np.c_[np.argwhere(attention > 0), np.ones(int((attention > 0).sum()))].T)[:3]
    assert np.abs(covered.T - centre).max() <= 48.0 + 8.0  # half the cube, plus a voxel of the CT

    graph = lesion_client.get(f"/v1/explain/{prediction['id']}/graph")
    assert graph.status_code == 200 and graph.json()["regions"] == "mask"
    assert lesion_client.get(f"/v1/explain/{prediction['id']}/attention").status_code == 200


def test_a_lesion_model_serves_by_default_only_when_alone(
    model_dir: Path, lesion_model_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    for source in (model_dir, lesion_model_dir):
        for path in source.glob("hcc*"):
            shutil.copy(path, folder)
    card = folder / "hcc_lesion_test.json"
    card.write_text(json.dumps({**json.loads(card.read_text()), "created": "2999-01-01T00:00:00+00:00"}))
    # The newest, but it would refuse every study sent without a mask.
    default = ServedModels.from_folder(folder, make_settings(folder, tmp_path / "store"))
    assert default.served["hcc"].name == "hcc_test" and not default.served["hcc"].needs_mask
    chosen = ServedModels.from_folder(
        folder, make_settings(folder, tmp_path / "store", served_models={"hcc": "hcc_lesion_test"})
    )
    assert chosen.served["hcc"].needs_mask and chosen.served["hcc"].task.grid == "lesion"
    alone = ServedModels.from_folder(lesion_model_dir, make_settings(lesion_model_dir, tmp_path / "store"))
    assert alone.served["hcc"].name == "hcc_lesion_test"


# -- the mask as a DICOM SEG ---------------------------------------------------------------


def series_files(datasets: list[pydicom.Dataset]) -> list:
    return [("ct", (f"{n}.dcm", dicom_bytes(ds), "application/dicom")) for n, ds in enumerate(datasets)]


def study_zip(series: list[pydicom.Dataset], **extra: bytes) -> list:
    """The series and `extra` members (name -> bytes) as the `study` field's zip."""
    members = {f"s/{n}.dcm": dicom_bytes(ds) for n, ds in enumerate(series)}
    members |= {f"s/{name}.dcm": data for name, data in extra.items()}
    return [("study", ("study.zip", zip_bytes(members), "application/zip"))]


def predict(client: TestClient, sent: list) -> dict:
    response = client.post("/v1/predict", data={"task": "hcc"}, files=sent)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def seg_case(lesion_client: TestClient) -> tuple[Volume, list[pydicom.Dataset], Volume, dict]:
    """A CT as DICOM, its liver (1) and lesion (2), and the prediction with the NIfTI mask."""
    ct = ct_volume()
    mask, _ = liver_lesion_mask(ct)
    series = series_from_volume(ct)
    with_nifti = predict(
        lesion_client, [*series_files(series), ("mask", ("m.nii.gz", nifti_bytes(mask), NII))]
    )
    return ct, series, mask, with_nifti


@pytest.mark.parametrize("nested", [False, True], ids=["label-map", "lesion-inside-liver"])
def test_a_dicom_seg_mask_grades_what_the_same_nifti_label_map_grades(
    lesion_client: TestClient, seg_case: tuple, nested: bool
) -> None:
    _, series, mask, with_nifti = seg_case
    seg = seg_bytes(series, mask, nested=nested)  # nested: the liver segment covers the lesion too
    prediction = predict(
        lesion_client, [*series_files(series), ("mask", ("seg.dcm", seg, "application/dicom"))]
    )
    assert prediction["probabilities"] == pytest.approx(with_nifti["probabilities"], abs=1e-5)
    (source,) = [a for a in prediction["study"]["assignments"] if a["modality"] == "mask"]
    assert source["kind"] == "dicom" and "1 Liver, 2 Lesion" in source["reason"]
    graph = lesion_client.get(f"/v1/explain/{prediction['id']}/graph").json()
    assert graph["regions"] == "mask"


def test_a_seg_in_the_study_is_its_mask_and_the_services_own_seg_is_not(
    lesion_client: TestClient, seg_case: tuple
) -> None:
    _, series, mask, with_nifti = seg_case
    drawn = seg_bytes(series, mask)
    ours = seg_bytes(series, mask, names=("Region 1", "Region 2"), manufacturer=MANUFACTURER)
    prediction = predict(lesion_client, study_zip(series, drawn=drawn, ours=ours))
    assert prediction["probabilities"] == pytest.approx(with_nifti["probabilities"], abs=1e-5)
    (source,) = [a for a in prediction["study"]["assignments"] if a["modality"] == "mask"]
    assert source["series_uid"] == pydicom.dcmread(io.BytesIO(drawn)).SeriesInstanceUID
    reasons = [i["reason"] for i in prediction["study"]["ignored"]]
    assert any("this service made" in r for r in reasons)


def test_a_seg_of_another_frame_of_reference_is_not_the_mask(
    lesion_client: TestClient, seg_case: tuple
) -> None:
    _, series, mask, _ = seg_case
    seg = pydicom.dcmread(io.BytesIO(seg_bytes(series, mask)))
    seg.FrameOfReferenceUID = generate_uid()
    response = lesion_client.post(
        "/v1/predict", data={"task": "hcc"}, files=study_zip(series, seg=dicom_bytes(seg))
    )
    body = assert_problem(response, 422, "missing-field", "mask")
    assert "DICOM SEG" in body["detail"]


def test_a_mask_field_that_holds_no_seg_or_an_unreadable_one_is_refused(
    lesion_client: TestClient, seg_case: tuple
) -> None:
    _, series, mask, _ = seg_case
    not_seg = ("mask", ("ct.dcm", dicom_bytes(series[0]), "application/dicom"))
    response = lesion_client.post("/v1/predict", data={"task": "hcc"}, files=[*series_files(series), not_seg])
    assert "SEG" in assert_problem(response, 422, "invalid-study", "mask")["detail"]
    unplaced = pydicom.dcmread(io.BytesIO(seg_bytes(series, mask)))
    del unplaced.PerFrameFunctionalGroupsSequence  # frames no longer say where they lie
    broken = ("mask", ("seg.dcm", dicom_bytes(unplaced), "application/dicom"))
    response = lesion_client.post("/v1/predict", data={"task": "hcc"}, files=[*series_files(series), broken])
    assert_problem(response, 422, "invalid-study", "mask")


def test_a_newer_seg_that_is_no_mask_is_passed_over_for_an_older_one(
    lesion_client: TestClient, seg_case: tuple
) -> None:
    _, series, mask, with_nifti = seg_case
    unplaced = pydicom.dcmread(io.BytesIO(seg_bytes(series, mask)))
    del unplaced.PerFrameFunctionalGroupsSequence
    unplaced.ContentDate = "20991231"  # the newest SEG of the study, and unreadable
    prediction = predict(
        lesion_client, study_zip(series, new=dicom_bytes(unplaced), old=seg_bytes(series, mask))
    )
    assert prediction["probabilities"] == pytest.approx(with_nifti["probabilities"], abs=1e-5)
    (ignored,) = prediction["study"]["ignored"]
    assert ignored["series_uid"] == unplaced.SeriesInstanceUID and "no mask" in ignored["reason"]


def test_a_ct_only_student_is_not_given_the_pet_it_never_saw(tmp_path: Path) -> None:
    """A student trained on CT alone (`input_modalities: [ct]`): its card says so, and a PET
    sent with the CT is left out of its input, with a warning, instead of being fed to a
    network that never learned what it means."""
    folder = tmp_path / "models"
    checkpoint = {
        **random_checkpoint("hcc_student", "hcc"),
        "grid": "lesion",
        "config": {"input_modalities": ["ct"]},
    }
    card = export_model(checkpoint, folder / "hcc_ct_only.onnx")
    assert card["reads_modalities"] == ["ct"]
    ct = ct_volume()
    mask, _ = liver_lesion_mask(ct)
    sent = [*files(ct, mask), ("pet_fdg", ("fdg.nii.gz", nifti_bytes(pet_volume()), NII))]
    with TestClient(create_app(make_settings(folder, tmp_path / "store"))) as client:
        body = client.post("/v1/predict", data={"task": "hcc"}, files=sent).json()
    assert body["modalities"]["used"] == ["ct"]
    assert any("pet_fdg was sent" in w and "not used" in w for w in body["warnings"]), body["warnings"]
    # The acetate PET it does not read was not sent: nothing is missing for this model.
    assert not any("missing" in w for w in body["warnings"]), body["warnings"]


def test_a_model_that_reads_pet_says_which_pet_it_went_without(lesion_client: TestClient) -> None:
    ct = ct_volume()
    mask, _ = liver_lesion_mask(ct)
    body = lesion_client.post("/v1/predict", data={"task": "hcc"}, files=files(ct, mask)).json()
    assert {w.split(" ")[0] for w in body["warnings"] if "missing" in w} == {"pet_fdg", "pet_act"}
