"""The segmenter's broad CT cohort: repeatable, anatomy where each field of view puts it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.data.readers import load_case, read_hcc_manifest
from training.data.synth_torso import generate_torso_case, write_torso_cohort


def test_a_case_is_the_same_whatever_else_is_drawn() -> None:
    first, again = generate_torso_case(3, 5, "head"), generate_torso_case(3, 5, "head")
    assert np.array_equal(first.ct, again.ct) and np.array_equal(first.affine, again.affine)
    assert not np.array_equal(first.ct, generate_torso_case(3, 6, "head").ct)


@pytest.mark.parametrize("field_of_view", ["head", "pelvis"])
def test_a_head_or_a_pelvis_holds_no_liver(field_of_view: str) -> None:
    case = generate_torso_case(0, 1, field_of_view)
    assert case.params["field"] == field_of_view
    assert not case.liver.any() and not case.tumor.any() and case.grade == ""
    assert case.ct.dtype == np.int16 and case.ct.min() < -900  # air around the body


def test_an_abdomen_holds_a_liver_in_hounsfield_units_with_its_lesions_inside() -> None:
    case = generate_torso_case(0, 2, "abdomen")
    spacing = np.abs(np.diag(case.affine)[:3])
    liver_ml = case.liver.sum() * np.prod(spacing) / 1000.0
    assert 600 < liver_ml < 3500, liver_ml  # an adult liver, perhaps cut by the scan
    assert np.all(case.liver[case.tumor > 0] == 1)  # the liver mask includes its lesions
    parenchyma = case.ct[(case.liver > 0) & (case.tumor == 0)]
    assert 20 < np.median(parenchyma) < 200  # soft tissue, whatever the contrast phase
    if case.tumor.any():
        assert case.grade in ("well", "moderate", "poor")


def test_unknown_field_of_view_is_refused() -> None:
    with pytest.raises(ValueError, match="field_of_view must be one of"):
        generate_torso_case(0, 0, "knee")


def test_the_cohort_is_read_as_an_hcc_manifest_with_its_draws(tmp_path: Path) -> None:
    manifest = write_torso_cohort(tmp_path, 2, seed=4, fields=["head", "chest"], workers=1, progress=False)
    records = read_hcc_manifest(manifest)
    assert [r.case_id for r in records] == ["torso0000", "torso0001"]
    assert [r.meta["field"] for r in records] == ["head", "chest"]
    for record in records:
        assert record.meta["phase"]
        case = load_case(record)
        assert set(case.masks) == {"liver", "tumor"}
        assert case.masks["liver"].array.shape == case.volumes["ct"].array.shape
