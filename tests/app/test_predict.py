"""POST /v1/predict and GET /v1/predictions/{id} on generated cases and pydicom's files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from app_helpers import (
    assert_problem,
    ct_volume,
    dicom_files,
    make_settings,
    mr_volume,
    nifti_bytes,
    pet_volume,
    series_zip,
    zip_bytes,
)
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from app.main import create_app
from models.contract import Volume

NII = "application/gzip"


def _post(client, task, files, data=None):  # type: ignore[no-untyped-def]
    return client.post("/v1/predict", data={"task": task, **(data or {})}, files=files)


@pytest.fixture(scope="module")
def ct_case(client):  # type: ignore[no-untyped-def]
    response = _post(client, "hcc", [("ct", ("ct.nii.gz", nifti_bytes(ct_volume()), NII))])
    assert response.status_code == 200, response.text
    return response.json()


def test_ct_only_prediction_shape(ct_case) -> None:  # type: ignore[no-untyped-def]
    body = ct_case
    assert body["task"] == "hcc"
    assert set(body["probabilities"]) == {"well", "moderate", "poor"}
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert body["label"] == max(body["probabilities"], key=body["probabilities"].get)
    assert body["modalities"] == {"used": ["ct"], "missing": ["pet_fdg", "pet_act"]}
    assert body["model"]["name"] == "hcc_test" and len(body["model"]["sha256"]) == 64
    assert any("pet_fdg missing" in w for w in body["warnings"])
    assert any("unusual voxel spacing" in w for w in body["warnings"])
    assert body["links"]["self"] == f"/v1/predictions/{body['id']}"


def test_get_prediction_returns_the_stored_answer(client, ct_case) -> None:  # type: ignore[no-untyped-def]
    response = client.get(f"/v1/predictions/{ct_case['id']}")
    assert response.status_code == 200
    assert response.json() == ct_case


def test_shuffled_dicom_zip_matches_nifti(client, ct_case) -> None:  # type: ignore[no-untyped-def]
    response = _post(client, "hcc", [("ct", ("ct.zip", series_zip(ct_volume(), seed=3), "application/zip"))])
    assert response.status_code == 200, response.text
    body = response.json()
    for name, p in ct_case["probabilities"].items():
        assert body["probabilities"][name] == pytest.approx(p, abs=1e-4)
    assert body["study"]["study_uid"] and body["study"]["series_uids"]["ct"]


def test_repeated_dicom_files_in_one_field(client, ct_case) -> None:  # type: ignore[no-untyped-def]
    files = [("ct", (f"{n}.dcm", d, "application/dicom")) for n, d in enumerate(dicom_files(ct_volume()))]
    body = _post(client, "hcc", files).json()
    assert body["probabilities"]["well"] == pytest.approx(ct_case["probabilities"]["well"], abs=1e-4)


def test_task_as_query_parameter(client) -> None:  # type: ignore[no-untyped-def]
    response = client.post(
        "/v1/predict?task=hcc", files=[("ct", ("ct.nii", nifti_bytes(ct_volume(), False), NII))]
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("fields", "used"),
    [(["ct", "pet_fdg"], ["ct", "pet_fdg"]), (["ct", "pet_fdg", "pet_act"], ["ct", "pet_fdg", "pet_act"])],
)
def test_hcc_with_pet(client, fields, used) -> None:  # type: ignore[no-untyped-def]
    volumes = {"ct": ct_volume(), "pet_fdg": pet_volume(1), "pet_act": pet_volume(2)}
    files = [(f, (f"{f}.nii.gz", nifti_bytes(volumes[f]), NII)) for f in fields]
    body = _post(client, "hcc", files).json()
    assert body["modalities"]["used"] == used
    assert body["modalities"]["missing"] == [m for m in ("ct", "pet_fdg", "pet_act") if m not in used]


def _pet_series(tracer: str, units: str = "BQML", corrected: tuple[str, ...] = ()) -> list[bytes]:
    item = Dataset()
    item.Radiopharmaceutical = tracer
    item.RadionuclideTotalDose = 370e6
    item.RadionuclideHalfLife = 6586.2
    item.RadiopharmaceuticalStartTime = "100000"
    pet = pet_volume()
    pet = type(pet)(pet.array * 1000, pet.affine)  # Bq/ml-ish, stored with slope 1
    extra = {
        "Units": units,
        "PatientWeight": 70.0,
        "SeriesTime": "110000",
        "RadiopharmaceuticalInformationSequence": DicomSequence([item]),
    }
    if corrected:
        extra["CorrectedImage"] = list(corrected)
    return dicom_files(pet, modality="PT", rescale_intercept=0.0, extra=extra)


def test_a_pet_of_the_other_tracer_than_its_field_is_refused(client) -> None:  # type: ignore[no-untyped-def]
    """The radiopharmaceutical tags say which PET it is: an FDG PET sent as `pet_act` would be
    graded as acetate uptake."""
    ct = [("ct", ("ct.nii.gz", nifti_bytes(ct_volume()), NII))]
    fdg = [("pet_act", (f"{n}.dcm", d, "application/dicom")) for n, d in enumerate(_pet_series("FDG"))]
    body = assert_problem(_post(client, "hcc", ct + fdg), 422, "modality-mismatch", "pet_act")
    assert "'pet_fdg'" in body["detail"]


def test_study_zip_skips_pet_without_attenuation_correction(client) -> None:  # type: ignore[no-untyped-def]
    """PET/CT studies hold a non-attenuation-corrected copy of each PET, as many slices as the
    corrected one: its values are not quantitative, so the corrected series is taken."""
    members = {}
    for prefix, files in (
        ("ct", dicom_files(ct_volume(), study_uid="1.2.3")),
        ("nac", _pet_series("Fluorodeoxyglucose", corrected=("DECY", "RAN", "SCAT"))),
        ("ac", _pet_series("Fluorodeoxyglucose", corrected=("ATTN", "DECY", "RAN", "SCAT"))),
    ):
        members.update({f"{prefix}/{n}.dcm": d for n, d in enumerate(files)})
    response = _post(client, "hcc", [("study", ("study.zip", zip_bytes(members), "application/zip"))])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["modalities"]["used"] == ["ct", "pet_fdg"]
    assert [i["reason"] for i in body["study"]["ignored"]] == [
        "PT series without attenuation correction (CorrectedImage lacks ATTN); not used"
    ]
    # Sent as its own field, a non-corrected PET is used as asked, and said to be unreliable.
    nac = [
        ("pet_fdg", (f"{n}.dcm", d, "application/dicom"))
        for n, d in enumerate(_pet_series("FDG", corrected=("DECY",)))
    ]
    response = _post(client, "hcc", [("ct", ("ct.nii.gz", nifti_bytes(ct_volume()), NII)), *nac])
    assert any(w.startswith("pet_fdg: not attenuation-corrected") for w in response.json()["warnings"])


def test_study_zip_takes_the_portal_venous_ct_of_a_multiphase_study(client) -> None:  # type: ignore[no-untyped-def]
    """A multiphase liver CT holds unenhanced, arterial, portal-venous and delayed series; the
    portal-venous one (the phase the model knows) is taken even when another has more slices."""
    members = {}
    for n, (description, slices) in enumerate(
        (("ABD ARTERIAL", 20), ("ABD PORTAL VENOUS", 16), ("ABD DELAYED", 16), ("ABD 5mm", 18))
    ):
        files = dicom_files(ct_volume((32, 32, slices)), study_uid="1.2.3", series_description=description)
        members.update({f"s{n}/{i}.dcm": d for i, d in enumerate(files)})
    response = _post(client, "hcc", [("study", ("study.zip", zip_bytes(members), "application/zip"))])
    assert response.status_code == 200, response.text
    study = response.json()["study"]
    (assignment,) = study["assignments"]
    assert "'abd portal venous': portal-venous phase" in assignment["reason"]
    assert "chosen over 3 other candidate(s)" in assignment["reason"]
    assert len(study["ignored"]) == 3


def test_study_zip_assigns_series_from_tags(client) -> None:  # type: ignore[no-untyped-def]
    members = {}
    for prefix, files in (
        ("ct", dicom_files(ct_volume(), study_uid="1.2.3")),
        ("fdg", _pet_series("Fluorodeoxyglucose")),
        ("act", _pet_series("Acetate C-11")),
        ("mr", dicom_files(mr_volume(), modality="MR", series_description="T2 AX")),
    ):
        members.update({f"{prefix}/{n}.dcm": d for n, d in enumerate(files)})
    response = _post(client, "hcc", [("study", ("study.zip", zip_bytes(members), "application/zip"))])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["modalities"]["used"] == ["ct", "pet_fdg", "pet_act"]
    reasons = {a["modality"]: a["reason"] for a in body["study"]["assignments"]}
    assert "FDG" in reasons["pet_fdg"] and "SUVbw" in reasons["pet_fdg"]
    assert "acetate" in reasons["pet_act"]
    assert any("not an input" in i["reason"] for i in body["study"]["ignored"])


def test_a_single_slice_is_not_a_volume(client) -> None:  # type: ignore[no-untyped-def]
    """pydicom's CT_small.dcm, one 5 mm slice: refused with the numbers, never graded."""
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    response = _post(client, "hcc", [("ct", ("CT_small.dcm", data, "application/dicom"))])
    body = assert_problem(response, 422, "not-a-volume", "ct")
    assert "1 slice covering 5 mm" in body["detail"] and "80 mm" in body["detail"]


