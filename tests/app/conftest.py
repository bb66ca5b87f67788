"""Fixtures for the service tests: tiny ONNX students, generated CT/MR cases, clients.

Models are exported once per session with the lead's `training.export.export_model` from
seeded random weights (width 4: fast on two CPU cores). Cases are small generated volumes
(32x32x16 at 8 mm) written as NIfTI and as DICOM series by `models.dicom.series_from_volume`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from app_helpers import make_settings
from fastapi.testclient import TestClient

from app.main import create_app
from models.registry import list_models
from models.tasks import get_task
from tests.common import random_checkpoint

PROTOTYPE_REGIONS = 4


def _prototypes(classes: tuple[str, ...]) -> dict[str, dict[str, list]]:
    rng = np.random.default_rng(0)
    out = {}
    for name in classes:
        points = rng.normal(size=(PROTOTYPE_REGIONS, 3))
        distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
        out[name] = {
            "distances": distances.tolist(),
            "weights": [1.0 / PROTOTYPE_REGIONS] * PROTOTYPE_REGIONS,
        }
    return out


def export_student(architecture: str, task_name: str, folder: Path, grid: str = "whole") -> dict:
    from training.export import export_model

    checkpoint = {**random_checkpoint(architecture, task_name), "grid": grid}
    out = folder / f"{task_name}{'' if grid == 'whole' else '_' + grid}_test.onnx"
    card = export_model(
        checkpoint, out, training_data={"synthetic": True, "description": "random weights for tests"}
    )
    # Prototypes come from training data; tests add their own so GW distances are exercised.
    card["prototypes"] = _prototypes(get_task(task_name).classes)
    out.with_suffix(".json").write_text(json.dumps(card))
    return card


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    torch.set_num_threads(1)
    export_student("hcc_student", "hcc", folder)
    if "brats_student" in list_models():
        export_student("brats_student", "brats", folder)
    return folder


@pytest.fixture(scope="session")
def lesion_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HCC student on the lesion grid: it needs the lesion's mask with every study."""
    folder = tmp_path_factory.mktemp("lesion_models")
    export_student("hcc_student", "hcc", folder, grid="lesion")
    return folder


@pytest.fixture(scope="session")
def has_brats(model_dir: Path) -> bool:
    return (model_dir / "brats_test.json").exists()


@pytest.fixture(scope="module")
def client(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = make_settings(model_dir, tmp_path_factory.mktemp("store"))
    with TestClient(create_app(settings)) as test_client:
        yield test_client
