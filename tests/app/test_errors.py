"""Every error kind is a problem+json with a stable type, never a 500."""

from __future__ import annotations

import io
import json
import shutil
import stat
import zipfile

import numpy as np
import pydicom
import pytest
from app_helpers import (
    assert_problem,
    ct_volume,
    dicom_bytes,
    dicom_files,
    make_settings,
    nifti_bytes,
    pet_volume,
    series_zip,
    zip_bytes,
)
from fastapi.testclient import TestClient

from app.main import create_app
from models.contract import Volume
from models.dicom import series_from_volume

NII = "application/gzip"


def _post(client, files, task="hcc"):  # type: ignore[no-untyped-def]
    return client.post("/v1/predict", data={"task": task}, files=files)


def test_unsupported_media(client) -> None:  # type: ignore[no-untyped-def]
    assert_problem(_post(client, [("ct", ("a.txt", b"hello", "text/plain"))]), 415, "unsupported-media", "ct")
    assert_problem(client.post("/v1/predict", json={"task": "hcc"}), 415, "unsupported-media", "body")


def test_not_dicom(client) -> None:  # type: ignore[no-untyped-def]
    response = _post(client, [("ct", ("x.dcm", b"\x00" * 300, "application/dicom"))])
    assert_problem(response, 400, "not-dicom", "ct")
    assert_problem(
        _post(client, [("ct", ("x.zip", zip_bytes({"readme.txt": b"hi"}), "application/zip"))]),
        400,
        "not-dicom",
    )


def test_several_series(client) -> None:  # type: ignore[no-untyped-def]
    two = zip_bytes(
        {
            **{f"a/{n}.dcm": dicom_bytes(d) for n, d in enumerate(series_from_volume(ct_volume()))},
            **{f"b/{n}.dcm": dicom_bytes(d) for n, d in enumerate(series_from_volume(ct_volume()))},
        }
    )
    body = assert_problem(
        _post(client, [("ct", ("two.zip", two, "application/zip"))]), 400, "several-series", "ct"
    )
    assert "study" in body["detail"]


def test_required_modality_missing(client) -> None:  # type: ignore[no-untyped-def]
    response = _post(client, [("pet_fdg", ("p.nii.gz", nifti_bytes(pet_volume()), NII))])
    assert_problem(response, 422, "missing-modality", "ct")


def test_unknown_modality_field(client) -> None:  # type: ignore[no-untyped-def]
    response = _post(client, [("flair", ("f.nii.gz", nifti_bytes(ct_volume()), NII))])
    assert_problem(response, 422, "unknown-modality", "flair")


def test_zip_bomb(client) -> None:  # type: ignore[no-untyped-def]
    bomb = zip_bytes({"zeros.dcm": b"\x00" * (8 << 20)})
    assert_problem(_post(client, [("ct", ("bomb.zip", bomb, "application/zip"))]), 413, "zip-bomb", "ct")


@pytest.mark.parametrize("name", ["../evil.dcm", "/etc/passwd", "C:/x.dcm", "a/../../b.dcm"])
def test_unsafe_member_names(client, name) -> None:  # type: ignore[no-untyped-def]
    data = zip_bytes({name: b"x"})
    assert_problem(_post(client, [("ct", ("u.zip", data, "application/zip"))]), 400, "unsafe-archive", "ct")


def test_symlink_member(client) -> None:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        info = zipfile.ZipInfo("link.dcm")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    response = _post(client, [("ct", ("l.zip", buffer.getvalue(), "application/zip"))])
    assert_problem(response, 400, "unsafe-archive", "ct")


