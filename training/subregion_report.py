"""How well the BraTS segmenter draws a glioma's sub-regions, given all four sequences and
each one alone: Dice of the whole tumour, the tumour core and the enhancing tumour.

Every case is segmented as the service segments it (`models.segmenter.segment` through the
exported ONNX file, `SegmenterRunner`) and scored as BraTS scores, on the scan's own grid
(the prediction brought there by `labels_on_grid`), one nested region at a time. A region
absent from both the truth and the prediction scores 1, from one of them 0 (BraTS' rule:
some tumours have no enhancing part, and calling one there is a mistake). Medians come with
bootstrap intervals (`median_ci`). `report.md` has the table, `report.json` every case, and
`dice.png` the Dice of each region by the sequences given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from models.contract import grid_of
from models.segmenter import labels_on_grid, segment
from models.tasks import BRATS
from training.data.readers import CaseRecord, load_case, read_brats
from training.data.synth_hcc import run_jobs
from training.segmentation_report import SegmenterRunner, median_ci
from training.serialization import json_safe

ALL = "all"
"""The subset name of every sequence the segmenter reads."""


def region_dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """BraTS' Dice of one region: 1 when both are empty, 0 when only one is."""
    total = int(predicted.sum()) + int(truth.sum())
    return 2.0 * float(np.logical_and(predicted, truth).sum()) / total if total else 1.0


def score_subregions(
    predicted: np.ndarray, truth: np.ndarray, regions: tuple[str, ...], voxel_ml: float
) -> dict:
    """Dice and volumes (ml) of each nested region of two label-index maps on one grid."""
    row: dict[str, Any] = {}
    for k, name in enumerate(regions, start=1):
        row[f"{name}_dice"] = region_dice(predicted >= k, truth >= k)
        row[f"{name}_ml"] = float((truth >= k).sum()) * voxel_ml
        row[f"{name}_predicted_ml"] = float((predicted >= k).sum()) * voxel_ml
    return row


_RUNNER: SegmenterRunner | None = None


def _score_case(job: tuple[str, CaseRecord, list[str]]) -> list[dict[str, Any]]:
    """Worker: one case segmented with each subset of its sequences, scored."""
    global _RUNNER
    model, record, subsets = job
    if _RUNNER is None or str(_RUNNER.path) != model:
        _RUNNER = SegmenterRunner(Path(model))
    spec = _RUNNER.spec
    case = load_case(record)
    seg = case.masks["seg"]
    truth = spec.label_indices(np.rint(seg.array).astype(np.int64))  # BraTS 2017's 3 read as 1
    target = grid_of(seg)
    voxel_ml = float(np.prod(target.spacing)) / 1000.0
    rows = []
    for subset in subsets:
        names = spec.modalities if subset == ALL else tuple(subset.split("+"))
        result = segment(_RUNNER.predictors, {m: case.volumes[m] for m in names}, spec)
        predicted = labels_on_grid(result.probabilities, result.labels, result.grid, target)
        row = score_subregions(predicted, truth, spec.regions, voxel_ml)
        grade = BRATS.classes[record.label] if record.label is not None else None
        row.update(case_id=record.case_id, grade=grade, sequences=subset)
        rows.append(row)
    return rows


def evaluate_subregions(
    model: Path,
    root: Path,
    out: Path,
    *,
    subsets: list[str] | None = None,
    max_cases: int | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Segment every case of the BraTS cohort at `root` (the first `max_cases`) with each of
    `subsets` ("all", "t1ce", "t2+flair"...; default all four and each alone), score, report."""
    runner = SegmenterRunner(Path(model))
    subsets = subsets or [ALL, *runner.spec.modalities]
    records = [r for r in read_brats(root) if "seg" in r.mask_paths][:max_cases]
    if not records:
        raise ValueError(f"{root}: no BraTS case with a seg label map")
    jobs = [(str(model), r, subsets) for r in records]
    rows = [row for case in run_jobs(_score_case, jobs, workers, True, "segment", spawn=True) for row in case]
    regions = runner.spec.regions
    summary = {
        subset: {
            name: median_ci([r[f"{name}_dice"] for r in rows if r["sequences"] == subset]) for name in regions
        }
        for subset in subsets
    }
    report = {
        "model": str(model),
        "cohort": str(root),
        "cases": len(records),
        "regions": list(regions),
        "summary": summary,
        "rows": rows,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(json_safe(report), indent=2, allow_nan=False))
    (out / "report.md").write_text(_markdown(report))
    _plot(rows, subsets, regions, out / "dice.png")
    return report


def _markdown(report: dict[str, Any]) -> str:
    regions = report["regions"]
    lines = [
        "# BraTS sub-region segmenter",
        "",
        f"`{report['model']}` on {report['cases']} cases of `{report['cohort']}`, each segmented as the "
        "service does and scored on its own grid (BraTS' rule: a region absent from truth and "
        "prediction scores 1). Median Dice (95 % bootstrap interval).",
        "",
        "| sequences | " + " | ".join(r.replace("_", " ") for r in regions) + " |",
        "|---|" + "---|" * len(regions),
    ]
    for subset, scores in report["summary"].items():
        cells = []
        for name in regions:
            entry = scores[name]
            lo, hi = entry["ci95"]
            cells.append(f"{entry['median']:.3f} ({lo:.3f}-{hi:.3f})" if entry["median"] is not None else "-")
        lines.append(f"| {subset} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], subsets: list[str], regions: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(regions), figsize=(4 * len(regions), 3.6), sharey=True)
    for ax, name in zip(np.atleast_1d(axes), regions, strict=True):
        data = [[r[f"{name}_dice"] for r in rows if r["sequences"] == s] for s in subsets]
        ax.boxplot(data, showfliers=True)
        ax.set_xticks(range(1, len(subsets) + 1), subsets, rotation=30)
        ax.set_title(name.replace("_", " "))
        ax.set_ylim(0, 1.02)
        ax.grid(axis="y", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("Dice")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
