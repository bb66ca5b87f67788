"""How well a segmenter finds the organ and the lesion: Dice, detection, false alarms, a report.

Every case is segmented as the service segments it (`models.segmenter.segment`, through
the exported ONNX file or a PyTorch checkpoint) and scored on the scan's own grid against
its masks (the prediction brought there by `labels_on_grid`), never on the segmenter's
coarser grid, where Dice would flatter it:

- organ Dice (the liver with its lesions, as in LiTS) and lesion Dice (all lesions);
- the dominant lesion found: a predicted lesion component overlaps the largest true one;
- false alarms: predicted lesions touching no true lesion; on cases without a lesion, how
  many get one; on cases without the organ (heads, pelves), the organ volume predicted.

Medians come with percentile bootstrap intervals over cases; rates with Wilson intervals.
`report.md` has the tables, `report.json` every number and per-case row, and two plots:
Dice by cohort and an overlay of the median and the worst case of each cohort.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from models.contract import Grid, grid_of
from models.segmenter import (
    Predictor,
    SegmenterSpec,
    StageName,
    labels_from_probabilities,
    labels_on_grid,
    mask_on_grid,
    reference_scan,
    segment,
    spec_of_card,
    weigh_lesion,
)
from models.tasks import HCC
from training.data.readers import CaseRecord, load_case, read_hcc_manifest
from training.data.synth_hcc import run_jobs
from training.metrics import bootstrap_interval
from training.serialization import json_safe

log = logging.getLogger(__name__)


class SegmenterRunner:
    """An exported segmenter (NAME.onnx with its card NAME.json): one ONNX Runtime session
    per stage, each a `models.segmenter.Predictor`."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        card = json.loads(self.path.with_suffix(".json").read_text())
        self.spec = spec_of_card(card)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.predictors: dict[StageName, Predictor] = {}
        for stage in self.spec.stages:
            session = ort.InferenceSession(
                str(self.path.parent / card["stages"][stage]["onnx_file"]),
                options,
                providers=["CPUExecutionProvider"],
            )
            self.predictors[stage] = _predictor(session)


def _predictor(session: Any) -> Predictor:
    return lambda window: torch.from_numpy(session.run(["logits"], {"image": window.numpy()})[0])


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty."""
    total = int(predicted.sum()) + int(truth.sum())
    return 2.0 * float(np.logical_and(predicted, truth).sum()) / total if total else float("nan")


_CONNECTED = ndimage.generate_binary_structure(3, 3)


def lesion_conspicuity(ct: np.ndarray, lesion: np.ndarray, organ: np.ndarray) -> tuple[float, float]:
    """How far a lesion stands out of the organ around it: (contrast in HU, contrast-to-noise).

    Contrast: the median of a 3-voxel organ shell around the lesion minus the median of the
    lesion's core (positive: darker than the organ, as HCC is in portal-venous CT). Noise:
    the shell's standard deviation (texture, vessels and noise together, as a reader sees
    them).
    """
    shell = ndimage.binary_dilation(lesion, _CONNECTED, iterations=3) & organ & ~lesion
    core = ndimage.binary_erosion(lesion, _CONNECTED)
    core = core if core.sum() >= 5 else lesion
    if not shell.any():
        return float("nan"), float("nan")
    contrast = float(np.median(ct[shell]) - np.median(ct[core]))
    noise = float(np.std(ct[shell]))
    return contrast, contrast / noise if noise > 0 else float("nan")


def score_case(
    predicted: np.ndarray,
    liver: np.ndarray | None,
    tumor: np.ndarray | None,
    grid: Grid,
    spec: SegmenterSpec,
    ct: np.ndarray | None = None,
) -> dict[str, Any]:
    """One case's numbers, predicted and true labels on the same (the scan's) grid; with the
    scan's `ct`, also how conspicuous the dominant lesion is (`lesion_conspicuity`)."""
    lesion_label = spec.label("lesion")
    voxel_ml = float(np.prod(grid.spacing)) / 1000.0
    true_organ = liver > 0 if liver is not None else np.zeros(predicted.shape, dtype=bool)
    true_lesion = tumor > 0 if tumor is not None else np.zeros(predicted.shape, dtype=bool)
    true_organ |= true_lesion
    pred_organ, pred_lesion = predicted > 0, predicted == lesion_label
    truth_parts, n_true = ndimage.label(true_lesion, _CONNECTED)
    pred_parts, n_pred = ndimage.label(pred_lesion, _CONNECTED)
    found, center_error, contrast, cnr, dominant_ml = None, None, None, None, None
    if n_true:
        largest = int(np.argmax(np.bincount(truth_parts.ravel())[1:])) + 1
        dominant = truth_parts == largest
        found = bool(np.any(pred_lesion[dominant]))
        dominant_ml = float(dominant.sum()) * voxel_ml
        if ct is not None:
            contrast, cnr = lesion_conspicuity(ct, dominant, true_organ)
        if n_pred:  # where the grader's crop goes (largest predicted) against where it should
            predicted_largest = int(np.argmax(np.bincount(pred_parts.ravel())[1:])) + 1
            centres = [
                np.argwhere(parts == k).mean(axis=0)
                for parts, k in ((truth_parts, largest), (pred_parts, predicted_largest))
            ]
            center_error = float(np.linalg.norm(grid.affine[:3, :3] @ (centres[0] - centres[1])))
    touching = set(np.unique(pred_parts[true_lesion]).tolist()) - {0}
    found_lesions = len(set(np.unique(truth_parts[pred_lesion]).tolist()) - {0})
    return {
        "organ_dice": dice(pred_organ, true_organ) if true_organ.any() else float("nan"),
        "lesion_dice": dice(pred_lesion, true_lesion) if n_true else float("nan"),
        "dominant_found": found,
        "dominant_ml": dominant_ml,
        "dominant_contrast_hu": contrast,
        "dominant_cnr": cnr,
        "center_error_mm": center_error,
        "false_lesions": n_pred - len(touching),
        "true_lesions": n_true,
        "found_lesions": found_lesions,
        "predicted_lesions": n_pred,
        "true_organ_ml": float(true_organ.sum()) * voxel_ml,
        "predicted_organ_ml": float(pred_organ.sum()) * voxel_ml,
        "true_lesion_ml": float(true_lesion.sum()) * voxel_ml,
        "predicted_lesion_ml": float(pred_lesion.sum()) * voxel_ml,
    }


