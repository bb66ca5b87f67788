"""The whole product on tiny data: synth -> train -> export -> serve -> predict -> explain.

Every step goes through the `reactkd` command line, as a user would run it, and the
service is the real app reading the exported folder.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.settings import Settings
from training.cli import main as reactkd

pytestmark = pytest.mark.slow


def run(*args: str | Path) -> None:
    assert reactkd([str(a) for a in args]) == 0


def test_synth_train_export_serve_predict_explain(tmp_path: Path) -> None:
    data, runs, models = tmp_path / "hcc", tmp_path / "runs", tmp_path / "models"
    run(
        "synth",
        "hcc",
        "--out",
        data,
        "--cases",
        "14",
        "--seed",
        "3",
        "--shape",
        "40",
        "40",
        "20",
        "--workers",
        "1",
    )
    manifest = data / "manifest.csv"
    quick = tmp_path / "quick.yaml"
    quick.write_text(yaml.safe_dump({"epochs": 1, "batch_size": 4, "model_kwargs": {"width": 4}}))

    run(
        "train",
        "teacher",
        "--config",
        quick,
        "--task",
        "hcc",
        "--kind",
        "structure-function",
        "--data",
        manifest,
        "--out",
        runs,
    )
    teacher = runs / "hcc-structure-function-s0" / "best.pt"
    run(
        "train",
        "student",
        "--config",
        quick,
        "--task",
        "hcc",
        "--data",
        manifest,
        "--out",
        runs,
        "--teachers",
        teacher,
    )
    student = runs / "hcc-student-s0"
    assert (student / "config.yaml").exists() and (student / "metrics.csv").exists()

    run(
        "export",
        student / "best.pt",
        "--out",
        models / "hcc_student.onnx",
        "--data",
        manifest,
        "--training-data",
        json.dumps({"synthetic": True, "description": "pipeline test"}),
    )
    card = json.loads((models / "hcc_student.json").read_text())
    assert card["parity"]["max_abs_logit_diff"] < 1e-4
    assert card["training_data"]["synthetic"] is True
    assert "research use only" in card["intended_use"].lower()

    settings = Settings(environment="development", model_dir=models, store_dir=tmp_path / "store")
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        ct = (data / "hcc0000" / "ct.nii.gz").read_bytes()
        response = client.post("/v1/predict", data={"task": "hcc"}, files={"ct": ("ct.nii.gz", ct)})
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body["probabilities"]) == {"well", "moderate", "poor"}
        assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert body["modalities"] == {"used": ["ct"], "missing": ["pet_fdg", "pet_act"]}
        assert body["model"]["sha256"] == card["onnx_sha256"]

        png = client.get(f"/v1/explain/{body['id']}/attention", params={"format": "png"})
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        image = Image.open(io.BytesIO(png.content))
        image.verify()
        assert image.size[0] > 100 and image.size[1] > 100

        graph = client.get(f"/v1/explain/{body['id']}/graph").json()
        # Prototypes exist for the grades present in the tiny training split.
        assert graph["prototype_distances"] and set(graph["prototype_distances"]) <= {
            "well",
            "moderate",
            "poor",
        }
        assert graph["nodes"]
