"""Classification metrics shared by model selection and evaluation reports."""

from __future__ import annotations

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
