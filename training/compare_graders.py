"""Graders side by side on the same cases: macro AUC of each, and paired gains between them.

Issue #35 asks whether a grader behind the segmenter holds up against the same grader given
the true mask, and whether distillation beats a student trained from scratch behind the same
segmenter. Both are questions about two sets of answers on the same cases, so every run here
is scored on one list of cases (those every cohort holds and, where a cohort was segmented by
`reactkd segment`, only those whose masks the segmenter drew: a case where it found no
lesion is answered "not gradable" at serving and graded by no one), and each gain comes with
a paired bootstrap interval (`training.metrics.paired_auc_gain_ci`).

    python -m training.compare_graders --out DIR --modalities ct \\
        --run distilled=A.onnx@SEGMENTED.csv --run scratch=B.onnx@SEGMENTED.csv \\
        --run true-mask=A.onnx@COHORT.csv --gain distilled:scratch --gain distilled:true-mask

A gain's side may join runs with "+" (`--gain d7+d8+d9:s7+s8+s9`): the mean macro AUC of a
recipe's training seeds, each seed scored on the same resampled cases.

`DIR/comparison.json` holds every number and each run's probabilities; `DIR/comparison.md`
the table.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from models.tasks import labels_of_card
from training.data.readers import CaseRecord, read_hcc_manifest
from training.evaluate import Predictor, predict_records
from training.metrics import auc_ci, macro_auc, paired_auc_gain_ci


def graded_cases(cohorts: list[Path]) -> list[str]:
    """Case ids every cohort holds, less those a segmented cohort kept the true masks for."""
    common: set[str] | None = None
    for manifest in cohorts:
        records = read_hcc_manifest(manifest)
        ids = {
            r.case_id
            for r in records
            if r.meta.get("mask_source", "model") == "model" and r.label is not None
        }
        common = ids if common is None else common & ids
    return sorted(common or ())


def compare(
    runs: dict[str, tuple[Path, Path]], gains: list[tuple[str, str]], modalities: list[str] | None
) -> dict[str, Any]:
    """Each run (model, cohort) on the shared graded cases; each gain (a over b) paired."""
    cases = graded_cases([cohort for _, cohort in runs.values()])
    if not cases:
        raise ValueError("the cohorts share no graded case")
    labels: np.ndarray | None = None
    probs: dict[str, np.ndarray] = {}
    for name, (model, cohort) in runs.items():
        by_id: dict[str, CaseRecord] = {r.case_id: r for r in read_hcc_manifest(cohort)}
        y, p = predict_records(Predictor(model), [by_id[c] for c in cases], modalities)
        if labels is not None and not np.array_equal(labels, y):
            raise ValueError(f"run {name!r}: its cohort labels the shared cases otherwise")
        labels, probs[name] = y, p
    assert labels is not None
    result: dict[str, Any] = {"cases": len(cases), "case_ids": cases, "runs": {}, "gains": {}}
    for name, (model, cohort) in runs.items():
        low, high = auc_ci(labels, probs[name])
        result["runs"][name] = {
            "model": str(model),
            "cohort": str(cohort),
            "macro_auc": macro_auc(labels, probs[name]),
            "macro_auc_ci95": [low, high],
            "argmax_counts": dict(Counter(int(i) for i in probs[name].argmax(axis=1))),
            # What the service answers: the card's decision rule (plain argmax without a card).
            "label_counts": dict(Counter(int(i) for i in labels_of_card(_card(model), probs[name]))),
            "probabilities": probs[name].round(5).tolist(),
        }
    for a, b in gains:
        # A side may join runs with "+" (one recipe's training seeds): its mean macro AUC.
        treated, reference = a.split("+"), b.split("+")
        low, high = paired_auc_gain_ci(labels, [probs[r] for r in treated], [probs[r] for r in reference])
        gain = float(
            np.mean([result["runs"][r]["macro_auc"] for r in treated])
            - np.mean([result["runs"][r]["macro_auc"] for r in reference])
        )
        result["gains"][f"{a} - {b}"] = {"gain": gain, "ci95": [low, high]}
    result["labels"] = labels.tolist()
    return result


def _card(model: Path) -> dict[str, Any]:
    card = model.with_suffix(".json")
    return json.loads(card.read_text()) if model.suffix == ".onnx" and card.is_file() else {}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Graders on the same cases",
        "",
        f"{result['cases']} cases (graded: the segmenter found a lesion). Macro AUC with a 95 % "
        "bootstrap interval; gains with a paired one.",
        "",
        "| run | model | cohort | macro AUC |",
        "|---|---|---|---|",
    ]
    for name, run in result["runs"].items():
        low, high = run["macro_auc_ci95"]
        lines.append(
            f"| {name} | `{Path(run['model']).name}` | `{Path(run['cohort']).parent.name}` "
            f"| {run['macro_auc']:.3f} ({low:.3f}-{high:.3f}) |"
        )
    lines += ["", "| gain | macro AUC | 95 % paired interval |", "|---|---|---|"]
    for name, gain in result["gains"].items():
        low, high = gain["ci95"]
        lines.append(f"| {name} | {gain['gain']:+.3f} | {low:+.3f} to {high:+.3f} |")
    return "\n".join(lines) + "\n"


def _run(text: str) -> tuple[str, tuple[Path, Path]]:
    name, _, rest = text.partition("=")
    model, _, cohort = rest.partition("@")
    if not (name and model and cohort):
        raise argparse.ArgumentTypeError(f"expected NAME=MODEL@MANIFEST, got {text!r}")
    return name, (Path(model), Path(cohort))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=_run, action="append", required=True, metavar="NAME=MODEL@MANIFEST")
    parser.add_argument(
        "--gain",
        action="append",
        default=[],
        metavar="A:B",
        help="A's gain over B, paired; A+C:B+D compares the mean of A and C with that of B and D",
    )
    parser.add_argument("--modalities", nargs="*", help="the modalities every grader is given (default all)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    runs = dict(args.run)
    gains = [tuple(g.split(":", 1)) for g in args.gain]
    for pair in gains:
        if len(pair) != 2 or not {r for side in pair for r in side.split("+")} <= set(runs):
            parser.error(f"--gain {':'.join(pair)}: name two runs (or runs joined by +) of {sorted(runs)}")
    result = compare(runs, gains, args.modalities)  # type: ignore[arg-type]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "comparison.json").write_text(json.dumps(result, indent=1))
    (args.out / "comparison.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
