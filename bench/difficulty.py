"""How hard are the synthetic benchmarks? Cross-validated AUC of hand-made features.

HCC: the rules say CT separates grades only moderately and PET strongly. BraTS: each sequence
sees some of the grade's signs, all four together more (`docs/benchmark.md`). This script
measures both: a logistic regression on a few radiomics-like features (true masks given),
5-fold stratified cross-validation, macro one-vs-rest AUC. Prints JSON.

    python -m bench.difficulty --cases 200 --seed 0 [--workers 2] [--shape 64 64 32] [--quick]

`--quick` (for CI): 40 small cases of each, one worker; its AUCs are rough.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from training.data.synth_brats import MODALITIES, generate_brats_case
from training.data.synth_hcc import HccCase, generate_hcc_case, run_jobs

CT_FEATURES = ("log_volume", "contrast_hu", "tumour_std_hu", "necrotic_fraction", "irregularity", "n_lesions")
PET_FEATURES = ("fdg_tlr", "act_tlr", "fdg_max_ratio")


def ct_features(case: HccCase) -> dict[str, float]:
    """Radiomics-like CT descriptors of the lesion, given the masks."""
    ct, tumor, liver = case.volumes["ct"], case.masks["tumor"] > 0, case.masks["liver"] > 0
    parenchyma = ct[liver & ~tumor]
    lesion = ct[tumor]
    voxel_ml = float(np.prod(np.linalg.norm(case.affines["ct"][:3, :3], axis=0))) / 1000.0
    boundary = tumor & ~ndimage.binary_erosion(tumor)
    return {
        "log_volume": float(np.log(tumor.sum() * voxel_ml + 1e-3)),
        "contrast_hu": float(np.median(parenchyma) - np.median(lesion)),
        "tumour_std_hu": float(lesion.std()),
        "necrotic_fraction": float((lesion < np.median(parenchyma) - 60).mean()),
        # Boundary voxels per volume^(2/3): larger for ragged margins (scale-free).
        "irregularity": float(boundary.sum() / max(tumor.sum(), 1) ** (2 / 3)),
        "n_lesions": float(ndimage.label(tumor)[1]),
    }


def pet_features(case: HccCase) -> dict[str, float]:
    """Tumour-to-liver uptake ratios, sampled at the CT voxels (as a reader of fused PET/CT)."""
    ct_affine = case.affines["ct"]
    tumor, liver = case.masks["tumor"] > 0, case.masks["liver"] > 0
    out = {}
    for tracer, key in (("pet_fdg", "fdg"), ("pet_act", "act")):
        to_pet = np.linalg.inv(case.affines[tracer]) @ ct_affine
        on_ct = ndimage.affine_transform(
            case.volumes[tracer], to_pet[:3, :3], offset=to_pet[:3, 3], output_shape=tumor.shape, order=1
        )
        liver_mean = float(on_ct[liver & ~tumor].mean())
        out[f"{key}_tlr"] = float(on_ct[tumor].mean()) / liver_mean
        if key == "fdg":
            out["fdg_max_ratio"] = float(on_ct[tumor].max()) / liver_mean
    return out


def _features(job: tuple) -> tuple[int, dict[str, float]]:
    seed, index, shape = job
    case = generate_hcc_case(seed, index, shape=shape)
    return case.label, {**ct_features(case), **pet_features(case)}


BRATS_SHAPE, BRATS_SPACING_MM = (96, 96, 64), 2.5
"""The BraTS grid the shipped demo student is trained on (`scripts/build_demo_models.sh`)."""


def brats_features(seg: np.ndarray, images: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """What a reader of each sequence can measure, given the true labels: T1ce shows the
    enhancing tumour, T2 and FLAIR the edema; every sequence shows the core and its necrosis
    (dark on T1ce: below 0.6 of the core's median). Log volumes in voxels; mass effect is not
    measured, so the numbers are a little below what the images hold."""
    core = (seg == 1) | (seg == 4)
    dark = 0.6 * np.median(images["t1ce"][core]) if core.any() else 0.0
    necrosis = (seg == 1) & (images["t1ce"] < dark)
    log = {
        name: float(np.log1p(mask.sum()))
        for name, mask in (
            ("core", core),
            ("necrosis", necrosis),
            ("enhancing", seg == 4),
            ("edema", seg == 2),
        )
    }
    seen = {
        "t1": ("core", "necrosis"),
        "t1ce": ("core", "necrosis", "enhancing"),
        "t2": ("core", "necrosis", "edema"),
        "flair": ("core", "necrosis", "edema"),
    }
    return {m: {name: log[name] for name in seen[m]} for m in MODALITIES}


def _brats_features(job: tuple) -> tuple[int, dict[str, dict[str, float]]]:
    seed, index, shape, spacing = job
    grade, images, seg, _ = generate_brats_case(seed, index, shape=shape, spacing=spacing, lgg_fraction=0.5)
    return int(grade == "HGG"), brats_features(seg, images)


def brats_difficulty(
    cases: int, seed: int, workers: int | None, shape: tuple[int, ...], spacing: float
) -> dict:
    """AUC and balanced accuracy of each sequence's features, and of all four's, on a balanced cohort."""
    jobs = [(seed, i, shape, spacing) for i in range(cases)]
    results = run_jobs(_brats_features, jobs, workers, progress=False, desc="brats features")
    y = np.array([label for label, _ in results])
    columns = {m: np.array([list(f[m].values()) for _, f in results]) for m in MODALITIES}
    columns["all"] = np.array([[v for m in MODALITIES for v in f[m].values()] for _, f in results])
    scores = {name: cv_scores(x, y, seed) for name, x in columns.items()}
    return {
        "cases": cases,
        "grid": {"shape": list(shape), "spacing_mm": spacing},
        "grade_counts": {"LGG": int((y == 0).sum()), "HGG": int((y == 1).sum())},
        "auc": {name: round(auc, 3) for name, (auc, _) in scores.items()},
        "balanced_accuracy": {name: round(bacc, 3) for name, (_, bacc) in scores.items()},
    }


def cv_scores(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[float, float]:
    """Binary AUC and balanced accuracy (at 0.5) of cross-validated logistic regression."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    hgg = cross_val_predict(model, x, y, cv=folds, method="predict_proba")[:, 1]
    balanced = 0.5 * (float(np.mean(hgg[y == 1] > 0.5)) + float(np.mean(hgg[y == 0] <= 0.5)))
    return float(roc_auc_score(y, hgg)), balanced


def cv_auc(x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """Macro one-vs-rest AUC of cross-validated logistic-regression probabilities."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    proba = cross_val_predict(model, x, y, cv=folds, method="predict_proba")
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--shape", type=int, nargs=3, default=None, help="CT grid (default 128 128 64)")
    parser.add_argument("--quick", action="store_true", help="40 small cases, one worker (for CI)")
    args = parser.parse_args()
    if args.quick:
        args.cases, args.shape, args.workers = 40, [48, 48, 24], 1
    shape = tuple(args.shape) if args.shape else None
    start = time.perf_counter()
    jobs = [(args.seed, i, shape) for i in range(args.cases)]
    results = run_jobs(_features, jobs, args.workers, progress=False, desc="features")
    y = np.array([label for label, _ in results])
    table = {name: np.array([f[name] for _, f in results]) for name in CT_FEATURES + PET_FEATURES}
    x_ct = np.stack([table[n] for n in CT_FEATURES], axis=1)
    x_pet = np.stack([table[n] for n in PET_FEATURES], axis=1)
    report = {
        "cases": args.cases,
        "seed": args.seed,
        "quick": args.quick,
        "shape": list(shape) if shape else "default (128, 128, 64)",
        "grade_counts": {g: int((y == i).sum()) for i, g in enumerate(("well", "moderate", "poor"))},
        "macro_ovr_auc": {
            "ct": round(cv_auc(x_ct, y, args.seed), 3),
            "pet": round(cv_auc(x_pet, y, args.seed), 3),
            "ct+pet": round(cv_auc(np.hstack([x_ct, x_pet]), y, args.seed), 3),
        },
        "single_feature_auc_ct": {n: round(cv_auc(table[n][:, None], y, args.seed), 3) for n in CT_FEATURES},
        "brats": brats_difficulty(
            args.cases,
            args.seed,
            args.workers,
            (40, 40, 28) if args.quick else BRATS_SHAPE,
            6.0 if args.quick else BRATS_SPACING_MM,
        ),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
