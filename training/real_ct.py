"""The segmenter on real CT: TotalSegmentator's labelled abdomen and the trunk it was cut from.

    python -m training.real_ct --model app/demo_models/hcc_segmenter.onnx --out reports/segmenter/real-ct

Synthetic Dice says how well the segmenter learnt its phantoms; this says whether that
carries over to a person. Three scans, each segmented whole as the service does:

- ``slab``: ``example_ct_sm.nii.gz`` (30 slices of 3 mm at liver level) against its liver
  label; a liver the slab cuts at both ends;
- ``trunk``: ``example_ct.nii.gz`` (112 slices, chest to pelvis), scored on the slices the
  slab's labels cover (the rest of the trunk has no labels): is the liver still found when
  lungs, heart and pelvis are in the field of view?
- ``chest``: ``aorta_report/example_ct.nii.gz`` (a contrast-enhanced chest CT, 1.5 mm, no
  liver labels): what does the segmenter call liver where the heart is full of contrast?

Beside the served mask (one liver: the largest component), each scan lists the components
of the coarse stage's raw liver over 5 ml with their place against the body: a liver that
is one piece on the patient's right, with nothing else over 5 ml, is what the served mask
should have been chosen from. No tumour is known in any scan, so every predicted lesion
voxel is a false alarm, reported as a share of the liver. `real-ct.json` has the numbers,
`real-ct.png` the masks over the CT.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from models.contract import Volume, foreground_center, grid_of, resample
from models.segmenter import labels_on_grid, only_scanned, segment, segmenter_input, sliding_window
from training.data.readers import load_volume
from training.data.reference_ct import LIVER_LABEL, reference_files
from training.segmentation_report import SegmenterRunner, dice


def _liver_truth_on(scan: Volume, labels: Volume) -> tuple[np.ndarray, np.ndarray]:
    """The labelled liver on `scan`'s grid, and which of its voxels the labels cover."""
    grid = grid_of(scan)
    liver = resample((labels.array == LIVER_LABEL).astype(np.float32), labels.affine, grid, order=0) > 0.5
    covered = resample(np.ones(labels.array.shape, np.float32), labels.affine, grid, order=0) > 0.5
    return liver, covered


def labels_on_trunk(labels: Volume, slab: Volume, trunk: Volume) -> Volume:
    """The slab's labels placed on the trunk. The slab is slices z0.. of the trunk, but its
    header gives it the trunk's origin; z0 is found from the pixels themselves."""
    depth = slab.array.shape[2]
    for z0 in range(trunk.array.shape[2] - depth + 1):
        if np.array_equal(trunk.array[:, :, z0 : z0 + depth], slab.array):
            affine = trunk.affine.copy()
            affine[:3, 3] = trunk.affine[:3, :3] @ np.array([0.0, 0.0, z0]) + trunk.affine[:3, 3]
            return Volume(labels.array, affine)
    raise ValueError("example_ct_sm is no run of example_ct's slices: the labels cannot be placed")


def raw_liver_components(runner: SegmenterRunner, scan: Volume, min_ml: float = 5.0) -> list[dict[str, Any]]:
    """The coarse stage's liver before the largest piece is kept: each 26-connected component
    over `min_ml`, largest first, with its RAS+ centre and its offset from the body's centre
    (mm; +x is the patient's right, +z the head). The coarse stage runs again here (`segment`
    keeps only the cleaned labels): a second pass a report can afford and serving need not."""
    overview = segmenter_input(scan, runner.spec)
    coarse = sliding_window(runner.predictors["coarse"], overview.image, runner.spec.coarse)
    coarse = only_scanned(coarse, overview.scanned)
    organ = np.argmax(coarse, axis=0) > 0
    components, count = ndimage.label(organ, structure=np.ones((3, 3, 3)))
    voxel_ml = float(np.prod(overview.grid.spacing)) / 1000.0
    body = foreground_center(scan, "ct")
    found = []
    for index in range(1, count + 1):
        voxels = np.argwhere(components == index)
        ml = len(voxels) * voxel_ml
        if ml < min_ml:
            continue
        xyz = voxels.mean(axis=0)[::-1]  # (D, H, W) -> (x, y, z)
        centre = overview.grid.affine[:3, :3] @ xyz + overview.grid.affine[:3, 3]
        offset = centre - body
        found.append(
            {
                "ml": round(ml, 1),
                "center_mm": centre.round(1).tolist(),
                "from_body_center_mm": offset.round(1).tolist(),
            }
        )
    return sorted(found, key=lambda c: -c["ml"])


