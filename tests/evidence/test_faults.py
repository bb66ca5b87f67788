"""Fault evidence: an unwritable store and a corrupt model give problems, never a crash."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from fastapi.testclient import TestClient

from app.main import create_app

from .evidence_helpers import DEMO_MODELS, assert_problem, make_settings


def _nifti(shape: tuple[int, int, int] = (32, 32, 16), background: float = -1000.0) -> bytes:
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    array = np.full(shape, background, np.float32)
    array[(x / 0.9) ** 2 + (y / 0.7) ** 2 + (z / 0.9) ** 2 < 1] = 80.0
    return gzip.compress(nib.Nifti1Image(array, np.diag([8.0, 8.0, 8.0, 1.0])).to_bytes())


def test_unwritable_store_is_a_problem_and_health_stays_up(tmp_path: Path) -> None:
    store = tmp_path / "store"
    settings = make_settings(DEMO_MODELS, store)
    with TestClient(create_app(settings)) as client:
        # Running as root, chmod does not stop writes: replace the files folder by a regular
        # file so every mkdir under it fails (NotADirectoryError, an OSError).
        shutil.rmtree(store / "files")
        (store / "files").write_bytes(b"not a folder")
        response = client.post("/v1/predict", data={"task": "hcc"}, files=[("ct", ("ct.nii.gz", _nifti()))])
        print(f"\nunwritable store: {response.status_code} {response.text[:200]}")
        assert response.status_code in (503, 507)
        assert_problem(response, range(500, 600))
        assert client.get("/healthz").status_code == 200


def test_corrupt_model_is_named_by_readyz_and_the_other_task_still_predicts(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(DEMO_MODELS, models)
    onnx = models / "hcc_lesion_student.onnx"  # the served HCC grader (behind the segmenter)
    onnx.write_bytes(onnx.read_bytes()[:1000])  # truncated mid-graph
    with TestClient(create_app(make_settings(models, tmp_path / "store"))) as client:
        ready = client.get("/readyz")
        body = ready.json()
        print(f"\ncorrupt model: /readyz {ready.status_code} {body}")
        assert ready.status_code == 503 and body["ready"] is False
        assert any("hcc" in name and reason for name, reason in body["models"].items()), body
        refused = client.post("/v1/predict", data={"task": "hcc"}, files=[("ct", ("ct.nii.gz", _nifti()))])
        assert refused.status_code == 503
        assert_problem(refused, range(500, 600))
        graded = client.post(
            "/v1/predict", data={"task": "brats"}, files=[("flair", ("f.nii.gz", _nifti(background=0.0)))]
        )
        assert graded.status_code == 200, graded.text
