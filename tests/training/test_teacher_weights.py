"""How several teachers are mixed: per case, by what the student is given."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from models import get_task
from training.config import TrainConfig
from training.losses import combine_teachers, rgd_loss
from training.train import case_weights, teacher_weight_table

HCC = get_task("hcc")
SUBSETS = torch.tensor([[1.0 if m in s else 0.0 for m in HCC.modalities] for s in HCC.allowed_subsets()])


class ReadsOneChannel(nn.Module):
    """A stand-in teacher whose logits are the mean of one input channel times a class code:
    it knows the grade exactly when that channel is given, nothing when it is zeroed."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.channel = channel

    def forward(self, image: torch.Tensor, present: torch.Tensor) -> SimpleNamespace:
        value = image[:, self.channel].mean(dim=(1, 2, 3))  # the label + 1, or 0 when dropped
        codes = torch.arange(1, HCC.num_classes + 1, dtype=torch.float32)
        return SimpleNamespace(logits=-10 * (value[:, None] - codes[None]).abs())


def validation_loader(cases: int = 24) -> DataLoader:
    """Cases whose PET-FDG channel holds the label exactly and whose CT holds it with noise."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(cases) % HCC.num_classes
    items = []
    for label in labels:
        image = torch.zeros(len(HCC.modalities), 2, 2, 2)
        image[1] = label + 1.0
        image[0] = label + 1.0 + 1.5 * torch.randn((), generator=g)
        items.append({"image": image, "present": torch.ones(len(HCC.modalities)), "label": label})
    return DataLoader(items, batch_size=8)


def student_config(weights: object) -> TrainConfig:
    return TrainConfig(
        task="hcc", role="student", data="m.csv", teachers=["pet.pt", "ct.pt"], teacher_weights=weights
    )


def test_a_teacher_counts_only_where_the_student_sees_what_it_knows() -> None:
    pet_teacher, ct_teacher = ReadsOneChannel(1), ReadsOneChannel(0)
    checkpoints = [{"val_auc": 1.0}, {"val_auc": 0.8}]
    table = teacher_weight_table(
        student_config("view_auc"),
        checkpoints,
        [pet_teacher, ct_teacher],
        SUBSETS,
        validation_loader(),
        "cpu",
    )
    rows = {subset: row.tolist() for subset, row in zip(HCC.allowed_subsets(), table, strict=True)}
    # Given FDG, the PET teacher is perfect (weight 0.5); on CT alone it is at chance: no say.
    assert rows[("ct", "pet_fdg")][0] == pytest.approx(0.5)
    assert rows[("ct", "pet_act")][0] == 0.0
    assert rows[("ct",)][0] == 0.0
    # The CT teacher reads CT in every subset: the same weight, above 0 and below the PET one.
    ct_weights = {row[1] for row in rows.values()}
    assert len(ct_weights) == 1 and 0.0 < ct_weights.pop() < 0.5
    # The other rules give every subset one row.
    by_val_auc = teacher_weight_table(
        student_config("val_auc"), checkpoints, [pet_teacher, ct_teacher], SUBSETS, validation_loader(), "cpu"
    )
    assert torch.allclose(by_val_auc, torch.tensor([[0.5, 0.3]] * len(SUBSETS)))
    fixed = teacher_weight_table(
        student_config([2.0, 1.0]), checkpoints, [], SUBSETS, validation_loader(), "cpu"
    )
    assert torch.allclose(fixed, torch.tensor([[2.0, 1.0]] * len(SUBSETS)))


def test_measuring_a_teacher_leaves_it_in_eval_mode() -> None:
    teacher = ReadsOneChannel(0).eval()
    teacher_weight_table(
        student_config("view_auc"), [{}, {}], [teacher, teacher], SUBSETS, validation_loader(), "cpu"
    )
    assert not teacher.training  # evaluate() restores the mode it found


def test_each_case_gets_the_row_of_the_largest_subset_it_gives() -> None:
    table = torch.arange(len(SUBSETS) * 2, dtype=torch.float32).reshape(len(SUBSETS), 2)
    present = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    rows = case_weights(present, SUBSETS, table)
    assert torch.equal(rows[0], table[0])  # everything
    assert torch.equal(rows[1], table[3])  # CT alone
    assert torch.equal(rows[2], table[2])  # CT + acetate
    assert torch.equal(rows[3], table.mean(0))  # no allowed subset (no CT): the mean row


def test_per_case_weights_mix_each_case_on_its_own() -> None:
    a, b = torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.tensor([[0.0, 2.0], [0.0, 2.0]])
    mixed = combine_teachers([a, b], 1.0, torch.tensor([[1.0, 0.0], [1.0, 3.0]]))
    assert torch.allclose(mixed[0], F.softmax(a[0], 0))
    assert torch.allclose(mixed[1], 0.25 * F.softmax(a[1], 0) + 0.75 * F.softmax(b[1], 0))
    with pytest.raises(ValueError, match="non-negative"):
        combine_teachers([a, b], 1.0, torch.tensor([[1.0, 0.0], [0.0, 0.0]]))


def test_region_graph_loss_scales_each_case_by_its_weight() -> None:
    torch.manual_seed(0)
    points = torch.randn(2, 2, 4, 3)
    teacher, student = torch.cdist(points[0], points[0]), torch.cdist(points[1], points[1])
    regions = torch.full((2, 4), 0.25)
    each = [float(rgd_loss(teacher[i : i + 1], student[i : i + 1], regions[i : i + 1])) for i in range(2)]
    weighted = float(rgd_loss(teacher, student, regions, torch.tensor([0.0, 1.0])))
    assert each[1] > 0
    assert weighted == pytest.approx(each[1] / 2)  # the mean over both cases, the first weighing 0
