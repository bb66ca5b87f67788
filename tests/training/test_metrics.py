"""The AUC and its bootstrap intervals, against scikit-learn and on models of known quality."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from training.metrics import auc_ci, macro_auc, paired_auc_gain_ci, per_class_auc


def scored(n: int, signal: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three-class labels and probabilities whose true class is favoured by `signal`."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), labels] += signal
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probs


def test_per_class_auc_equals_scikit_learn_ties_included() -> None:
    labels, probs = scored(500, 1.0, seed=0)
    probs = np.round(probs, 1)  # many ties
    expected = [roc_auc_score(labels == c, probs[:, c]) for c in range(3)]
    assert per_class_auc(labels, probs) == pytest.approx(expected, abs=1e-12)


def test_a_class_absent_has_no_auc_and_a_binary_task_reads_the_positive_class() -> None:
    labels, probs = scored(200, 1.0, seed=1)
    labels[labels == 2] = 0
    assert math.isnan(per_class_auc(labels, probs)[2])
    binary = probs[:, :2] / probs[:, :2].sum(axis=1, keepdims=True)
    assert macro_auc(labels, binary) == pytest.approx(roc_auc_score(labels, binary[:, 1]))


def test_the_auc_interval_holds_the_estimate_and_narrows_with_more_cases() -> None:
    small, large = scored(200, 1.0, seed=2), scored(3200, 1.0, seed=2)
    widths = []
    for labels, probs in (small, large):
        low, high = auc_ci(labels, probs, n=300)
        assert low < macro_auc(labels, probs) < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2.5  # about 1/sqrt(16) = 1/4


def test_the_paired_gain_interval() -> None:
    labels, strong = scored(600, 2.0, seed=3)
    _, weak = scored(600, 0.0, seed=4)  # noise: its own labels are not these
    # The same predictions on both sides: no gain, whatever the resample.
    assert paired_auc_gain_ci(labels, [strong], [strong], n=200) == (0.0, 0.0)
    low, high = paired_auc_gain_ci(labels, [strong, strong], [weak], n=200)
    gain = macro_auc(labels, strong) - macro_auc(labels, weak)
    assert 0 < low < gain < high
    # Paired on the same resamples: swapping the sides mirrors the interval.
    assert paired_auc_gain_ci(labels, [weak], [strong, strong], n=200) == pytest.approx((-high, -low))
