"""Explanations, models, health, readiness and metrics endpoints."""

from __future__ import annotations

import gzip
import io

import nibabel as nib
import numpy as np
import pydicom
import pytest
from app_helpers import assert_problem, ct_volume, liver_lesion_mask, mr_volume, nifti_bytes, series_zip

NII = "application/gzip"


@pytest.fixture(scope="module")
def nifti_case(client):  # type: ignore[no-untyped-def]
    files = [("ct", ("ct.nii.gz", nifti_bytes(ct_volume()), NII))]
    return client.post("/v1/predict", data={"task": "hcc"}, files=files).json()["id"]


@pytest.fixture(scope="module")
def dicom_case(client):  # type: ignore[no-untyped-def]
    files = [("ct", ("ct.zip", series_zip(ct_volume()), "application/zip"))]
    return client.post("/v1/predict", data={"task": "hcc"}, files=files).json()["id"]


def test_index_lists_explanations(client, nifti_case) -> None:  # type: ignore[no-untyped-def]
    body = client.get(f"/v1/explain/{nifti_case}").json()
    kinds = {e["kind"]: e for e in body["explanations"]}
    assert set(kinds) == {"attention", "attribution", "graph", "segmentation"}
    assert "gradcam" in kinds["attribution"]["methods"]
    # No segmenter in this model folder and no mask sent: no segmentation to give.
    assert not kinds["segmentation"]["available"] and kinds["segmentation"]["note"]


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_attention_png(client, nifti_case, plane) -> None:  # type: ignore[no-untyped-def]
    response = client.get(f"/v1/explain/{nifti_case}/attention", params={"format": "png", "plane": plane})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert int(response.headers["x-slice"]) >= 0


def test_attention_nifti_is_on_the_sent_grid(client, nifti_case) -> None:  # type: ignore[no-untyped-def]
    response = client.get(f"/v1/explain/{nifti_case}/attention", params={"format": "nifti"})
    image = nib.Nifti1Image.from_bytes(gzip.decompress(response.content))
    sent = ct_volume()
    assert image.shape == sent.array.shape
    np.testing.assert_allclose(image.affine, sent.affine, atol=1e-4)
    assert np.asarray(image.dataobj).max() > 0


def test_attention_dicom_parametric_map_references_source(client, dicom_case) -> None:  # type: ignore[no-untyped-def]
    prediction = client.get(f"/v1/predictions/{dicom_case}").json()
    response = client.get(f"/v1/explain/{dicom_case}/attention", params={"format": "dicom"})
    assert response.status_code == 200, response.text
    ds = pydicom.dcmread(io.BytesIO(response.content))
    assert ds.Modality == "OT" or ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"
    assert ds.StudyInstanceUID == prediction["study"]["study_uid"]
    assert int(ds.NumberOfFrames) == ct_volume().array.shape[2]


def test_attention_dicom_secondary_capture_for_nifti(client, nifti_case) -> None:  # type: ignore[no-untyped-def]
    response = client.get(f"/v1/explain/{nifti_case}/attention", params={"format": "dicom"})
    assert response.status_code == 200, response.text
    ds = pydicom.dcmread(io.BytesIO(response.content))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"


@pytest.mark.parametrize("method", ["gradcam", "integrated_gradients", "occlusion"])
def test_attribution_png_and_nifti(client, nifti_case, method) -> None:  # type: ignore[no-untyped-def]
    url = f"/v1/explain/{nifti_case}/attribution"
    png = client.get(url, params={"method": method})
    assert png.status_code == 200, png.text
    assert png.content[:4] == b"\x89PNG"
    nifti = client.get(url, params={"method": method, "format": "nifti"})  # served from the cache
    image = nib.Nifti1Image.from_bytes(gzip.decompress(nifti.content))
    assert image.shape == ct_volume().array.shape


def test_graph_has_nodes_edges_and_prototype_distances(client, nifti_case) -> None:  # type: ignore[no-untyped-def]
    body = client.get(f"/v1/explain/{nifti_case}/graph").json()
    assert body["regions"] == "supervoxels" and len(body["nodes"]) >= 2
    assert body["edges"] and all(e["source"] < e["target"] for e in body["edges"])
    assert set(body["prototype_distances"]) == {"well", "moderate", "poor"}
    assert all(np.isfinite(v) and v >= 0 for v in body["prototype_distances"].values())
    assert sum(n["volume_ml"] for n in body["nodes"]) > 0


def test_graph_regions_are_anatomical_and_contributions_add_up(client) -> None:  # type: ignore[no-untyped-def]
    """A liver 1 / lesion 2 mask gives the tumour, its peritumoral shell and liver parts as
    nodes; each node's contribution is its integrated-gradients mass in logits, and the
    masses add up to the attribution's total, which approximates the logit's rise."""
    ct = ct_volume()
    mask, _ = liver_lesion_mask(ct)
    files = [("ct", ("ct.nii.gz", nifti_bytes(ct), NII)), ("mask", ("mask.nii.gz", nifti_bytes(mask), NII))]
    prediction = client.post("/v1/predict", data={"task": "hcc"}, files=files).json()
    body = client.get(f"/v1/explain/{prediction['id']}/graph").json()
    names = [n["label"] for n in body["nodes"]]
    assert body["regions"] == "mask" and names[:2] == ["tumour_1", "peritumoral_shell"]
    assert all(n.startswith("liver_part_") for n in names[2:]) and len(names) >= 4
    contribution = body["contribution"]
    assert contribution["method"] == "integrated_gradients" and "logit" in contribution["unit"]
    regions = sum(n["contribution"] for n in body["nodes"])
    assert regions == pytest.approx(contribution["regions_sum"], abs=1e-5)
    assert contribution["regions_sum"] + contribution["outside_regions"] == pytest.approx(
        contribution["total"]
    )
    rise = contribution["logit_rise"]
    assert contribution["total"] == pytest.approx(rise, abs=max(0.15 * abs(rise), 0.05))


def test_bad_format_is_a_problem(client, nifti_case) -> None:  # type: ignore[no-untyped-def]
    response = client.get(f"/v1/explain/{nifti_case}/attention", params={"format": "gif"})
    assert_problem(response, 422, "invalid-request", "format")


def test_models_lists_cards(client) -> None:  # type: ignore[no-untyped-def]
    models = client.get("/v1/models").json()["models"]
    hcc = next(m for m in models if m["task"] == "hcc")
    assert hcc["status"] == "ready" and hcc["served"] and hcc["card"]["training_data"]["synthetic"]
    assert "CPUExecutionProvider" in hcc["providers"]


def test_health_ready_metrics(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    text = client.get("/metrics").text
    assert 'route="/v1/models"' in text and "reactkd_requests_total" in text
    for stage in ("ingest", "preprocess", "inference", "explain"):
        assert f'stage="{stage}"' in text


def test_brats_explanations(client, has_brats) -> None:  # type: ignore[no-untyped-def]
    if not has_brats:
        pytest.skip("brats_student is not registered yet")
    files = [("flair", ("f.nii.gz", nifti_bytes(mr_volume()), NII))]
    prediction = client.post("/v1/predict", data={"task": "brats"}, files=files).json()
    assert client.get(f"/v1/explain/{prediction['id']}/attention").status_code == 200
    assert client.get(f"/v1/explain/{prediction['id']}/graph").status_code == 200
