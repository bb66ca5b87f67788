"""The ablation: the ladder of steps, what each switches off, and one tiny run end to end."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cohort_shapes import HCC_SHAPE

from models import get_task
from training.ablation import (
    add_gain_intervals,
    claim,
    ladder,
    parts_left_out,
    run_ablation,
    step_overrides,
    table_subsets,
)
from training.config import TrainConfig
from training.data.readers import read_records
from training.metrics import macro_auc
from training.train import train

HCC = get_task("hcc")
BRATS = get_task("brats")


def test_the_hcc_ladder_adds_one_part_per_step_and_ends_with_the_full_method() -> None:
    steps = ladder(HCC)
    assert [s.name for s in steps] == ["scratch", "+kd", "+rgd", "+cbam3d", "+modality_dropout", "full"]
    for before, after in itertools.pairwise(steps):
        assert len(after.parts - before.parts) == 1 and before.parts < after.parts
    assert [s.name for s in ladder(BRATS)][-1] == "+modality_dropout"  # BraTS has no dose part


def test_a_shorter_ablation_keeps_scratch_and_the_full_method() -> None:
    from training.ablation import select_steps

    steps = ladder(get_task("brats"))
    assert [s.name for s in select_steps(steps, [])] == ["scratch", steps[-1].name]
    assert [s.name for s in select_steps(steps, ["+kd"])] == ["scratch", "+kd", steps[-1].name]
    with pytest.raises(ValueError, match="no step"):
        select_steps(steps, ["+dose"])


def test_a_part_the_base_config_switches_off_is_no_step() -> None:
    off = parts_left_out({"modality_dropout": 0.0, "rgd_weight": 5.0})
    assert off == {"modality_dropout"}
    steps = ladder(HCC, off)
    assert [s.name for s in steps] == ["scratch", "+kd", "+rgd", "+cbam3d", "full"]
    # The full method then gives the student CT alone, taught by both teachers on low dose.
    got = step_overrides(steps[-1], HCC, {}, [Path("sf.pt"), Path("dose.pt")])
    assert got["input_modalities"] == ["ct"] and got["modality_dropout"] == 0.0
    assert got["teachers"] == ["sf.pt", "dose.pt"] and "low_dose" not in got
    assert parts_left_out({"modality_dropout": 1.0, "rgd_weight": 0.0}) == {"rgd"}


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (
            "scratch",
            {
                "teachers": [],
                "rgd_weight": 0.0,
                "modality_dropout": 0.0,
                "input_modalities": ["ct"],
                "low_dose": None,
            },
        ),
        ("+kd", {"teachers": ["sf.pt"], "rgd_weight": 0.0, "input_modalities": ["ct"]}),
        ("+modality_dropout", {"teachers": ["sf.pt"], "low_dose": None}),
        ("full", {"teachers": ["sf.pt", "dose.pt"]}),
    ],
)
def test_each_step_switches_off_exactly_the_parts_it_lacks(step: str, expected: dict) -> None:
    by_name = {s.name: s for s in ladder(HCC)}
    base = {"model_kwargs": {"width": 4}}
    got = step_overrides(by_name[step], HCC, base, [Path("sf.pt"), Path("dose.pt")])
    for key, value in expected.items():
        assert got[key] == value, key
    assert got["val_modalities"] == ["ct"]  # every student is selected on CT alone
    assert got["model_kwargs"] == {"width": 4, "attention": "cbam3d" in by_name[step].parts}
    if step in ("+modality_dropout", "full"):
        assert "modality_dropout" not in got and "input_modalities" not in got


def test_a_live_claim_is_respected_and_a_dead_ones_taken_over(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert claim(run)
    assert claim(run)  # this process's own claim
    (run / "claim.pid").write_text("1")  # PID 1 is alive: another owner
    assert not claim(run)
    (run / "claim.pid").write_text("999999999")  # no such process
    assert claim(run)


def kept_run(runs: Path, name: str, labels: np.ndarray, signal: float, seed: int) -> dict:
    """A judged run's kept predictions (CT alone, internal) and its result, on given labels."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(labels), 3))
    logits[np.arange(len(labels)), labels] += signal
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    (runs / name).mkdir(parents=True)
    np.savez(runs / name / "predictions.npz", **{"internal.ct": probs, "labels.internal.ct": labels})
    return {"internal": {"ct": macro_auc(labels, probs)}, "external": {}}


def test_gain_intervals_score_every_run_on_the_same_resampled_cases(tmp_path: Path) -> None:
    labels = np.random.default_rng(0).integers(0, 3, 400)
    runs = {
        "scratch": [kept_run(tmp_path, f"scratch-s{s}", labels, 0.5, s) for s in (0, 1)],
        "full": [kept_run(tmp_path, f"full-s{s}", labels, 2.0, 10 + s) for s in (0, 1)],
    }
    results = {
        "steps": {name: {"runs": dict(enumerate(r))} for name, r in runs.items()},
        "headline_setting": "ct",
        "full_step": "full",
        "teachers": {},
    }
    for step in results["steps"].values():
        aucs = [r["internal"]["ct"] for r in step["runs"].values()]
        step["summary"] = {"internal": {"ct": {"mean": float(np.mean(aucs))}}, "external": {}}
    results["targets"] = {"internal_beats_scratch": {}}

    add_gain_intervals(results, tmp_path)

    gain = results["steps"]["full"]["gain_over_scratch"]["internal.ct"]
    assert gain["ci95"][0] < gain["gain"] < gain["ci95"][1]
    assert gain["ci95"][0] > 0.1  # a strong model against a weak one, on 400 cases
    assert results["targets"]["internal_beats_scratch"]["ci_excludes_zero"] is True
    # A run judged on another cohort cannot be paired with the others.
    other = np.roll(labels, 1)
    np.savez(
        tmp_path / "full-s1" / "predictions.npz",
        **{"internal.ct": np.full((400, 3), 1 / 3), "labels.internal.ct": other},
    )
    with pytest.raises(ValueError, match="different cohorts"):
        add_gain_intervals(results, tmp_path)


