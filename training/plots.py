"""Figures of an evaluation report: ROC curves, decision curves, reliability, dose sweep.

Each function draws one PNG with matplotlib's Agg backend (no display needed) and returns
its path, so reports can link it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from sklearn.metrics import roc_curve

from training.metrics import reliability_bins

matplotlib.use("Agg")  # before pyplot: no display is needed
import matplotlib.pyplot as plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_roc(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], path: Path) -> Path:
    """One-vs-rest ROC curve of every class present in `labels`."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for index, name in enumerate(classes):
        positive = labels == index
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, probs[:, index])
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax.set(
        xlabel="1 - specificity", ylabel="sensitivity", title="ROC (one vs rest)", xlim=(0, 1), ylim=(0, 1)
    )
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_decision_curve(curve: Mapping[str, Any], path: Path) -> Path:
    """Net benefit of the model against treating all and treating none."""
    fig, ax = plt.subplots(figsize=(6, 4))
    t = np.asarray(curve["thresholds"])
    ax.plot(t, curve["model"], label="model")
    ax.plot(t, curve["treat_all"], label="treat all", linestyle="--")
    ax.plot(t, curve["treat_none"], label="treat none", color="grey", linestyle=":")
    top = max(max(curve["model"]), max(curve["treat_all"]), 0.01)
    ax.set(
        xlabel="threshold probability",
        ylabel="net benefit",
        title=f"Decision curve: {curve['class']}",
        ylim=(-0.05 * top - 0.01, top * 1.1),
    )
    ax.legend()
    return _save(fig, path)


def plot_reliability(labels: np.ndarray, probs: np.ndarray, path: Path, bins: int = 10) -> Path:
    """Accuracy against confidence of the predicted class, with the count per bin."""
    centres, accuracy, _ = reliability_bins(labels, probs, bins)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    ax.plot(centres, accuracy, marker="o", label="model")
    ax.set(xlabel="confidence", ylabel="accuracy", title="Reliability", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    return _save(fig, path)


def plot_sweep(values: Mapping[str, Mapping[str, Any]], xlabel: str, title: str, path: Path) -> Path:
    """Macro AUC with its 95 % CI for each setting (dose level, modality subset)."""
    names = list(values)
    auc = np.array([values[n]["macro_auc"] if values[n]["macro_auc"] is not None else np.nan for n in names])
    ci = np.array([values[n].get("macro_auc_ci95") or [np.nan, np.nan] for n in names], dtype=float)
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(names)), 4))
    x = np.arange(len(names))
    ax.errorbar(x, auc, yerr=[auc - ci[:, 0], ci[:, 1] - auc], fmt="o", capsize=4)
    ax.axhline(0.5, color="grey", linestyle=":")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set(xlabel=xlabel, ylabel="macro AUC", title=title, ylim=(0.3, 1.02))
    return _save(fig, path)