@pytest.mark.parametrize(
    ("slices", "spacing", "refused"), [(4, 3.0, True), (20, 3.0, True), (30, 3.0, False)]
)
def test_a_handful_of_slices_or_a_thin_slab_is_not_a_volume(client, slices, spacing, refused) -> None:  # type: ignore[no-untyped-def]
    """Under 8 slices, or under 80 mm of z (too short to hold a liver): 422; 90 mm is a volume."""
    ct = ct_volume((32, 32, slices), spacing=8.0)
    ct = Volume(ct.array, np.diag([8.0, 8.0, spacing, 1.0]))
    response = _post(client, "hcc", [("ct", ("ct.nii.gz", nifti_bytes(ct), "application/gzip"))])
    if refused:
        body = assert_problem(response, 422, "not-a-volume", "ct")
        assert f"{slices} slices covering {slices * spacing:.0f} mm" in body["detail"]
    else:
        assert response.status_code == 200, response.text


def test_pydicom_truncated_pixel_data_is_a_problem(client) -> None:  # type: ignore[no-untyped-def]
    data = Path(get_testdata_file("MR_truncated.dcm")).read_bytes()
    response = _post(client, "brats", [("t2", ("MR_truncated.dcm", data, "application/dicom"))])
    assert_problem(response, 422, "corrupt-pixel-data", "t2")