_RUNNER: SegmenterRunner | None = None


def _evaluate_one(job: tuple[str, CaseRecord, str]) -> dict[str, Any]:
    """Worker: segment one case and score it (one runner per process)."""
    global _RUNNER
    model, record, cohort = job
    if _RUNNER is None or str(_RUNNER.path) != model:
        _RUNNER = SegmenterRunner(Path(model))
    runner = _RUNNER
    case = load_case(record)
    ct = reference_scan(case.volumes, runner.spec)
    result = segment(runner.predictors, case.volumes, runner.spec)
    target = grid_of(ct)
    predicted = labels_on_grid(result.probabilities, result.labels, result.grid, target)
    liver, tumor = case.masks.get("liver"), case.masks.get("tumor")
    row = score_case(
        predicted,
        liver.array if liver is not None else None,
        tumor.array if tumor is not None else None,
        target,
        runner.spec,
        ct.array,
    )
    row.update(cohort=cohort, case_id=record.case_id, **{k: v for k, v in record.meta.items() if k in _META})
    if record.label is not None:
        row["grade"] = HCC.classes[record.label]
    return row


_META = ("field", "phase", "dose", "spacing_x", "spacing_z")

# --------------------------------------------------------------------------- the lesion threshold

LESION_THRESHOLDS = (0.5, 0.4, 0.3, 0.2, 0.15, 0.1)


def _threshold_rows(job: tuple[str, CaseRecord]) -> list[dict[str, Any]]:
    """Worker: one validation case segmented once, scored at every candidate threshold on the
    labels' own (fine) grid."""
    global _RUNNER
    model, record = job
    if _RUNNER is None or str(_RUNNER.path) != model:
        _RUNNER = SegmenterRunner(Path(model))
    spec = replace(_RUNNER.spec, lesion_threshold=None)  # the network's own probabilities
    case = load_case(record)
    result = segment(_RUNNER.predictors, case.volumes, spec)
    liver, tumor = case.masks.get("liver"), case.masks.get("tumor")
    truth = [mask_on_grid(m, result.grid) if m is not None else None for m in (liver, tumor)]
    rows = []
    for threshold in LESION_THRESHOLDS:
        labels = labels_from_probabilities(weigh_lesion(result.probabilities, threshold), spec, result.grid)
        row = score_case(labels, truth[0], truth[1], result.grid, spec)
        rows.append({"threshold": threshold, "case_id": record.case_id, **row})
    return rows


