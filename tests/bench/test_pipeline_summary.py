"""bench.pipeline's arithmetic: AUC over graded cases and with the prior for the others,
label counts, the not-gradable share, the confusion matrix and the attention ratio."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bench.pipeline import CLASSES, attention_ratio, summarize


def _answer(label: str | None, reasons: tuple[str, ...] = ()) -> dict[str, Any]:
    probabilities = {c: (0.4 if c == label else 0.3) for c in CLASSES} if label else None
    return {
        "status": 200,
        "gradable": label is not None,
        "label": label,
        "probabilities": probabilities,
        "reasons": list(reasons),
        "mask": None,
        "model": "grader",
    }


def test_a_perfect_grader_with_one_case_not_graded() -> None:
    grades = ["well", "moderate", "poor", "well", "moderate", "poor"]
    rows = [
        {"case_id": str(i), "grade": g, "localized": _answer(g), "true_mask": _answer(g)}
        for i, g in enumerate(grades)
    ]
    rows[0]["localized"] = _answer(None, ("no-lesion",))
    summary = summarize(rows)
    localized, true_mask = summary["localized"], summary["true_mask"]
    assert localized["not_gradable"] == 1 and localized["reasons"] == {"no-lesion": 1}
    assert localized["macro_auc_graded"] == pytest.approx(1.0)
    # The prior (moderate 0.45) outranks the true moderate cases (0.4): counted, it costs AUC.
    assert localized["macro_auc_prior_for_not_gradable"] < 1.0
    assert localized["label_counts"] == {"None": 1, "moderate": 2, "poor": 2, "well": 1}
    assert localized["confusion_matrix"]["counts"] == [[1, 0, 0], [0, 2, 0], [0, 0, 2]]
    assert true_mask["macro_auc_graded"] == pytest.approx(1.0) and true_mask["largest_label_share"] == 2 / 6


def test_one_label_for_every_case_is_seen() -> None:
    rows = [
        {"case_id": str(i), "grade": g, "localized": _answer("moderate"), "true_mask": _answer("moderate")}
        for i, g in enumerate(["well", "moderate", "poor"])
    ]
    assert summarize(rows)["localized"]["largest_label_share"] == 1.0


def test_the_attention_ratio_compares_tumour_and_non_liver_voxels_inside_the_crop() -> None:
    shape = (10, 10, 10)
    liver = np.zeros(shape, dtype=bool)
    liver[2:8, 2:8, 2:8] = True
    tumour = np.zeros(shape, dtype=bool)
    tumour[4:6, 4:6, 4:6] = True
    attention = np.zeros(shape, dtype=np.float32)  # zero beyond the crop: not counted
    attention[1:9, 1:9, 1:9] = 0.1
    attention[tumour] = 0.6
    attention[liver & ~tumour] = 0.3  # the liver counts on neither side
    assert attention_ratio(attention, tumour, liver) == pytest.approx(6.0)
    off = np.zeros(shape, dtype=bool)
    off[0, 0, 0] = True  # beyond the crop: the grader never looked at this tumour
    assert attention_ratio(attention, off, liver) == 0.0
    assert attention_ratio(attention, tumour, np.ones(shape, dtype=bool)) is None


def test_the_median_attention_ratio_skips_answers_without_one() -> None:
    rows = [
        {"case_id": str(i), "grade": g, "localized": _answer(g), "true_mask": _answer(g)}
        for i, g in enumerate(["well", "moderate", "poor"])
    ]
    for row, ratio in zip(rows, (1.0, 4.0, None), strict=True):
        row["localized"]["attention_ratio"] = ratio
    localized = summarize(rows)["localized"]
    assert localized["attention_ratio_median"] == pytest.approx(2.5)
    assert localized["attention_ratio_at_least_3"] == 1 and localized["crop_missed_tumour"] == 0
    rows[2]["localized"]["attention_ratio"] = 0.0  # the crop missed the tumour: counted, as 0
    localized = summarize(rows)["localized"]
    assert localized["attention_ratio_median"] == pytest.approx(1.0) and localized["crop_missed_tumour"] == 1
    assert summarize(rows)["true_mask"]["attention_ratio_median"] is None
