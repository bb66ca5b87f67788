"""Classification metrics shared by model selection and evaluation reports."""

from __future__ import annotations

import itertools
import math

import numpy as np
from sklearn.metrics import roc_auc_score


def macro_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """One-vs-rest macro AUC over the classes present in `labels`; NaN when undefined.

    Binary tasks use the positive class's probability. A class absent from `labels` has no
    AUC and is left out of the average (small validation sets can miss a grade).
    """
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    aucs = [auc for auc in per_class_auc(labels, probs) if not math.isnan(auc)]
    if probs.shape[1] == 2:
        return aucs[1] if len(aucs) == 2 else float("nan")
    return float(np.mean(aucs)) if aucs else float("nan")


def per_class_auc(labels: np.ndarray, probs: np.ndarray) -> list[float]:
    """AUC of each class against the rest (NaN where a class is absent or alone)."""
    out = []
    for c in range(probs.shape[1]):
        positive = labels == c
        if positive.all() or not positive.any():
            out.append(float("nan"))
        else:
            out.append(float(roc_auc_score(positive, probs[:, c])))
    return out


def reliability_bins(
    labels: np.ndarray, probs: np.ndarray, bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per non-empty confidence bin: mean confidence, accuracy, and share of cases."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    rows = []
    for lo, hi in itertools.pairwise(edges):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            rows.append((confidence[inside].mean(), correct[inside].mean(), inside.mean()))
    out = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    return out[:, 0], out[:, 1], out[:, 2]


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """ECE of the top-class confidence over equal-width bins."""
    confidence, accuracy, share = reliability_bins(labels, probs, bins)
    return float(np.sum(share * np.abs(accuracy - confidence)))