def tune_lesion_threshold(
    model: Path, manifests: Sequence[Path], *, split: str = "val", workers: int | None = None
) -> dict[str, Any]:
    """The lesion threshold for `model`'s card, chosen on the `split` cases of `manifests`:
    the best lesion-wise F1 (ties: the higher threshold). A true lesion is found (recall)
    where a predicted component touches it; a predicted component is right (precision) where
    it touches a true one; both pooled over all cases, lesion-free livers included. Voxel
    Dice alone would pick the lowest threshold: it counts a false lesion in another case
    (or in a liver without any) nowhere. Returns the choice and, per threshold, F1, Dice,
    detection of the dominant lesion and false lesions a case."""
    records = [r for m in manifests for r in read_hcc_manifest(m) if r.split == split]
    if not records:
        raise ValueError(f"no {split} cases in {[str(m) for m in manifests]}")
    jobs = [(str(model), r) for r in records]
    per_case = run_jobs(_threshold_rows, jobs, workers, True, "threshold", spawn=True)
    rows = [row for case_rows in per_case for row in case_rows]
    table = []
    for threshold in LESION_THRESHOLDS:
        at = [r for r in rows if r["threshold"] == threshold]
        with_lesion = [r for r in at if r["true_lesions"] > 0]
        found = sum(r["found_lesions"] for r in at)
        missed = sum(r["true_lesions"] - r["found_lesions"] for r in at)
        false = sum(r["false_lesions"] for r in at)
        hits = sum(r["predicted_lesions"] - r["false_lesions"] for r in at)  # components on a lesion
        precision, recall = hits / max(hits + false, 1), found / max(found + missed, 1)
        lesion_free = [r for r in at if r["true_lesions"] == 0 and r["true_organ_ml"] > 0]
        dice_values = [r["lesion_dice"] for r in with_lesion]
        table.append(
            {
                "threshold": threshold,
                "lesion_f1": 2 * precision * recall / max(precision + recall, 1e-9),
                "lesion_precision": precision,
                "lesion_recall": recall,
                "lesions_found": found,
                "lesions_missed": missed,
                "false_lesions": false,
                "lesion_dice": float(np.median(dice_values)) if dice_values else None,
                "dominant_found": rate_ci(
                    sum(bool(r["dominant_found"]) for r in with_lesion), len(with_lesion)
                )["rate"],
                "false_lesions_per_case": false / len(at),
                "lesion_free_livers_given_a_lesion": sum(r["predicted_lesions"] > 0 for r in lesion_free),
                "lesion_free_livers": len(lesion_free),
            }
        )
    best = max(table, key=lambda t: (t["lesion_f1"], t["threshold"]))
    return {"threshold": best["threshold"], "split": split, "cases": len(records), "table": table}


def median_ci(values: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """Median and its 95 % percentile bootstrap interval (NaN values left out)."""
    finite = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if not len(finite):
        return {"median": None, "ci95": [None, None], "n": 0}
    lo, hi = bootstrap_interval(len(finite), lambda idx: float(np.median(finite[idx])), seed=seed)
    return {"median": float(np.median(finite)), "ci95": [lo, hi], "n": len(finite)}


def rate_ci(hits: int, n: int) -> dict[str, Any]:
    """A proportion and its 95 % Wilson score interval."""
    if n == 0:
        return {"rate": None, "ci95": [None, None], "n": 0}
    z, p = 1.96, hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"rate": p, "ci95": [max(centre - half, 0.0), min(centre + half, 1.0)], "n": n, "hits": hits}


def summarize_cohort(rows: list[dict[str, Any]]) -> dict[str, Any]:
    with_organ = [r for r in rows if r["true_organ_ml"] > 0]
    with_lesion = [r for r in rows if r["true_lesions"] > 0]
    lesion_free = [r for r in with_organ if r["true_lesions"] == 0]
    organ_free = [r for r in rows if r["true_organ_ml"] == 0]
    return {
        "cases": len(rows),
        "organ_dice": median_ci([r["organ_dice"] for r in with_organ]),
        "lesion_dice": median_ci([r["lesion_dice"] for r in with_lesion]),
        "dominant_lesion_found": rate_ci(
            sum(bool(r["dominant_found"]) for r in with_lesion), len(with_lesion)
        ),
        "lesion_free_cases_with_a_lesion": rate_ci(
            sum(r["predicted_lesions"] > 0 for r in lesion_free), len(lesion_free)
        ),
        "false_lesions_per_case": float(np.mean([r["false_lesions"] for r in rows])) if rows else None,
        "crop_centre_error_mm": median_ci([r["center_error_mm"] for r in with_lesion]),
        "dominant_found_vs_missed": {
            outcome: {
                key: median_ci([r[key] for r in with_lesion if bool(r["dominant_found"]) == hit])
                for key in ("dominant_ml", "dominant_contrast_hu", "dominant_cnr")
            }
            for outcome, hit in (("found", True), ("missed", False))
        },
        "organ_free_cases": len(organ_free),
        "organ_free_predicted_ml_max": max((r["predicted_organ_ml"] for r in organ_free), default=None),
    }


