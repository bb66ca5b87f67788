"""Localize, then grade: with a segmenter served, a CT alone is segmented, its mask places
the lesion-grid student's crop, and a study the mask says cannot be graded gets no grade.

The segmenter is `tests.band_segmenter` (intensity bands: its answer on the phantom is
known), exported and served like the real one; the student has random weights.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from app_helpers import (
    assert_problem,
    ct_volume,
    dicom_files,
    liver_lesion_mask,
    make_settings,
    nifti_bytes,
    series_zip,
    zip_bytes,
)
from fastapi.testclient import TestClient

from app.explain.render import largest_slice
from app.main import create_app
from models.contract import Volume
from models.segmenter import coarse_grid, mask_on_grid, spec_of_card
from tests.app.conftest import export_student
from tests.band_segmenter import export_band_segmenter

NII = "application/gzip"
LIVER_ML = 4 / 3 * np.pi * 0.4 * 0.35 * 0.8 * 124**2 * 60 / 1000  # the phantom's ellipsoids
LESION_ML = 4 / 3 * np.pi * 0.12 * 0.12 * 0.25 * 124**2 * 60 / 1000


@pytest.fixture(scope="module")
def pipeline_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    folder = tmp_path_factory.mktemp("pipeline_models")
    export_student("hcc_student", "hcc", folder, grid="lesion")
    export_band_segmenter(folder)
    # The phantom's liver holds 0.4 L (a child's): the thresholds of an adult liver are lowered.
    settings = make_settings(
        folder,
        tmp_path_factory.mktemp("store"),
        served_segmenters={"hcc": "hcc_band_segmenter"},
        min_liver_ml=150.0,
        min_cut_liver_ml=400.0,
    )
    with TestClient(create_app(settings)) as client:
        yield client


def post_ct(client: TestClient, ct: Volume, mask: Volume | None = None) -> dict:
    files = [("ct", ("ct.nii.gz", nifti_bytes(ct), NII))]
    if mask is not None:
        files.append(("mask", ("mask.nii.gz", nifti_bytes(mask), NII)))
    response = client.post("/v1/predict", data={"task": "hcc"}, files=files)
    assert response.status_code == 200, response.text
    return response.json()


def without(ct: Volume, *, liver: bool = False, lesion: bool = False) -> Volume:
    """The phantom with its liver (and lesion) or only its lesion painted as body (50 HU)."""
    labels, _ = liver_lesion_mask(ct)
    array = ct.array.copy()
    gone = (labels.array > 0) if liver else (labels.array == 2) if lesion else np.zeros_like(array, bool)
    array[gone] = 50.0 if liver else 110.0
    return Volume(array, ct.affine)


def test_the_segmenter_is_listed_and_its_card_holds_both_stages(pipeline_client: TestClient) -> None:
    models = pipeline_client.get("/v1/models").json()["models"]
    segmenters = [m for m in models if m["card"].get("role") == "segmenter"]
    assert [(m["name"], m["status"]) for m in segmenters] == [("hcc_band_segmenter", "ready")], models
    card = segmenters[0]["card"]
    assert set(card["stages"]) == {"coarse", "fine"}
    assert all(s["parity"]["max_abs_logit_diff"] < 1e-3 for s in card["stages"].values())
    assert card["labels"] == ["background", "liver", "lesion"]


def test_a_ct_alone_is_segmented_then_graded_on_the_lesion(pipeline_client: TestClient) -> None:
    ct = ct_volume()
    body = post_ct(pipeline_client, ct)
    assert body["gradable"] and body["label"] is not None and body["not_gradable"] == []
    mask = body["mask"]
    assert mask["source"] == "model" and mask["model"]["name"] == "hcc_band_segmenter"
    assert mask["liver_ml"] == pytest.approx(LIVER_ML, rel=0.15)
    assert mask["lesion_ml"] == pytest.approx(LESION_ML, rel=0.3) and mask["lesions"] == 1
    _, centre = liver_lesion_mask(ct)
    assert np.linalg.norm(np.array(mask["lesion_center_mm"]) - centre) < 6.0  # under one CT voxel


def test_a_mask_the_user_sends_beats_the_segmenter(pipeline_client: TestClient) -> None:
    ct = ct_volume()
    labels, _ = liver_lesion_mask(ct)
    lesion_only = Volume((labels.array == 2).astype(np.uint8), ct.affine)
    body = post_ct(pipeline_client, ct, lesion_only)
    assert body["mask"]["source"] == "upload" and body["mask"]["liver_ml"] is None
    assert body["mask"]["lesion_ml"] == pytest.approx(
        float((labels.array == 2).sum()) * 8**3 / 1000, abs=0.01
    )


def test_dicom_and_nifti_of_one_ct_get_one_answer(pipeline_client: TestClient) -> None:
    ct = ct_volume()
    nifti = post_ct(pipeline_client, ct)
    response = pipeline_client.post(
        "/v1/predict", data={"task": "hcc"}, files=[("ct", ("ct.zip", series_zip(ct), "application/zip"))]
    )
    assert response.status_code == 200, response.text
    dicom = response.json()
    assert dicom["mask"]["lesion_ml"] == pytest.approx(nifti["mask"]["lesion_ml"], rel=1e-3)
    for name, p in nifti["probabilities"].items():
        assert dicom["probabilities"][name] == pytest.approx(p, abs=1e-4)


@pytest.mark.parametrize(
    ("case", "code"),
    [
        (lambda ct: without(ct, liver=True), "no-liver"),  # an abdomen with no liver in it
        (lambda ct: without(ct, lesion=True), "no-lesion"),
        (lambda ct: Volume(ct.array[:, :, :11], ct.affine), "liver-cut"),  # 88 mm: the top half cut off
    ],
)
def test_a_study_the_mask_rules_out_is_answered_but_not_graded(pipeline_client, case, code) -> None:  # type: ignore[no-untyped-def]
    body = post_ct(pipeline_client, case(ct_volume()))
    assert not body["gradable"] and body["label"] is None and body["probabilities"] is None
    assert [r["code"] for r in body["not_gradable"]] == [code], body["not_gradable"]
    assert body["mask"]["source"] == "model"
    explained = pipeline_client.get(f"/v1/explain/{body['id']}/attention?format=png")
    assert "not graded" in assert_problem(explained, 409, "not-available", "id")["detail"]
    segmentation = pipeline_client.get(f"/v1/explain/{body['id']}/segmentation")
    assert segmentation.status_code == 200  # what the segmenter saw is still shown


def test_the_segmentation_comes_back_on_the_sent_grid(pipeline_client: TestClient) -> None:
    ct = ct_volume()
    body = post_ct(pipeline_client, ct)
    response = pipeline_client.get(f"/v1/explain/{body['id']}/segmentation?format=nifti")
    assert response.status_code == 200
    image = nib.Nifti1Image.from_bytes(gzip.decompress(response.content))
    assert image.shape == ct.array.shape and np.allclose(image.affine, ct.affine)
    truth, _ = liver_lesion_mask(ct)
    got = np.asarray(image.dataobj)
    for label in (1, 2):
        a, b = got >= label, truth.array >= label
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.8, label


def test_the_segmentation_as_dicom_seg_references_the_series(pipeline_client: TestClient) -> None:
    ct = ct_volume()
    files = dicom_files(ct)
    sent = {pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID for f in files}
    members = {f"s/{n:03d}.dcm": d for n, d in enumerate(files)}
    body = pipeline_client.post(
        "/v1/predict", data={"task": "hcc"}, files=[("ct", ("ct.zip", zip_bytes(members), "application/zip"))]
    ).json()
    response = pipeline_client.get(f"/v1/explain/{body['id']}/segmentation?format=dicom")
    assert response.status_code == 200, response.text
    seg = hd.seg.segread(io.BytesIO(response.content))
    names = [s.SegmentLabel for s in seg.SegmentSequence]
    assert names == ["Liver", "Lesion"]
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    assert referenced and referenced <= sent


def test_the_region_graph_is_built_from_the_models_mask(pipeline_client: TestClient) -> None:
    body = post_ct(pipeline_client, ct_volume())
    graph = pipeline_client.get(f"/v1/explain/{body['id']}/graph").json()
    names = [n["label"] for n in graph["nodes"]]
    assert graph["regions"] == "mask" and names[:2] == ["tumour_1", "peritumoral_shell"]


def test_the_attention_picture_opens_on_the_lesions_largest_slice(pipeline_client: TestClient) -> None:
    """The lesion moved off the scan's middle: the default axial slice follows it, on the
    overview the picture is drawn on (the segmenter's coarse grid)."""
    ct = ct_volume()
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s) for s in ct.array.shape), indexing="ij")
    liver = ((x + 0.3) / 0.4) ** 2 + (y / 0.35) ** 2 + (z / 0.8) ** 2 < 1
    lesion = ((x + 0.3) / 0.12) ** 2 + (y / 0.12) ** 2 + ((z - 0.45) / 0.25) ** 2 < 1
    array = np.where(liver, 110.0, ct.array).astype(np.float32)
    array[lesion] = 60.0
    moved = Volume(array, ct.affine)
    body = post_ct(pipeline_client, moved)
    assert body["gradable"], body
    response = pipeline_client.get(f"/v1/explain/{body['id']}/attention")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    card = next(
        m["card"]
        for m in pipeline_client.get("/v1/models").json()["models"]
        if m["card"].get("role") == "segmenter"
    )
    overview = coarse_grid(moved, spec_of_card(card))
    on_overview = mask_on_grid(Volume(lesion.astype(np.uint8), ct.affine), overview) > 0
    expected = largest_slice(on_overview, "axial")
    assert expected is not None and abs(expected - overview.shape[2] // 2) > 2  # not the middle
    assert abs(int(response.headers["x-slice"]) - expected) <= 1


def test_a_head_ct_is_not_graded(pipeline_client: TestClient, tmp_path: Path) -> None:
    """A head: bone around brain (35 HU), no 85-200 HU organ of a liver's size."""
    shape = (32, 32, 16)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    r = np.sqrt((x / 0.7) ** 2 + (y / 0.85) ** 2 + (z / 0.9) ** 2)
    array = np.where(r < 1, 35.0, -1000.0)
    array[(r >= 0.9) & (r < 1)] = 900.0
    affine = np.diag([6.0, 6.0, 8.0, 1.0])
    body = post_ct(pipeline_client, Volume(array.astype(np.float32), affine))
    assert not body["gradable"] and body["not_gradable"][0]["code"] == "no-liver"


def test_a_segmenter_serves_by_default_and_none_turns_it_off(tmp_path: Path) -> None:
    """In the folder and named nowhere, the segmenter localizes every CT (its mask comes
    back); `served_segmenters={"hcc": "none"}` lists it as not served, with the reason, and
    the CT is graded by the grader alone."""
    folder = tmp_path / "models"
    folder.mkdir()
    export_student("hcc_student", "hcc", folder)
    export_band_segmenter(folder)
    settings = make_settings(folder, tmp_path / "store", min_liver_ml=150.0, min_cut_liver_ml=400.0)
    with TestClient(create_app(settings)) as client:
        models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert models["hcc_band_segmenter"]["status"] == "ready"
        body = post_ct(client, ct_volume())
        assert body["mask"]["source"] == "model"
        assert body["mask"]["model"]["name"] == "hcc_band_segmenter"
    off = make_settings(folder, tmp_path / "store2", served_segmenters={"hcc": "none"})
    with TestClient(create_app(off)) as client:
        models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert models["hcc_band_segmenter"]["status"] == "not_served"
        assert "none" in models["hcc_band_segmenter"]["reason"]
        body = post_ct(client, ct_volume())
        assert body["gradable"] and body["mask"] is None and body["model"]["name"] == "hcc_test"


def test_a_grader_behind_a_segmenter_it_did_not_learn_on_says_so(tmp_path: Path) -> None:
    """The grader's card names the segmenter whose masks it learned on (`masks_from`): behind
    that one a CT alone is graded without a word; behind another, with a warning naming both."""
    folder = tmp_path / "models"
    folder.mkdir()
    card = export_student("hcc_student", "hcc", folder, grid="lesion")
    segmenter = export_band_segmenter(folder)
    card_path = folder / "hcc_lesion_test.json"

    def warnings_behind(sha256: str, store: str) -> list[str]:
        learned = {"name": "hcc_band_segmenter", "onnx_sha256": sha256}
        card_path.write_text(
            json.dumps({**card, "training_data": {**card["training_data"], "masks_from": learned}})
        )
        settings = make_settings(folder, tmp_path / store, min_liver_ml=150.0, min_cut_liver_ml=400.0)
        with TestClient(create_app(settings)) as client:
            body = post_ct(client, ct_volume())
        assert body["gradable"] and body["mask"]["source"] == "model"
        return [w for w in body["warnings"] if "segmenter it was not trained with" in w]

    assert warnings_behind(segmenter["onnx_sha256"][:16], "same") == []
    (warning,) = warnings_behind("0123456789abcdef", "other")
    assert "0123456789ab" in warning and segmenter["onnx_sha256"][:12] in warning
