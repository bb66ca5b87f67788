"""A cohort's masks as the segmenter draws them: what a grader behind it is trained on.

At serving, the lesion grid's crop and its regions come from the segmenter's mask, not from
a true one (DESIGN.md, *Localize, then grade*). `segment_cohort` segments every case of an
HCC manifest as the service does (`models.segmenter.segment`, through the exported ONNX
file, the labels brought back onto the CT's grid by `labels_on_grid`) and writes a manifest
of the same cases whose `liver_mask` and `tumor_mask` are the segmenter's, so every trainer
and report reads it unchanged.

A case where the segmenter finds no lesion is answered `no-lesion` at serving and never
graded; it keeps its true masks here (`mask_source` = `truth`), so the grader still meets
the grades the segmenter misses most (the faint well-differentiated lesions,
`reports/segmenter/`) rather than learning a class prior without them.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from models.contract import grid_of
from models.segmenter import labels_on_grid, segment
from training.data.phantom import write_nifti
from training.data.readers import HCC_MASK_COLUMNS, HCC_MODALITY_COLUMNS, load_volume, read_hcc_manifest
from training.data.synth_hcc import run_jobs
from training.segmentation_report import SegmenterRunner

_RUNNER: SegmenterRunner | None = None


def _segment_one(job: tuple[str, str, Path, Path]) -> dict[str, Any]:
    """Worker: one case's predicted masks written under `out`; what they hold."""
    global _RUNNER
    model, case_id, ct_path, out = job
    if _RUNNER is None or str(_RUNNER.path) != model:
        _RUNNER = SegmenterRunner(Path(model))
    ct = load_volume(ct_path, case_id)
    result = segment(_RUNNER.predictors, ct, _RUNNER.spec)
    labels = labels_on_grid(result.probabilities, result.labels, result.grid, grid_of(ct))
    lesion = labels == _RUNNER.spec.label("lesion")
    folder = out / case_id
    folder.mkdir(parents=True, exist_ok=True)
    write_nifti(folder / "liver.nii.gz", (labels > 0).astype(np.uint8), ct.affine)
    write_nifti(folder / "tumor.nii.gz", lesion.astype(np.uint8), ct.affine)
    voxel_ml = float(np.prod(grid_of(ct).spacing)) / 1000.0
    return {"lesion_ml": float(lesion.sum()) * voxel_ml, "liver_ml": float((labels > 0).sum()) * voxel_ml}


def segment_cohort(model: Path, manifest: Path, out: Path, *, workers: int | None = None) -> Path:
    """Segment every case of `manifest`; write `out`/manifest.csv with the segmenter's masks.

    The new manifest keeps every column of the old one (paths made absolute), replaces the
    mask columns with the segmenter's masks where it found a lesion, and adds `mask_source`
    (`model` or `truth`), `predicted_liver_ml` and `predicted_lesion_ml`.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = read_hcc_manifest(manifest)  # checks every file before an hour of segmenting
    jobs = [(str(model), r.case_id, r.paths["ct"], out) for r in records]
    results = run_jobs(_segment_one, jobs, workers, True, "segment", spawn=True)
    with Path(manifest).open(newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    path_columns = [*HCC_MODALITY_COLUMNS.values(), *HCC_MASK_COLUMNS.values()]
    added = ["mask_source", "predicted_liver_ml", "predicted_lesion_ml"]
    with (out / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*columns, *[c for c in added if c not in columns]])
        writer.writeheader()
        for row, record, found in zip(rows, records, results, strict=True):
            for column in path_columns:
                if row.get(column):
                    row[column] = str((Path(manifest).parent / row[column]).resolve())
            predicted = found["lesion_ml"] > 0
            if predicted:
                row["liver_mask"] = str((out / record.case_id / "liver.nii.gz").resolve())
                row["tumor_mask"] = str((out / record.case_id / "tumor.nii.gz").resolve())
            row["mask_source"] = "model" if predicted else "truth"
            row["predicted_liver_ml"] = f"{found['liver_ml']:.1f}"
            row["predicted_lesion_ml"] = f"{found['lesion_ml']:.2f}"
            writer.writerow(row)
    return out / "manifest.csv"
