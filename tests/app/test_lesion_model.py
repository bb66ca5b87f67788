"""A student on the lesion grid, served: it needs the lesion's mask, grades the cube around
that lesion, and its maps still overlay the image that was sent."""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from app_helpers import assert_problem, ct_volume, make_settings, nifti_bytes
from fastapi.testclient import TestClient

from app.main import create_app
from app.runtime import ModelRegistry
from models.contract import Volume

NII = "application/gzip"


@pytest.fixture(scope="module")
def lesion_client(lesion_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = make_settings(lesion_model_dir, tmp_path_factory.mktemp("store"))
    with TestClient(create_app(settings)) as client:
        yield client


def liver_lesion_mask(ct: Volume) -> tuple[Volume, np.ndarray]:
    """`ct_volume`'s liver (1) and lesion (2) as a label map, and the lesion's centre in mm."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s) for s in ct.array.shape), indexing="ij")
    labels = np.zeros(ct.array.shape, np.uint8)
    labels[((x + 0.3) / 0.4) ** 2 + (y / 0.35) ** 2 + (z / 0.8) ** 2 < 1] = 1
    labels[((x + 0.3) / 0.12) ** 2 + (y / 0.12) ** 2 + (z / 0.25) ** 2 < 1] = 2
    centre = ct.affine @ np.append(np.argwhere(labels == 2).mean(axis=0), 1.0)
    return Volume(labels, ct.affine), centre[:3]


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
    default = ModelRegistry.from_folder(folder, make_settings(folder, tmp_path / "store"))
    assert default.served["hcc"].name == "hcc_test" and not default.served["hcc"].needs_mask
    chosen = ModelRegistry.from_folder(
        folder, make_settings(folder, tmp_path / "store", served_models={"hcc": "hcc_lesion_test"})
    )
    assert chosen.served["hcc"].needs_mask and chosen.served["hcc"].task.grid == "lesion"
    alone = ModelRegistry.from_folder(lesion_model_dir, make_settings(lesion_model_dir, tmp_path / "store"))
    assert alone.served["hcc"].name == "hcc_lesion_test"
