"""How several teachers are mixed: one weight per teacher, from their validation AUC."""

from __future__ import annotations

import pytest

from training.config import TrainConfig
from training.train import mixing_weights


def student_config(weights: object) -> TrainConfig:
    return TrainConfig(
        task="hcc", role="student", data="m.csv", teachers=["pet.pt", "ct.pt"], teacher_weights=weights
    )


def test_each_teacher_weighs_its_validation_auc_above_chance() -> None:
    checkpoints = [{"val_auc": 1.0}, {"best_val_auc": 0.8}]
    assert mixing_weights(student_config("val_auc"), checkpoints) == pytest.approx([0.5, 0.3])
    # A teacher at chance gets no say; when none beats chance they are mixed equally.
    assert mixing_weights(student_config("val_auc"), [{"val_auc": 0.9}, {"val_auc": 0.45}]) == pytest.approx(
        [0.4, 0.0]
    )
    assert mixing_weights(student_config("val_auc"), [{"val_auc": 0.5}, {"val_auc": 0.4}]) == [1.0, 1.0]


def test_fixed_and_equal_weights_ignore_the_checkpoints() -> None:
    assert mixing_weights(student_config([2.0, 1.0]), [{}, {}]) == [2.0, 1.0]
    assert mixing_weights(student_config("equal"), [{"val_auc": 0.9}, {"val_auc": 0.6}]) == [1.0, 1.0]


def test_a_teacher_without_a_validation_auc_is_named() -> None:
    with pytest.raises(ValueError, match=r"ct\.pt"):
        mixing_weights(student_config("val_auc"), [{"val_auc": 0.9}, {}])


def test_an_unknown_rule_is_refused() -> None:
    # "view_auc" (weights per student subset) was tried and removed: reports/ablation-hcc-lesion.
    with pytest.raises(ValueError, match="teacher_weights"):
        student_config("view_auc")