def score_scan(runner: SegmenterRunner, scan: Volume, labels: Volume | None) -> dict[str, Any]:
    result = segment(runner.predictors, scan, runner.spec)
    predicted = labels_on_grid(result.probabilities, result.labels, result.grid, grid_of(scan))
    voxel_ml = float(np.prod(scan.spacing)) / 1000.0
    found = {
        "shape": list(scan.array.shape),
        "predicted_liver_ml_whole_scan": float((predicted > 0).sum()) * voxel_ml,
        "predicted_lesions_ml": [round(v, 2) for v in result.summary.lesions_ml],
        "raw_liver_components": raw_liver_components(runner, scan),
        "cut": list(result.summary.organ_cut),
        "_predicted": predicted,
    }
    if labels is None:
        return {**found, "_truth": np.zeros(predicted.shape, dtype=bool)}
    truth, covered = _liver_truth_on(scan, labels)
    organ = (predicted > 0) & covered
    lesion = (predicted == runner.spec.label("lesion")) & covered
    return {
        **found,
        "liver_dice": dice(organ, truth),
        "true_liver_ml": float(truth.sum()) * voxel_ml,
        "predicted_liver_ml_in_labelled_slices": float(organ.sum()) * voxel_ml,
        "lesion_share_of_true_liver": float((lesion & truth).sum()) / max(float(truth.sum()), 1.0),
        "_truth": truth,
    }


def _plot(scans: dict[str, tuple[Volume, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(scans), 2, figsize=(10, 5 * len(scans)), squeeze=False)
    for row, (name, (scan, scores)) in enumerate(scans.items()):
        truth, predicted = scores["_truth"], scores["_predicted"]
        spacing = scan.spacing
        shown = truth if truth.any() else predicted > 0
        z = int(np.argmax(shown.sum(axis=(0, 1)))) if shown.any() else scan.array.shape[2] // 2
        y = int(np.argmax(shown.sum(axis=(0, 2)))) if shown.any() else scan.array.shape[1] // 2
        views = (
            ("axial", scan.array[:, :, z], truth[:, :, z], predicted[:, :, z], spacing[1] / spacing[0]),
            ("coronal", scan.array[:, y, :], truth[:, y, :], predicted[:, y, :], spacing[2] / spacing[0]),
        )
        for ax, (plane, image, true, pred) in zip(axes[row], [v[:4] for v in views], strict=True):
            aspect = dict((v[0], v[4]) for v in views)[plane]
            ax.imshow(np.rot90(image), cmap="gray", vmin=-160, vmax=240, aspect=aspect)
            for mask, colour in ((true, "red"), (pred > 0, "lime"), (pred == 2, "yellow")):
                if mask.any():
                    ax.contour(np.rot90(mask.astype(float)), [0.5], colors=colour, linewidths=1)
            score = f"liver Dice {scores['liver_dice']:.2f}" if "liver_dice" in scores else "no liver labels"
            ax.set_title(f"{name} {plane}: {score}")
            ax.axis("off")
    figure.suptitle("red: labelled liver; green: predicted liver; yellow: predicted lesion")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def real_ct_report(model: Path, out: Path, cache: Path | None = None) -> dict[str, Any]:
    folder = reference_files(cache)
    runner = SegmenterRunner(model, threads=2)
    labels = load_volume(folder / "example_seg.nii.gz")
    slab, trunk, chest = (
        load_volume(folder / f)
        for f in ("example_ct_sm.nii.gz", "example_ct.nii.gz", "aorta_report/example_ct.nii.gz")
    )
    scored = {
        "slab": (slab, score_scan(runner, slab, labels)),
        "trunk": (trunk, score_scan(runner, trunk, labels_on_trunk(labels, slab, trunk))),
        "chest": (chest, score_scan(runner, chest, None)),
    }
    out.mkdir(parents=True, exist_ok=True)
    _plot(scored, out / "real-ct.png")
    report = {
        "model": str(model),
        "source": "TotalSegmentator 2.18.0 tests/reference_files (real CT, no known tumour)",
        "scans": {
            name: {k: v for k, v in s.items() if not k.startswith("_")} for name, (_, s) in scored.items()
        },
    }
    (out / "real-ct.json").write_text(json.dumps(report, indent=2))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=Path("app/demo_models/hcc_segmenter.onnx"))
    parser.add_argument("--out", type=Path, default=Path("reports/segmenter/real-ct"))
    args = parser.parse_args()
    report = real_ct_report(args.model, args.out)
    print(json.dumps(report["scans"], indent=2))


if __name__ == "__main__":
    main()
