"""The segmenter's recipe end to end on a tiny cohort: train both stages, resume, export,
evaluate; and the scoring rules of its report on masks whose answer is known."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.contract import Grid
from models.segmenter import get_segmenter_spec
from training.cli import main
from training.export import export_segmenter
from training.segmentation_report import (
    LESION_THRESHOLDS,
    SegmenterRunner,
    card_summary,
    evaluate_segmenter,
    median_ci,
    rate_ci,
    score_case,
)
from training.segmenter import SegmenterConfig, load_segmenter_config, train_segmenter

SPEC = get_segmenter_spec("hcc")


def _config(manifest: Path, out: Path, stage: str, steps: int = 2) -> SegmenterConfig:
    return SegmenterConfig(
        stage=stage,  # type: ignore[arg-type]
        data=[manifest],
        out=out,
        cache=out / "cache",
        steps=steps,
        batch_size=1,
        val_every=2,
        val_cases=1,
        max_cases=8,
        window=(32, 32, 32),
        workers=1,
        num_workers=0,
        model_kwargs={"channels": [4, 8, 16, 32, 32]},
        device="cpu",
    )


@pytest.fixture(scope="module")
def stages(hcc_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("segmenter-runs")
    return {stage: train_segmenter(_config(hcc_manifest, out, stage)) for stage in ("coarse", "fine")}


def test_each_stage_writes_its_validation_and_a_segmenter_checkpoint(stages: dict[str, Path]) -> None:
    for stage, best in stages.items():
        state = torch.load(best, map_location="cpu", weights_only=False)
        assert state["role"] == "segmenter" and state["stage"] == stage and state["task"] == "hcc"
        rows = list(csv.DictReader((best.parent / "metrics.csv").open()))
        assert [int(r["step"]) for r in rows] == [2]
        organ = float(rows[0]["val_organ_dice"])
        assert 0.0 <= organ <= 1.0 and math.isfinite(float(rows[0]["train_loss"]))


def test_a_resumed_run_continues_at_its_step(hcc_manifest: Path, stages: dict[str, Path]) -> None:
    out = stages["coarse"].parent.parent
    cfg = _config(hcc_manifest, out, "coarse", steps=4)
    train_segmenter(cfg, resume=True)
    rows = list(csv.DictReader((cfg.run_dir / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 4]
    # Minutes (for the card) count on from the first run's.
    assert 0.0 < float(rows[0]["minutes"]) <= float(rows[1]["minutes"])


def test_a_config_file_is_read_and_typos_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("stage: fine\nsteps: 5\nwindow: [48, 48, 48]\n")
    cfg = load_segmenter_config(path, {"data": [tmp_path / "m.csv"]})
    assert cfg.stage == "fine" and cfg.steps == 5 and cfg.name == "hcc-segmenter-fine-s0"
    with pytest.raises(ValueError, match="multiples of 16"):
        load_segmenter_config(None, {"data": [path], "window": [40, 48, 48]})
    path.write_text("stpes: 5\n")
    with pytest.raises(ValueError, match="stpes"):
        load_segmenter_config(path, {"data": [path]})


def test_export_writes_both_stages_with_a_card_and_parity(stages: dict[str, Path], tmp_path: Path) -> None:
    card = export_segmenter(stages["coarse"], stages["fine"], tmp_path / "seg.onnx")
    assert card["role"] == "segmenter" and card["labels"] == ["background", "liver", "lesion"]
    for stage in ("coarse", "fine"):
        entry = card["stages"][stage]
        assert entry["parity"]["max_abs_logit_diff"] < 1e-3
        session = ort.InferenceSession(str(tmp_path / entry["onnx_file"]), providers=["CPUExecutionProvider"])
        roi = entry["roi"]
        logits = session.run(["logits"], {"image": np.zeros((2, 1, *roi), np.float32)})[0]
        assert logits.shape == (2, 3, *roi)
    assert json.loads((tmp_path / "seg.json").read_text())["onnx_sha256"] == card["onnx_sha256"]
    with pytest.raises(ValueError, match="stage 'fine'"):
        export_segmenter(stages["fine"], stages["fine"], tmp_path / "bad.onnx")


def test_evaluation_scores_every_case_and_writes_the_report(
    stages: dict[str, Path], hcc_manifest: Path, tmp_path: Path
) -> None:
    export_segmenter(stages["coarse"], stages["fine"], tmp_path / "seg.onnx")
    report = evaluate_segmenter(
        tmp_path / "seg.onnx", {"tiny": hcc_manifest}, tmp_path / "report", split="test", workers=1
    )
    summary = report["summary"]["tiny"]
    assert summary["cases"] == len(report["cases"]) > 0
    assert {"organ_dice", "lesion_dice", "dominant_lesion_found", "false_lesions_per_case"} <= set(summary)
    assert (tmp_path / "report" / "report.md").read_text().startswith("# Segmenter evaluation")
    assert (tmp_path / "report" / "dice.png").stat().st_size > 1000

    # The card takes the synthetic summary, and the real-CT numbers where they were written.
    card_report = card_summary(tmp_path / "report" / "report.json")
    assert card_report == report["summary"]
    real = {"slab": {"liver_dice": 0.9, "predicted_liver_ml_whole_scan": 1000.0, "_predicted": None}}
    (tmp_path / "report" / "real-ct").mkdir()
    (tmp_path / "report" / "real-ct" / "real-ct.json").write_text(json.dumps({"scans": real}))
    card_report = card_summary(tmp_path / "report" / "report.json")
    assert card_report["real_ct"] == {"slab": {"liver_dice": 0.9, "predicted_liver_ml_whole_scan": 1000.0}}


def test_the_lesion_threshold_is_chosen_on_validation_and_kept_by_the_card(
    stages: dict[str, Path], hcc_manifest: Path, tmp_path: Path
) -> None:
    export_segmenter(stages["coarse"], stages["fine"], tmp_path / "seg.onnx")
    out = tmp_path / "threshold.json"
    assert main(["tune-segmenter", str(tmp_path / "seg.onnx"), "--data", str(hcc_manifest), "--split",
                 "test", "--out", str(out), "--workers", "1"]) == 0  # fmt: skip
    tuning = json.loads(out.read_text())
    assert [row["threshold"] for row in tuning["table"]] == list(LESION_THRESHOLDS)
    best = max(tuning["table"], key=lambda row: (row["lesion_f1"], row["threshold"]))
    for row in tuning["table"]:
        p, r = row["lesion_precision"], row["lesion_recall"]
        assert row["lesion_f1"] == pytest.approx(2 * p * r / (p + r) if p + r else 0.0)
    assert tuning["threshold"] == best["threshold"] and tuning["cases"] > 0
    # The card was updated in place, and the runner (as the service) reads it.
    assert SegmenterRunner(tmp_path / "seg.onnx").spec.lesion_threshold == tuning["threshold"]
    # A later export carries the same choice.
    card = export_segmenter(
        stages["coarse"], stages["fine"], tmp_path / "again.onnx", lesion_threshold=tuning
    )
    assert card["lesion_threshold"] == tuning["threshold"] and card["lesion_threshold_tuning"] == tuning


def _ball(shape: tuple[int, int, int], centre: tuple[int, int, int], radius: float) -> np.ndarray:
    index = np.indices(shape)
    return sum((index[i] - centre[i]) ** 2 for i in range(3)) <= radius**2  # type: ignore[no-any-return]


def test_scoring_knows_found_missed_and_false_lesions() -> None:
    shape = (40, 40, 40)
    grid = Grid(shape=shape, affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    liver = _ball(shape, (20, 20, 20), 15).astype(np.uint8)
    tumor = (_ball(shape, (20, 20, 14), 4) | _ball(shape, (20, 20, 28), 2)).astype(np.uint8)
    perfect = liver.copy()
    perfect[tumor > 0] = 2
    row = score_case(perfect, liver, tumor, grid, SPEC)
    assert row["organ_dice"] == 1.0 and row["lesion_dice"] == 1.0 and row["dominant_found"]
    assert row["false_lesions"] == 0 and row["true_lesions"] == 2 and row["center_error_mm"] == 0.0
    assert row["found_lesions"] == 2
    # The dominant lesion missed, the satellite found, and one lesion where there is none.
    wrong = liver.copy()
    wrong[_ball(shape, (20, 20, 28), 2)] = 2
    wrong[_ball(shape, (12, 20, 20), 2)] = 2
    row = score_case(wrong, liver, tumor, grid, SPEC)
    assert row["dominant_found"] is False and row["false_lesions"] == 1 and row["predicted_lesions"] == 2
    assert row["found_lesions"] == 1
    # A head: no organ to score, the predicted organ volume is what is reported.
    row = score_case(np.zeros(shape, np.uint8), None, None, grid, SPEC)
    assert (
        math.isnan(row["organ_dice"]) and row["predicted_organ_ml"] == 0.0 and row["dominant_found"] is None
    )


def test_conspicuity_is_the_lesion_contrast_over_the_liver_noise() -> None:
    """A lesion 20 HU darker than a liver of 10 HU standard deviation: contrast 20, CNR 2."""
    shape = (40, 40, 40)
    grid = Grid(shape=shape, affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    liver = _ball(shape, (20, 20, 20), 15)
    tumor = _ball(shape, (20, 20, 20), 5)
    rng = np.random.default_rng(0)
    ct = np.where(liver, 100.0, -100.0) + rng.normal(0, 10, shape)
    ct[tumor] -= 20.0
    labels = liver.astype(np.uint8)
    row = score_case(labels, liver.astype(np.uint8), tumor.astype(np.uint8), grid, SPEC, ct)
    assert abs(row["dominant_contrast_hu"] - 20) < 2 and abs(row["dominant_cnr"] - 2) < 0.25
    assert row["dominant_found"] is False and row["dominant_ml"] == tumor.sum() * 8 / 1000


def test_intervals_hold_their_estimate() -> None:
    entry = median_ci([0.9, 0.92, 0.95, 0.97, float("nan"), 0.99])
    assert entry["n"] == 5 and entry["ci95"][0] <= entry["median"] == 0.95 <= entry["ci95"][1]
    rate = rate_ci(19, 20)
    assert rate["rate"] == 0.95 and rate["ci95"][0] < 0.95 < rate["ci95"][1] <= 1.0
    assert rate_ci(0, 0)["rate"] is None


SHIPPED_SEGMENTER = Path(__file__).resolve().parents[2] / "app" / "demo_models" / "hcc_segmenter.onnx"


def test_a_cohort_segmented_is_a_manifest_of_the_segmenters_masks(hcc_manifest: Path, tmp_path: Path) -> None:
    from training.data.readers import load_case, read_hcc_manifest

    rows = list(csv.DictReader(hcc_manifest.open()))[:3]
    subset = hcc_manifest.parent / "three.csv"
    with subset.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "predicted"
    assert main(["segment", str(SHIPPED_SEGMENTER), "--data", str(subset), "--out", str(out),
                 "--workers", "1"]) == 0  # fmt: skip
    written = list(csv.DictReader((out / "manifest.csv").open()))
    assert [r["case_id"] for r in written] == [r["case_id"] for r in rows]
    for old, new, record in zip(rows, written, read_hcc_manifest(out / "manifest.csv"), strict=True):
        kept = ("grade", "split", "dose")
        assert {k: new[k] for k in kept} == {k: old[k] for k in kept}
        assert Path(new["ct"]) == (hcc_manifest.parent / old["ct"]).resolve()
        # Every case was segmented; the mask columns are the segmenter's only where it found a lesion.
        predicted = load_case(record)  # on the CT's grid, or load_case refuses it
        assert (out / new["case_id"] / "tumor.nii.gz").is_file()
        found = float(new["predicted_lesion_ml"]) > 0
        assert new["mask_source"] == ("model" if found else "truth")
        expected = out / new["case_id"] if found else hcc_manifest.parent / old["case_id"]
        assert Path(new["tumor_mask"]).parent == expected.resolve()
        assert predicted.masks["tumor"].array.any()
    # The shipped segmenter finds the benchmark's lesions in most cases (reports/segmenter/).
    assert "model" in {r["mask_source"] for r in written}