@pytest.mark.parametrize(
    ("name", "field", "found"),
    [("MR_small.dcm", "ct", "MR"), ("rtdose_1frame.dcm", "ct", "RTDOSE"), ("CT_small.dcm", "pet_fdg", "CT")],
)
def test_a_series_of_another_modality_than_its_field_is_refused(client, name, field, found) -> None:  # type: ignore[no-untyped-def]
    """An MR or a dose grid sent as `ct` would be graded on values read as HU: refused, naming
    the Modality tag found."""
    data = Path(get_testdata_file(name)).read_bytes()
    body = assert_problem(
        _post(client, "hcc", [(field, (name, data, "application/dicom"))]), 422, "modality-mismatch", field
    )
    assert repr(found) in body["detail"]


def test_pydicom_no_meta_is_not_dicom(client) -> None:  # type: ignore[no-untyped-def]
    data = Path(get_testdata_file("no_meta.dcm")).read_bytes()
    response = _post(client, "hcc", [("ct", ("no_meta.dcm", data, "application/dicom"))])
    assert_problem(response, 400, "not-dicom", "ct")


@pytest.mark.parametrize("sequence", ["t1", "t1ce", "t2", "flair"])
def test_brats_single_sequence(client, has_brats, sequence) -> None:  # type: ignore[no-untyped-def]
    if not has_brats:
        pytest.skip("brats_student is not registered yet")
    response = _post(client, "brats", [(sequence, ("mr.nii.gz", nifti_bytes(mr_volume()), NII))])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["modalities"]["used"] == [sequence]
    assert set(body["probabilities"]) == {"LGG", "HGG"}


def test_brats_pydicom_mr_small_is_not_a_volume(client, has_brats) -> None:  # type: ignore[no-untyped-def]
    if not has_brats:
        pytest.skip("brats_student is not registered yet")
    data = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    response = _post(client, "brats", [("t2", ("MR_small.dcm", data, "application/dicom"))])
    assert_problem(response, 422, "not-a-volume", "t2")


def test_probabilities_are_finite(ct_case) -> None:  # type: ignore[no-untyped-def]
    assert np.all(np.isfinite(list(ct_case["probabilities"].values())))


def test_the_label_follows_the_cards_decision_and_the_response_says_so(
    model_dir: Path, tmp_path: Path, has_brats: bool
) -> None:
    """A card with decision weights (chosen on validation for balanced accuracy) answers
    argmax(probabilities x weights), and the response carries the rule; the probabilities
    are reported as they are."""
    if not has_brats:
        pytest.skip("brats_student is not registered")
    models = tmp_path / "models"
    shutil.copytree(model_dir, models)
    card_path = models / "brats_test.json"
    study = [("t2", ("mr.nii.gz", nifti_bytes(mr_volume()), NII))]
    with TestClient(create_app(make_settings(models, tmp_path / "plain"))) as plain:
        before = _post(plain, "brats", study).json()
    assert before["decision"] is None
    probabilities = before["probabilities"]
    losing = min(probabilities, key=probabilities.get)
    # Weights that make the less likely class win: the label must follow them.
    weights = {c: (1e6 if c == losing else 1.0) for c in probabilities}
    card = json.loads(card_path.read_text())
    card["decision"] = {
        "rule": "argmax(probabilities x weights)",
        "weights": weights,
        "fitted_on": "val split",
    }
    card_path.write_text(json.dumps(card))
    with TestClient(create_app(make_settings(models, tmp_path / "weighted"))) as weighted:
        after = _post(weighted, "brats", study).json()
    assert after["label"] == losing != before["label"]
    assert after["probabilities"] == pytest.approx(probabilities)
    assert after["decision"] == {**card["decision"], "weights": weights}
