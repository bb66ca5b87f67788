"""Graders compared on the same cases: the cases a segmenter left ungraded are left out of
every run, and paired gains are those of the runs' own AUCs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.tasks import labels_of_card
from tests.common import random_checkpoint
from training.compare_graders import graded_cases, main

PATHS = ("ct", "pet_fdg", "pet_act", "liver_mask", "tumor_mask")


def _write(rows: list[dict[str, str]], path: Path) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_runs_share_the_graded_cases_and_gains_are_paired(hcc_manifest: Path, tmp_path: Path) -> None:
    rows = list(csv.DictReader(hcc_manifest.open()))[:6]
    for row in rows:
        row.update({c: str((hcc_manifest.parent / row[c]).resolve()) for c in PATHS})
    ids = [row["case_id"] for row in rows]
    cohort = _write(rows, tmp_path / "six.csv")
    # As `reactkd segment` writes it: the first case kept its true masks (no lesion found).
    sources = ["truth", *["model"] * 5]
    marked = [{**r, "mask_source": m} for r, m in zip(rows, sources, strict=True)]
    segmented = _write(marked, tmp_path / "seg.csv")
    assert graded_cases([cohort, segmented]) == sorted(ids[1:])

    for seed in (0, 1):
        torch.save(random_checkpoint("hcc_student", "hcc", seed=seed), tmp_path / f"s{seed}.pt")
    a, b, out = tmp_path / "s0.pt", tmp_path / "s1.pt", tmp_path / "cmp"
    runs = [f"a={a}@{segmented}", f"b={b}@{segmented}", f"a-true={a}@{cohort}"]
    main(["--out", str(out), "--modalities", "ct", *(x for run in runs for x in ("--run", run)),
          "--gain", "a:b", "--gain", "a:a-true", "--gain", "a+a-true:b+b"])  # fmt: skip
    result = json.loads((out / "comparison.json").read_text())
    assert result["cases"] == 5 and result["case_ids"] == sorted(ids[1:])
    scored = result["runs"]
    assert all(len(run["probabilities"]) == 5 for run in scored.values())
    # Checkpoints carry no decision rule: the labels are the argmax, one for each case.
    assert all(run["label_counts"] == run["argmax_counts"] for run in scored.values())
    assert all(sum(run["label_counts"].values()) == 5 for run in scored.values())
    gain = scored["a"]["macro_auc"] - scored["b"]["macro_auc"]
    assert result["gains"]["a - b"]["gain"] == pytest.approx(gain)
    # The same network on the same masks (the fixture's, both ways): no gain, a zero interval.
    assert result["gains"]["a - a-true"] == {"gain": 0.0, "ci95": [0.0, 0.0]}
    assert "| a - b |" in (out / "comparison.md").read_text()
    # Runs joined by "+": the mean of a side's AUCs (here a's twice against b's twice).
    assert result["gains"]["a+a-true - b+b"]["gain"] == pytest.approx(gain)


def test_a_gain_must_name_two_runs(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--run", f"a=x.pt@{tmp_path / 'm.csv'}", "--gain", "a:b"])
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--run", f"a=x.pt@{tmp_path / 'm.csv'}", "--gain", "a:a+b"])


def test_the_cards_decision_weights_pick_the_label() -> None:
    probabilities = np.array([[0.3, 0.5, 0.2], [0.2, 0.7, 0.1]])
    card = {"classes": ["well", "moderate", "poor"], "decision": {"weights": {"moderate": 0.5}}}
    assert labels_of_card(card, probabilities).tolist() == [0, 1]  # 0.5 x 0.5 < 0.3; 0.35 > 0.2
    assert labels_of_card({"classes": card["classes"]}, probabilities).tolist() == [1, 1]