def test_one_instance_of_another_modality_is_refused(client) -> None:  # type: ignore[no-untyped-def]
    datasets = series_from_volume(ct_volume())
    datasets[3].Modality = "MR"
    files = [("ct", (f"{n}.dcm", dicom_bytes(d), "application/dicom")) for n, d in enumerate(datasets)]
    body = assert_problem(_post(client, files), 422, "modality-mismatch", "ct")
    assert "'MR'" in body["detail"]


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        (lambda ct: np.clip(ct / 1000.0, 0.0, 1.0), "non-integer"),  # a probability map
        (lambda ct: ct, "labels run from"),  # the CT itself: thousands of "regions", negative
        (lambda ct: np.where(ct > 0, 1e7, 0.0), "labels run from"),
        (lambda ct: np.zeros_like(ct), "empty"),
    ],
)
def test_a_mask_that_is_not_a_label_map_is_refused(client, values, reason) -> None:  # type: ignore[no-untyped-def]
    """Each label becomes a region-graph node: anything but a small label map is refused at
    ingest (it used to fail later, as a 500 from the graph explanation)."""
    ct = ct_volume()
    mask = Volume(values(ct.array).astype(np.float32), ct.affine)
    files = [("ct", ("ct.nii.gz", nifti_bytes(ct), NII)), ("mask", ("m.nii.gz", nifti_bytes(mask), NII))]
    body = assert_problem(_post(client, files), 422, "invalid-study", "mask")
    assert reason in body["detail"]


@pytest.mark.parametrize(
    ("task", "field", "values", "reason"),
    [
        ("hcc", "ct", np.zeros, "blank"),
        ("hcc", "pet_fdg", np.zeros, "blank"),  # a placeholder for a missing PET
        ("hcc", "ct", lambda shape: np.full(shape, -5000.0) + np.arange(shape[-1]), "denser than air"),
        ("brats", "t1", lambda shape: -np.ones(shape) * np.arange(shape[-1]), "no voxel above background"),
    ],
)
def test_an_image_with_nothing_to_grade_is_refused(client, has_brats, task, field, values, reason) -> None:  # type: ignore[no-untyped-def]
    """A blank image would be graded (an all-zero MR was called HGG at 0.53, no warning)."""
    if task == "brats" and not has_brats:
        pytest.skip("brats_student is not registered")
    ct = ct_volume()
    blank = Volume(values(ct.array.shape).astype(np.float32), ct.affine)
    files = [(field, ("x.nii.gz", nifti_bytes(blank), NII))]
    if field != "ct" and task == "hcc":
        files.append(("ct", ("ct.nii.gz", nifti_bytes(ct), NII)))
    body = assert_problem(_post(client, files, task=task), 422, "invalid-study", field)
    assert reason in body["detail"]


def test_a_pet_elsewhere_in_space_is_refused(client) -> None:  # type: ignore[no-untyped-def]
    """A PET 2 m away from the CT would enter the model as background while counted as given."""
    ct, pet = ct_volume(), pet_volume()
    affine = pet.affine.copy()
    affine[0, 3] += 2000.0
    files = [
        ("ct", ("ct.nii.gz", nifti_bytes(ct), NII)),
        ("pet_fdg", ("p.nii.gz", nifti_bytes(Volume(pet.array, affine)), NII)),
    ]
    body = assert_problem(_post(client, files), 422, "invalid-study", "pet_fdg")
    assert "elsewhere in space" in body["detail"]


def test_a_mask_nowhere_near_the_image_is_refused(client) -> None:  # type: ignore[no-untyped-def]
    """Its regions would all fall outside the model's grid and the graph would silently use
    supervoxels instead."""
    ct = ct_volume()
    labels = np.zeros(ct.array.shape, np.float32)
    labels[10:20, 10:20, 5:10] = 1
    far = ct.affine.copy()
    far[:3, 3] += 10000.0
    files = [
        ("ct", ("ct.nii.gz", nifti_bytes(ct), NII)),
        ("mask", ("m.nii.gz", nifti_bytes(Volume(labels, far)), NII)),
    ]
    assert "inside the image" in assert_problem(_post(client, files), 422, "invalid-study", "mask")["detail"]


def _series(volume: Volume, field: str, **kwargs) -> list:  # type: ignore[no-untyped-def]
    modality = "PT" if field.startswith("pet") else "CT"
    files = dicom_files(volume, modality=modality, **kwargs)
    return [(field, (f"{field}{n}.dcm", d, "application/dicom")) for n, d in enumerate(files)]


def test_images_of_two_patients_are_refused(client) -> None:  # type: ignore[no-untyped-def]
    frame = "1.2.3.4.5"  # one frame of reference: only the patient differs
    ct = _series(ct_volume(), "ct", frame_of_reference_uid=frame, extra={"PatientID": "A"})
    pet = _series(pet_volume(), "pet_fdg", frame_of_reference_uid=frame, extra={"PatientID": "B"})
    body = assert_problem(_post(client, ct + pet), 422, "invalid-study", "pet_fdg")
    assert "another patient" in body["detail"] and "'A'" not in body["detail"]  # IDs are not echoed
    study = zip_bytes({f"s/{name}": data for _, (name, data, _) in ct + pet})
    response = _post(client, [("study", ("s.zip", study, "application/zip"))])
    assert "2 patients" in assert_problem(response, 422, "invalid-study", "study")["detail"]


