"""The BraTS sub-region segmenter's recipe end to end on a tiny cohort: train, export with
its one stage, evaluate with all sequences and one alone; the training targets nested as
BraTS scores them, windows with sequences hidden, and BraTS' Dice rule."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.contract import Volume
from models.segmenter import get_segmenter_spec
from training.cli import main
from training.data.readers import load_case, read_brats
from training.export import export_segmenter
from training.segmenter import SegmenterConfig, WindowDataset, label_regions, train_segmenter
from training.subregion_report import region_dice

SPEC = get_segmenter_spec("brats")
TINY = {"channels": [4, 8, 16, 16]}


@pytest.fixture(scope="module")
def trained(brats_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("brats-segmenter-runs")
    cfg = SegmenterConfig(
        task="brats",
        data=[brats_root],
        out=out,
        cache=out / "cache",
        steps=2,
        batch_size=1,
        val_every=2,
        val_cases=1,
        window=(32, 32, 32),
        workers=1,
        num_workers=0,
        modality_dropout=0.5,
        model_kwargs=TINY,
        device="cpu",
    )
    return train_segmenter(cfg)


def test_training_validates_each_brats_region(trained: Path) -> None:
    state = torch.load(trained, map_location="cpu", weights_only=False)
    assert state["task"] == "brats" and state["model"] == "brats_segmenter" and state["stage"] == "coarse"
    row = next(csv.DictReader((trained.parent / "metrics.csv").open()))
    for name in ("whole_tumour", "tumour_core", "enhancing_tumour"):
        assert 0.0 <= float(row[f"val_{name}_dice"]) <= 1.0
    # Selected on what the service is sent: all four sequences and each alone.
    singles = [float(row[f"val_{m}_score"]) for m in ("t1", "t1ce", "t2", "flair")]
    all_four = np.nanmean([float(row[f"val_{n}_dice"]) for n in SPEC.regions])
    assert float(row["val_score"]) == pytest.approx(np.mean([all_four, *singles]))
    with pytest.raises(ValueError, match="no fine stage"):
        SegmenterConfig(task="brats", stage="fine", data=[trained])


def test_export_has_one_stage_reading_four_sequences(trained: Path, tmp_path: Path) -> None:
    card = export_segmenter(trained, None, tmp_path / "brats_seg.onnx")
    assert list(card["stages"]) == ["coarse"] and card["modalities"] == ["t1", "t1ce", "t2", "flair"]
    assert card["label_values"] == [0, 2, 1, 4]
    entry = card["stages"]["coarse"]
    session = ort.InferenceSession(str(tmp_path / entry["onnx_file"]), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"image": np.zeros((1, 4, *entry["roi"]), np.float32)})[0]
    assert logits.shape == (1, 4, *entry["roi"]) and entry["parity"]["max_abs_logit_diff"] < 1e-3
    with pytest.raises(ValueError, match="stages"):
        export_segmenter(trained, trained, tmp_path / "two.onnx")


def test_evaluation_scores_all_sequences_and_each_alone(
    trained: Path, brats_root: Path, tmp_path: Path
) -> None:
    export_segmenter(trained, None, tmp_path / "brats_seg.onnx")
    out = tmp_path / "report"
    args = ["evaluate", str(tmp_path / "brats_seg.onnx"), "--data", str(brats_root), "--out", str(out)]
    assert main([*args, "--workers", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["summary"]) == ["all", "t1", "t1ce", "t2", "flair"]
    assert len(report["rows"]) == 5 * report["cases"] == 5 * len(read_brats(brats_root))
    assert all(0.0 <= r["whole_tumour_dice"] <= 1.0 for r in report["rows"])
    assert "| all |" in (out / "report.md").read_text() and (out / "dice.png").stat().st_size > 1000


def test_targets_are_the_nested_brats_regions(brats_root: Path) -> None:
    case = load_case(read_brats(brats_root)[0])
    seg = case.masks["seg"]
    regions = label_regions(case.masks, SPEC)
    whole, core, enhancing = (r.array.astype(bool) for r in regions if r is not None)
    assert np.array_equal(whole, seg.array > 0)
    assert np.array_equal(core, np.isin(seg.array, (1, 4)))
    assert np.array_equal(enhancing, seg.array == 4)
    old = label_regions({"seg": Volume(np.where(seg.array == 1, 3, seg.array), seg.affine)}, SPEC)
    assert old[1] is not None and np.array_equal(old[1].array.astype(bool), core)  # BraTS 2017's 3 is 1


def test_windows_hide_sequences_but_never_all(brats_root: Path, tmp_path: Path) -> None:
    from training.segmenter import prepare_cache

    paths = prepare_cache(read_brats(brats_root)[:2], "brats", "coarse", tmp_path, workers=1)
    windows = WindowDataset(paths, SPEC, (32, 32, 32), (0.4, 0.3, 0.3), seed=0, modality_dropout=1.0)
    kept = [tuple(bool(c.abs().sum() > 0) for c in windows[i % 2]["image"]) for i in range(24)]
    assert all(any(k) for k in kept) and any(not all(k) for k in kept)
    assert windows[0]["image"].shape == (4, 32, 32, 32)


def test_brats_dice_scores_an_absent_region_as_brats_does() -> None:
    empty, some = np.zeros((4, 4, 4), bool), np.zeros((4, 4, 4), bool)
    some[1, 1, 1] = True
    assert region_dice(empty, empty) == 1.0 and region_dice(some, empty) == 0.0
    assert region_dice(some, some) == 1.0


def test_two_cohorts_sharing_case_ids_are_prepared_apart(brats_root: Path, tmp_path: Path) -> None:
    """Synthetic BraTS cohorts all count from BraTS19_SYN_0001_1: a segmenter trained on two
    (with the head and skull-stripped) must not read one's case for the other's."""
    import shutil

    from training.segmenter import prepare_cache

    copy = shutil.copytree(brats_root, tmp_path / "copy")
    records = [read_brats(root)[0] for root in (brats_root, copy)]
    assert records[0].case_id == records[1].case_id
    paths = prepare_cache(records, "brats", "coarse", tmp_path / "cache", workers=1)
    assert len(set(paths)) == 2 and all(p.name.startswith(records[0].case_id) for p in paths)
