"""Training runs: teachers, distillation that learns, resume, and 2-process DDP."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.config import TrainConfig
from training.train import train

pytestmark = pytest.mark.slow
QUICK = {"batch_size": 4, "model_kwargs": {"width": 4}, "augment": False, "cache": True}


def metrics(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sf_teacher(tmp_path_factory: pytest.TempPathFactory, hcc_manifest: Path) -> Path:
    out = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(
        task="hcc",
        role="teacher",
        kind="structure-function",
        data=hcc_manifest,
        out=out,
        epochs=6,
        lr=3e-3,
        **QUICK,
    )
    return train(cfg)


def test_teacher_run_writes_config_metrics_and_the_best_checkpoint(sf_teacher: Path) -> None:
    run = sf_teacher.parent
    assert (run / "config.yaml").exists() and (run / "last.pt").exists()
    state = torch.load(sf_teacher, weights_only=False)
    rows = metrics(run)
    best = max(float(r["val_auc"]) for r in rows if r["val_auc"] != "nan")
    assert state["model"] == "hcc_teacher_sf" and state["val_auc"] == pytest.approx(best)
    assert state["config"]["kind"] == "structure-function" and state["git_commit"]


def test_tiny_distillation_beats_chance_on_validation(sf_teacher: Path, hcc_manifest: Path, tmp_path: Path):
    cfg = TrainConfig(
        task="hcc",
        role="student",
        data=hcc_manifest,
        out=tmp_path,
        epochs=6,
        lr=3e-3,
        teachers=[sf_teacher],
        rgd_weight=1.0,
        modality_dropout=0.3,
        low_dose=None,
        **QUICK,
    )
    best = torch.load(train(cfg), weights_only=False)
    assert set(metrics(tmp_path / cfg.name)[0]) >= {"train_kd", "train_rgd", "val_auc"}
    assert best["val_auc"] > 0.5


def test_resume_continues_where_the_run_stopped(hcc_manifest: Path, tmp_path: Path) -> None:
    values = {
        "task": "hcc",
        "role": "student",
        "data": hcc_manifest,
        "out": tmp_path,
        "low_dose": None,
        **QUICK,
    }
    train(TrainConfig(**values, epochs=1))
    train(TrainConfig(**values, epochs=2), resume=True)
    assert [r["epoch"] for r in metrics(tmp_path / "hcc-student-s0")] == ["0", "1"]


def test_two_process_ddp_run_completes(hcc_manifest: Path, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "training.cli",
        "train",
        "student",
        "--task",
        "hcc",
        "--data",
        str(hcc_manifest),
        "--out",
        str(tmp_path),
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--max-cases",
        "8",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "hcc-student-s0" / "best.pt").exists()
    assert len(metrics(tmp_path / "hcc-student-s0")) == 1