def test_images_of_two_examinations_of_one_patient_are_said(client) -> None:  # type: ignore[no-untyped-def]
    common = {"frame_of_reference_uid": "1.2.3.4.6", "extra": {"PatientID": "A"}}
    ct = _series(ct_volume(), "ct", study_uid="1.2.3.7", **common)
    pet = _series(pet_volume(), "pet_fdg", study_uid="1.2.3.8", **common)
    response = _post(client, ct + pet)
    assert response.status_code == 200, response.text
    assert any(w.startswith("pet_fdg: from another study") for w in response.json()["warnings"])


def test_another_frame_of_reference_is_said(client) -> None:  # type: ignore[no-untyped-def]
    files = [
        *[("ct", (f"c{n}.dcm", d, "application/dicom")) for n, d in enumerate(dicom_files(ct_volume()))],
        *[
            ("pet_fdg", (f"p{n}.dcm", d, "application/dicom"))
            for n, d in enumerate(dicom_files(pet_volume(), modality="PT", frame_of_reference_uid="1.2.3.4"))
        ],
    ]
    response = _post(client, files)
    assert response.status_code == 200, response.text
    assert any(w.startswith("pet_fdg: another DICOM frame of reference") for w in response.json()["warnings"])


@pytest.mark.parametrize(
    ("rows", "frames", "reason"), [(20000, None, "matrix side"), (4000, 200, "decodes to")]
)
def test_a_pixel_bomb_is_refused_from_its_header(client, rows, frames, reason) -> None:  # type: ignore[no-untyped-def]
    """A compressed slice of a few kB may claim a matrix that decodes to gigabytes: refused
    before decoding."""
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    ds.Modality, ds.Rows, ds.Columns = "CT", rows, rows
    if frames:
        ds.NumberOfFrames = frames
    body = assert_problem(
        _post(client, [("ct", ("bomb.dcm", dicom_bytes(ds), "application/dicom"))]), 413, "too-large", "ct"
    )
    assert reason in body["detail"]


def test_complex_nifti_refused(client) -> None:  # type: ignore[no-untyped-def]
    """Complex voxels cast to float would lose their imaginary part without a word."""
    import nibabel as nib

    data = nib.Nifti1Image(np.ones((8, 8, 8), np.complex64), np.eye(4)).to_bytes()
    body = assert_problem(_post(client, [("ct", ("c.nii", data, NII))]), 415, "unsupported-media", "ct")
    assert "complex" in body["detail"]


def test_nested_zip_refused(client) -> None:  # type: ignore[no-untyped-def]
    inner = series_zip(ct_volume())
    response = _post(client, [("ct", ("n.zip", zip_bytes({"inner.zip": inner}), "application/zip"))])
    assert_problem(response, 415, "unsupported-media", "ct")


def test_corrupt_pixel_data(client) -> None:  # type: ignore[no-untyped-def]
    datasets = series_from_volume(ct_volume())
    datasets[2].PixelData = datasets[2].PixelData[:100]
    files = [("ct", (f"{n}.dcm", dicom_bytes(d), "application/dicom")) for n, d in enumerate(datasets)]
    assert_problem(_post(client, files), 422, "corrupt-pixel-data", "ct")


def test_nan_voxels(client) -> None:  # type: ignore[no-untyped-def]
    ct = ct_volume()
    array = ct.array.copy()
    array[3, 3, 3] = np.nan
    response = _post(client, [("ct", ("nan.nii.gz", nifti_bytes(Volume(array, ct.affine)), NII))])
    assert_problem(response, 422, "non-finite-voxels", "ct")


def test_a_voxel_size_in_metres_is_refused(client) -> None:  # type: ignore[no-untyped-def]
    """A header in metres (0.008 for 8 mm) would shrink the image to a speck on the grid."""
    ct = ct_volume()
    metres = Volume(ct.array, np.diag([0.008, 0.008, 0.008, 1.0]))
    response = _post(client, [("ct", ("m.nii.gz", nifti_bytes(metres), NII))])
    body = assert_problem(response, 422, "invalid-study", "ct")
    assert "voxel size" in body["detail"]


