"""Distillation losses: hand-computed values, minima, GW invariances and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.losses import (
    attention_mask_loss,
    class_weights,
    combine_teachers,
    focal_loss,
    gw_discrepancy,
    kd_loss,
    rgd_loss,
    teacher_weights_from_auc,
)


def test_kd_loss_matches_a_hand_computed_value():
    student = torch.tensor([[1.0, 0.0, -1.0]])
    teacher = torch.tensor([[0.0, 2.0, 0.0]])
    target = torch.tensor([1])
    t, alpha = 2.0, 0.25
    p_t = [math.exp(0.0), math.exp(1.0), math.exp(0.0)]
    p_t = [v / sum(p_t) for v in p_t]
    p_s = [math.exp(0.5), math.exp(0.0), math.exp(-0.5)]
    p_s = [v / sum(p_s) for v in p_s]
    kl = sum(a * math.log(a / b) for a, b in zip(p_t, p_s, strict=True))
    ce = -math.log(math.exp(0.0) / (math.exp(1.0) + math.exp(0.0) + math.exp(-1.0)))
    expected = alpha * t * t * kl + (1 - alpha) * ce
    got = kd_loss(student, combine_teachers([teacher], t), target, temperature=t, alpha=alpha)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_kd_term_is_minimal_when_student_equals_teacher():
    torch.manual_seed(0)
    teacher = torch.randn(8, 3)
    target = torch.randint(0, 3, (8,))
    soft = combine_teachers([teacher], 4.0)
    at_teacher = kd_loss(teacher, soft, target, temperature=4.0, alpha=1.0)
    assert float(at_teacher) == pytest.approx(0.0, abs=1e-5)
    for _ in range(5):
        other = teacher + 0.5 * torch.randn(8, 3)
        assert float(kd_loss(other, soft, target, temperature=4.0, alpha=1.0)) > float(at_teacher)


def test_combined_teachers_are_the_mixture_of_softened_distributions():
    a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    mixed = combine_teachers([a, b], temperature=1.0, weights=[3.0, 1.0])
    expected = 0.75 * F.softmax(a, 1) + 0.25 * F.softmax(b, 1)
    assert torch.allclose(mixed, expected)
    assert torch.allclose(mixed.sum(1), torch.ones(1))
    with pytest.raises(ValueError, match="non-negative"):
        combine_teachers([a, b], 1.0, weights=[1.0])


def test_teachers_are_weighted_by_validation_auc_above_chance():
    assert teacher_weights_from_auc([0.9, 0.7]) == pytest.approx([0.4, 0.2])
    # A teacher at or below chance (or with no AUC: NaN) gets no say in the soft target.
    assert teacher_weights_from_auc([0.84, 0.46, float("nan")]) == pytest.approx([0.34, 0.0, 0.0])
    a, b = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    mixed = combine_teachers([a, b], 1.0, teacher_weights_from_auc([0.84, 0.46]))
    assert torch.allclose(mixed, F.softmax(a, 1))
    assert teacher_weights_from_auc([0.5, 0.41]) == [1.0, 1.0]  # no evidence either way


def test_attention_loss_is_lowest_on_the_lesion_and_balanced():
    lesion = torch.zeros(2, 16, 16, 16)
    lesion[0, 2:5, 10:14, 4:6] = 1  # one case with a small lesion, one without
    on_grid = F.adaptive_max_pool3d(lesion[:, None], (4, 4, 4))
    on_lesion = on_grid.clamp(0.02, 0.98)
    everywhere_off = torch.full_like(on_grid, 0.02)
    assert float(attention_mask_loss(on_lesion, lesion)) < 0.05
    # Switching the attention off everywhere is almost right on 62 of 64 cells, but the
    # lesion cells carry half the loss, so it costs as much as being wrong everywhere.
    assert float(attention_mask_loss(everywhere_off, lesion)) > 1.9
    # The lesion-free case adds nothing: only case 0 counts.
    assert float(attention_mask_loss(on_lesion, lesion)) == pytest.approx(
        float(attention_mask_loss(on_lesion[:1], lesion[:1]))
    )
    attention = torch.full((2, 1, 4, 4, 4), 0.5, requires_grad=True)
    attention_mask_loss(attention, lesion).backward()
    assert attention.grad is not None and bool(attention.grad[0].abs().gt(0).all())
    assert float(attention_mask_loss(attention.detach(), torch.zeros(2, 16, 16, 16))) == 0.0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="alpha"):
        kd_loss(torch.zeros(1, 2), torch.full((1, 2), 0.5), torch.tensor([0]), temperature=1.0, alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        combine_teachers([torch.zeros(1, 2)], temperature=0.0)


def _distances(n: int, seed: int) -> torch.Tensor:
    points = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))
    return torch.cdist(points, points)


def test_gw_is_zero_for_identical_graphs_and_permutation_invariant():
    c = _distances(6, 0)
    w = torch.full((6,), 1 / 6)
    assert float(gw_discrepancy(c, c, w)) == pytest.approx(0.0, abs=1e-5)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    other = _distances(6, 1)
    base = float(gw_discrepancy(c, other, w))
    permuted = float(gw_discrepancy(c, other[perm][:, perm], w))
    assert base > 1e-4
    assert permuted == pytest.approx(base, rel=1e-3, abs=1e-6)
    assert float(gw_discrepancy(c, c[perm][:, perm], w)) == pytest.approx(0.0, abs=1e-5)


def test_rgd_gives_finite_nonzero_gradients_to_the_student():
    teacher = torch.stack([_distances(5, 0), _distances(5, 1)])
    features = torch.randn(2, 5, 8, requires_grad=True)
    student = torch.cdist(features, features)
    weights = torch.tensor([[0.2, 0.2, 0.2, 0.2, 0.2], [0.5, 0.5, 0.0, 0.0, 0.0]])
    loss = rgd_loss(teacher, student, weights)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and float(loss.detach()) > 0
    assert features.grad is not None
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0


def test_rgd_skips_graphs_with_fewer_than_two_regions():
    student = torch.zeros(1, 3, 3, requires_grad=True)
    loss = rgd_loss(torch.zeros(1, 3, 3), student, torch.tensor([[1.0, 0.0, 0.0]]))
    assert float(loss) == 0.0


def test_class_weights_and_focal_loss():
    weights = class_weights([0, 0, 0, 1], 3)
    assert weights[1] > weights[0] and float(weights.mean()) == pytest.approx(1.0)
    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0]])
    target = torch.tensor([0, 1])
    assert float(focal_loss(logits, target, gamma=0.0)) == pytest.approx(
        float(F.cross_entropy(logits, target))
    )
    assert float(focal_loss(logits, target, gamma=2.0)) < float(F.cross_entropy(logits, target))
