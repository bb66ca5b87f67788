"""Export (ONNX, card, parity, int8) and evaluation reports, on a tiny generated cohort."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cohort_shapes import HCC_SHAPE

from models.tasks import get_task
from tests.common import random_checkpoint
from training.data.synth_hcc import write_hcc_cohort
from training.evaluate import Predictor, evaluate_model
from training.export import ExportError, export_model


def checkpoint(seed: int = 0) -> dict:
    return random_checkpoint("hcc_student", "hcc", seed)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, hcc_manifest: Path) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("export") / "hcc_student.onnx"
    card = export_model(checkpoint(), out, data=hcc_manifest, int8=True, training_data={"synthetic": True})
    return out, card


def test_export_writes_a_verified_card(exported: tuple[Path, dict]) -> None:
    out, card = exported
    assert out.exists() and out.with_suffix(".pt").exists()
    assert json.loads(out.with_suffix(".json").read_text()) == card  # strict JSON, no NaN
    assert card["parity"]["max_abs_logit_diff"] < 1e-4
    assert card["classes"] == ["well", "moderate", "poor"] and card["modalities"][0] == "ct"
    assert card["training_data"] == {"synthetic": True}
    assert set(card["metrics"]["by_subset"]) == {"ct+pet_fdg+pet_act", "ct+pet_fdg", "ct+pet_act", "ct"}
    assert card["prototypes"] and all(
        len(p["weights"]) == len(p["distances"]) for p in card["prototypes"].values()
    )


def test_int8_model_is_smaller_and_its_cost_is_measured(exported: tuple[Path, dict]) -> None:
    out, card = exported
    int8 = card["int8"]
    assert (out.parent / int8["file"]).exists()
    assert int8["bytes"] < int8["float_bytes"]
    assert int8["max_abs_logit_diff"] >= 0 and "auc_drop" in int8


def test_export_refuses_what_it_cannot_reproduce(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_model(checkpoint(), tmp_path / "m.onnx", tolerance=-1.0)
    with pytest.raises(ValueError, match=r"must end in \.onnx"):
        export_model(checkpoint(), tmp_path / "m.bin")


def test_evaluate_writes_metrics_plots_and_a_report(
    exported: tuple[Path, dict], hcc_manifest: Path, tmp_path: Path
):
    out, _ = exported
    report = evaluate_model(out, hcc_manifest, tmp_path, missing=True)
    for name in (
        "metrics.json",
        "report.md",
        "roc.png",
        "decision_curve.png",
        "reliability.png",
        "missing.png",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    overall = report["overall"]
    assert sum(map(sum, overall["confusion_matrix"])) == overall["n"]
    assert len(overall["decision_curve"]["model"]) == len(overall["decision_curve"]["thresholds"])
    assert "ct" in report["by_subset"]
    assert "macro AUC" in (tmp_path / "report.md").read_text()


def test_evaluate_sweeps_the_dose_levels_of_the_external_cohort(exported: tuple[Path, dict], tmp_path: Path):
    external = write_hcc_cohort(
        tmp_path / "ext", 3, seed=5, external=True, workers=1, progress=False, shape=HCC_SHAPE
    )
    out, _ = exported
    report = evaluate_model(out, external, tmp_path / "report", dose=True)
    assert list(report["by_dose"]) == ["1", "0.5", "0.25", "0.1", "0.05"]
    assert all(entry["n"] == 3 for entry in report["by_dose"].values())
    assert (tmp_path / "report" / "dose.png").exists()


def test_a_lesion_grid_model_is_exported_and_evaluated_on_its_grid(hcc_manifest: Path, tmp_path: Path):
    out = tmp_path / "hcc_lesion.onnx"
    card = export_model({**checkpoint(), "grid": "lesion"}, out, data=hcc_manifest)
    assert card["input"]["grid"] == "lesion" and card["input"]["shape"] == [48, 48, 48]
    assert "lesion of the mask" in card["preprocessing"]
    # Every subset and the prototypes went through the lesion crops of the cohort's masks.
    assert set(card["metrics"]["by_subset"]) == {"ct+pet_fdg+pet_act", "ct+pet_fdg", "ct+pet_act", "ct"}
    assert card["prototypes"]
    assert Predictor(out).task == get_task("hcc", "lesion")
    assert Predictor(out.with_suffix(".pt")).task == get_task("hcc", "lesion")
    report = evaluate_model(out, hcc_manifest, tmp_path / "report")
    assert report["overall"]["n"] > 0


def test_evaluation_counts_the_labels_the_service_answers(
    exported: tuple[Path, dict], hcc_manifest: Path, tmp_path: Path
):
    """With a decision rule in the card, the confusion matrix, balanced accuracy and each
    modality setting's share of cases answered as their own class follow the rule (what
    the service answers), not plain argmax."""
    out, card = exported
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(out, model / out.name)
    favoured = card["classes"][-1]
    weights = {c: (1e9 if c == favoured else 1.0) for c in card["classes"]}
    (model / out.name).with_suffix(".json").write_text(
        json.dumps({**card, "decision": {"rule": "weights", "weights": weights, "fitted_on": "test"}})
    )
    report = evaluate_model(model / out.name, hcc_manifest, tmp_path / "report", missing=True)
    overall = report["overall"]
    assert overall["label_rule"] != "argmax"
    # Every case is answered as the favoured class: only its column is filled.
    assert all(row[:-1] == [0] * (len(row) - 1) for row in overall["confusion_matrix"])
    for setting in report["by_subset"].values():
        assert setting["answered_as_own_class"][favoured] in (1.0, None)
        others = [v for c, v in setting["answered_as_own_class"].items() if c != favoured and v is not None]
        assert all(v == 0.0 for v in others), setting
    assert "answered" in (tmp_path / "report" / "report.md").read_text()