def test_unknown_task_and_missing_task(client) -> None:  # type: ignore[no-untyped-def]
    files = [("ct", ("ct.nii.gz", nifti_bytes(ct_volume()), NII))]
    assert_problem(_post(client, files, task="lung"), 422, "unknown-task", "task")
    assert_problem(client.post("/v1/predict", files=files), 422, "missing-field", "task")
    assert_problem(
        client.post("/v1/predict", data={"task": "hcc"}, files=[("other", ("a", b"", ""))]),
        422,
        "unknown-modality",
    )


def test_no_image_is_missing_field(client) -> None:  # type: ignore[no-untyped-def]
    response = client.post(
        "/v1/predict", data={"task": "hcc", "note": "x"}, files=[("mask", ("m.nii.gz", b"", NII))]
    )
    assert_problem(response, 422, "missing-field", "ct")


def test_unknown_id(client) -> None:  # type: ignore[no-untyped-def]
    assert_problem(client.get("/v1/predictions/" + "0" * 32), 404, "unknown-id", "id")
    assert_problem(client.get("/v1/explain/not-an-id/attention"), 404, "unknown-id", "id")


def test_unknown_route_is_a_problem(client) -> None:  # type: ignore[no-untyped-def]
    assert_problem(client.get("/v1/nothing"), 404, "not-found")


@pytest.fixture(scope="module")
def strict_client(model_dir, tmp_path_factory):  # type: ignore[no-untyped-def]
    settings = make_settings(
        model_dir, tmp_path_factory.mktemp("strict"), api_keys="k1,k2", max_upload_bytes=200_000, max_files=3
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_unauthorized(strict_client) -> None:  # type: ignore[no-untyped-def]
    assert_problem(strict_client.get("/v1/models"), 401, "unauthorized")
    assert_problem(strict_client.get("/v1/models", headers={"X-API-Key": "bad"}), 401, "unauthorized")
    assert_problem(strict_client.get("/metrics"), 401, "unauthorized")
    assert strict_client.get("/v1/models", headers={"X-API-Key": "k2"}).status_code == 200
    assert strict_client.get("/v1/models", headers={"Authorization": "Bearer k1"}).status_code == 200
    assert strict_client.get("/healthz").status_code == 200
    assert strict_client.get("/readyz").status_code == 200


def test_too_large(strict_client) -> None:  # type: ignore[no-untyped-def]
    big = [("ct", ("ct.nii", b"\x00" * 300_000, NII))]
    response = strict_client.post("/v1/predict", data={"task": "hcc"}, files=big, headers={"X-API-Key": "k1"})
    assert_problem(response, 413, "too-large", "body")


def test_too_many_files(strict_client) -> None:  # type: ignore[no-untyped-def]
    files = [("ct", (f"{n}.dcm", b"x", "application/dicom")) for n in range(4)]
    response = strict_client.post(
        "/v1/predict", data={"task": "hcc"}, files=files, headers={"X-API-Key": "k1"}
    )
    assert_problem(response, 413, "too-many-files", "body")
    members = zip_bytes({f"{n}.dcm": b"x" for n in range(5)})
    response = strict_client.post(
        "/v1/predict",
        data={"task": "hcc"},
        files=[("ct", ("z.zip", members, "application/zip"))],
        headers={"X-API-Key": "k1"},
    )
    assert_problem(response, 413, "too-many-files", "ct")


def test_broken_model_is_not_ready_while_others_serve(model_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "models"
    shutil.copytree(model_dir, folder)
    card_path = folder / "hcc_test.json"
    card = json.loads(card_path.read_text())
    card["onnx_sha256"] = "0" * 64
    card_path.write_text(json.dumps(card))
    with TestClient(create_app(make_settings(folder, tmp_path / "store"))) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "sha256" in ready.json()["models"]["hcc_test"]
        response = _post(client, [("ct", ("ct.nii.gz", nifti_bytes(ct_volume()), NII))])
        assert_problem(response, 503, "model-not-ready", "task")
        if (folder / "brats_test.json").exists():
            models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
            assert models["brats_test"]["status"] == "ready"