@pytest.mark.slow
def test_a_tiny_ablation_trains_every_step_and_writes_the_table(
    hcc_manifest: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from training.data.synth_hcc import write_hcc_cohort

    tmp = tmp_path_factory.mktemp("ablation")
    external = write_hcc_cohort(
        tmp / "ext", 4, seed=5, external=True, doses=(1.0, 0.1), workers=1, progress=False, shape=HCC_SHAPE
    )
    quick = {"epochs": 1, "max_cases": 8, "model_kwargs": {"width": 4}, "augment": False, "out": tmp / "t"}
    teachers = [
        train(TrainConfig(task="hcc", role="teacher", kind=kind, data=hcc_manifest, **quick))
        for kind in ("structure-function", "dose-aware")
    ]
    base = tmp / "base.yaml"
    base.write_text(yaml.safe_dump({**quick, "out": str(tmp / "unused"), "rgd_weight": 1.0}))

    out = tmp / "report"
    results = run_ablation("hcc", base, hcc_manifest, teachers, [0], out, external=external, command="test")

    assert results["complete"] and list(results["steps"]) == [s.name for s in ladder(HCC)]
    full = results["steps"]["full"]["summary"]
    assert set(full["internal"]) == {"+".join(s) for s in HCC.allowed_subsets()}
    assert set(full["external"]) == {"1", "0.1"}
    assert "dose_loss_100_to_10" in full
    for step in results["steps"].values():
        auc = step["summary"]["internal"]["ct"]["mean"]
        assert math.isnan(auc) or 0.0 <= auc <= 1.0
    scratch = torch.load(out / "runs" / "scratch-s0" / "best.pt", weights_only=False)
    assert scratch["config"]["input_modalities"] == ["ct"] and scratch["model_kwargs"]["attention"] is False
    # Only the full step sees simulated low-dose CT (the base config's range reaches it alone).
    for name in ("scratch", "modality_dropout", "full"):
        config = torch.load(out / "runs" / f"{name}-s0" / "best.pt", weights_only=False)["config"]
        assert config["low_dose"] == (None if name != "full" else [0.1, 1.0]), name
    assert not (out / "runs" / "scratch-s0" / "last.pt").exists()
    table = (out / "ablation.md").read_text()
    assert "| `scratch` |" in table and "| `full` |" in table and "## Targets" in table
    assert (out / "ablation.png").stat().st_size > 10_000
    assert set(json.loads((out / "ablation.json").read_text())["targets"]) >= {
        "internal_beats_scratch",
        "external_beats_scratch",
        "smaller_dose_loss_than_scratch",
    }
    # Every run keeps its probabilities, so each step's gain over scratch has its interval.
    kept = np.load(out / "runs" / "full-s0" / "predictions.npz")
    assert kept["internal.ct"].shape == (results["n_internal_test"], 3)
    assert set(results["steps"]["+kd"]["gain_over_scratch"]) == {"internal.ct", "external.1"}
    assert "gain_ci95" in results["targets"]["internal_beats_scratch"]
    assert "Gain in macro AUC over `scratch`" in table

    # A second call finds every run done and only rewrites the table.
    mtime = (out / "runs" / "full-s0" / "result.json").stat().st_mtime
    run_ablation("hcc", base, hcc_manifest, teachers, [0], out, external=external)
    assert (out / "runs" / "full-s0" / "result.json").stat().st_mtime == mtime

    # Judged again on another cohort (here every labelled case of the manifest, not its test
    # split): the finished networks are evaluated, nothing is trained, and a seed that was
    # never trained is left out of the table.
    again = tmp / "judged"
    rejudged = run_ablation(
        "hcc", base, hcc_manifest, teachers, [0, 1], again, test_data=hcc_manifest, trained_runs=out / "runs"
    )
    labelled = sum(1 for r in read_records("hcc", hcc_manifest) if r.label is not None)
    assert rejudged["n_internal_test"] == labelled > results["n_internal_test"]
    assert not rejudged["complete"] and not (out / "runs" / "full-s1").exists()
    assert sorted(p.name for p in (again / "runs" / "full-s0").iterdir()) == [
        "predictions.npz",
        "result.json",
    ]
    assert (
        rejudged["steps"]["full"]["runs"]["0"]["best_epoch"]
        == results["steps"]["full"]["runs"]["0"]["best_epoch"]
    )
    assert f"{labelled} internal test cases" in (again / "ablation.md").read_text()


def test_table_shows_every_modality_together_and_each_alone_when_there_are_many_subsets() -> None:
    brats = ["+".join(s) for s in BRATS.allowed_subsets()]
    assert len(brats) == 15
    assert table_subsets(brats) == ["t1+t1ce+t2+flair", "t1", "t1ce", "t2", "flair"]
    hcc = ["+".join(s) for s in HCC.allowed_subsets()]
    assert table_subsets(hcc) == hcc