def evaluate_segmenter(
    model: Path,
    cohorts: dict[str, Path],
    out: Path,
    *,
    split: str | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Segment every case of each named cohort (only `split`, if given), score, and report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for name, manifest in cohorts.items():
        records = [r for r in read_hcc_manifest(manifest) if split is None or r.split == split]
        jobs += [(str(model), r, name) for r in records]
    rows = run_jobs(_evaluate_one, jobs, workers, True, "segment", spawn=True)
    report: dict[str, Any] = {
        "model": str(model),
        "split": split or "all",
        "cohorts": {name: str(path) for name, path in cohorts.items()},
        "summary": {name: summarize_cohort([r for r in rows if r["cohort"] == name]) for name in cohorts},
        "by_field": _by_key(rows, "field"),
        "by_phase": _by_key(rows, "phase"),
        "by_grade": _by_key(rows, "grade"),
        "cases": rows,
    }
    (out / "report.json").write_text(json.dumps(json_safe(report), indent=2, allow_nan=False))
    _plot(rows, list(cohorts), out / "dice.png")
    (out / "report.md").write_text(_markdown(report))
    return report


def _by_key(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    groups = sorted({str(r[key]) for r in rows if r.get(key)})
    return {g: summarize_cohort([r for r in rows if str(r.get(key)) == g]) for g in groups}


def _fmt(entry: dict[str, Any], key: str) -> str:
    value, (lo, hi) = entry.get(key), entry.get("ci95", [None, None])
    if value is None:
        return "-"
    return f"{value:.3f} ({lo:.3f}-{hi:.3f}), n={entry['n']}"


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Segmenter evaluation",
        "",
        f"Model `{report['model']}`, split `{report['split']}`. Scored on each scan's own grid. "
        "Medians with 95 % bootstrap intervals, rates with 95 % Wilson intervals. Synthetic data.",
        "",
        "| cohort | cases | organ Dice (median) | lesion Dice (median) | dominant lesion found | "
        "lesion-free cases given a lesion | organ-free cases: largest organ predicted |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in report["summary"].items():
        largest = s["organ_free_predicted_ml_max"]
        organ_free = "-" if largest is None else f"{largest:.0f} ml ({s['organ_free_cases']} cases)"
        cells = [
            _fmt(s["organ_dice"], "median"),
            _fmt(s["lesion_dice"], "median"),
            _fmt(s["dominant_lesion_found"], "rate"),
            _fmt(s["lesion_free_cases_with_a_lesion"], "rate"),
            organ_free,
        ]
        lines.append(f"| {name} | {s['cases']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The dominant lesion, found or missed (medians: its volume, its contrast to the liver "
        "around it, and that contrast over the liver's standard deviation there):",
        "",
        "| cohort | dominant lesion | cases | ml | contrast HU | contrast-to-noise |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in report["summary"].items():
        for outcome, m in s["dominant_found_vs_missed"].items():
            cells = [_fmt(m[key], "median").split(", n=")[0] for key in m]
            lines.append(f"| {name} | {outcome} | {m['dominant_ml']['n']} | " + " | ".join(cells) + " |")
    for title, key in (
        ("field of view", "by_field"),
        ("contrast phase", "by_phase"),
        ("grade", "by_grade"),
    ):
        if report.get(key):
            lines += [
                "",
                f"By {title}:",
                "",
                "| group | cases | organ Dice | lesion Dice | dominant found |",
                "|---|---|---|---|---|",
            ]
            for group, s in report[key].items():
                lines.append(
                    f"| {group} | {s['cases']} | {_fmt(s['organ_dice'], 'median')} | "
                    f"{_fmt(s['lesion_dice'], 'median')} | {_fmt(s['dominant_lesion_found'], 'rate')} |"
                )
    lines += ["", "![Dice by cohort](dice.png)", ""]
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], cohorts: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in (
        (axes[0], "organ_dice", "organ (liver) Dice"),
        (axes[1], "lesion_dice", "lesion Dice"),
    ):
        data = [[r[key] for r in rows if r["cohort"] == c and not math.isnan(r[key])] for c in cohorts]
        ax.boxplot([d or [np.nan] for d in data], tick_labels=cohorts)
        ax.set_title(title)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def card_summary(path: Path) -> dict[str, Any]:
    """The synthetic cohorts' summary of `path` (report.json), with the real-CT numbers of
    ``real-ct/real-ct.json`` beside it when `python -m training.real_ct` wrote them there."""
    report: dict[str, Any] = dict(json.loads(path.read_text())["summary"])
    real = path.parent / "real-ct" / "real-ct.json"
    if real.is_file():
        scans = json.loads(real.read_text())["scans"]
        keep = ("liver_dice", "predicted_liver_ml_whole_scan", "predicted_lesions_ml")
        report["real_ct"] = {name: {k: scan[k] for k in keep if k in scan} for name, scan in scans.items()}
    return report
