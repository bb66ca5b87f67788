"""Losses of REACT-KD (Chen et al.) and of the BraTS cross-architecture pair (second seed).

- `class_weights` / `weighted_cross_entropy` / `focal_loss`: supervised losses for imbalanced
  grades (HCC is about 25/45/30 %, BraTS about 3.4 : 1).
- `combine_teachers`: the rule that turns several teachers into one soft target.
- `kd_loss`: Hinton's logit distillation, ``alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE``.
- `rgd_loss`: region graph distillation, a Gromov-Wasserstein discrepancy between the
  teacher's and the student's intra-graph distance matrices (POT, torch backend, so
  gradients reach the student).
"""

from __future__ import annotations

from collections.abc import Sequence

import ot
import torch
import torch.nn.functional as F


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1; a class never seen gets weight 1."""
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=num_classes).float()
    weights = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), torch.ones(()))
    return weights / weights.mean()


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target, weight=weights.to(logits))


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None, gamma: float = 2.0
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017): cross-entropy down-weighted by ``(1 - p_true)^gamma``."""
    log_p = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
    loss = -((1.0 - log_p.exp()) ** gamma) * log_p
    if weights is not None:
        w = weights.to(logits)[target]
        return (w * loss).sum() / w.sum()
    return loss.mean()


def combine_teachers(
    teacher_logits: Sequence[torch.Tensor], temperature: float, weights: Sequence[float] | None = None
) -> torch.Tensor:
    """One soft target from several teachers: the weighted mean of their softened distributions.

    ``p_t = sum_k w_k softmax(z_k / T)`` with ``w`` normalised to sum 1 (equal by default).
    A mixture of distributions (rather than an average of logits) keeps each teacher's
    uncertainty: where the PET/CT teacher is sure and the dose-aware teacher is not, the
    target stays as confident as their average belief, never sharper than either.
    """
    if not teacher_logits:
        raise ValueError("combine_teachers needs at least one teacher")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    w = torch.ones(len(teacher_logits)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    if w.numel() != len(teacher_logits) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"teacher weights must be {len(teacher_logits)} non-negative numbers, got {weights}")
    w = w / w.sum()
    probs = torch.stack([F.softmax(z / temperature, dim=1) for z in teacher_logits])
    return (w.to(probs)[:, None, None] * probs).sum(0)


def teacher_weights_from_auc(val_aucs: Sequence[float]) -> list[float]:
    """Mixing weights for `combine_teachers`: each teacher's validation AUC above chance.

    ``w_k = max(AUC_k - 0.5, 0)``: a teacher that ranks no better than a coin gets no say,
    so it cannot dilute a good one (at equal weights a chance-level teacher makes half of
    the soft target noise). When none beats chance (tiny validation sets), they are mixed
    equally: there is no evidence to prefer one.
    """
    weights = [float(auc) - 0.5 if float(auc) > 0.5 else 0.0 for auc in val_aucs]  # NaN: no say
    return weights if any(w > 0 for w in weights) else [1.0] * len(weights)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    ce_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE(student, target)``.

    `teacher_probs` are already softened at `temperature` (see `combine_teachers`). The
    ``T^2`` factor keeps the soft-target gradients on the scale of the hard-label ones.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    kl = F.kl_div(log_p_student, teacher_probs, reduction="batchmean")
    ce = F.cross_entropy(
        student_logits, target, weight=None if ce_weights is None else ce_weights.to(student_logits)
    )
    return alpha * temperature**2 * kl + (1.0 - alpha) * ce


def gw_discrepancy(c_teacher: torch.Tensor, c_student: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Gromov-Wasserstein discrepancy between two graphs with node masses `weights`.

    The solver starts from the independent coupling ``p p^T``, which does not depend on
    the order of the nodes, so relabelling the regions of one graph leaves the value
    unchanged; for identical graphs its first step already finds the identity matching
    (value 0 up to float32 rounding). Gradients reach both distance matrices (POT's torch
    backend, envelope theorem).
    """
    p = weights / weights.sum()
    return ot.gromov.gromov_wasserstein2(c_teacher, c_student, p, p, loss_fun="square_loss")


def rgd_loss(
    teacher_distances: torch.Tensor, student_distances: torch.Tensor, region_weights: torch.Tensor
) -> torch.Tensor:
    """Mean GW discrepancy over a batch of region graphs.

    Args:
        teacher_distances: (N, R, R) intra-graph distances of the teacher (no gradient needed).
        student_distances: (N, R, R) intra-graph distances of the student.
        region_weights: (N, R) region masses; empty regions (weight 0) are left out.
    Returns a scalar; cases with fewer than two non-empty regions contribute nothing.
    """
    losses = []
    for c_t, c_s, w in zip(teacher_distances.detach(), student_distances, region_weights, strict=True):
        keep = w > 0
        if int(keep.sum()) < 2:
            continue
        losses.append(gw_discrepancy(c_t[keep][:, keep], c_s[keep][:, keep], w[keep]))
    if not losses:
        return student_distances.sum() * 0.0
    return torch.stack(losses).mean()


def attention_mask_loss(attention: torch.Tensor, lesion: torch.Tensor) -> torch.Tensor:
    """Balanced binary cross-entropy pulling the spatial attention onto the lesion.

    Args:
        attention: (N, 1, d, h, w) in [0, 1], the network's last-stage spatial attention.
        lesion: (N, D, H, W) lesion mask on the input grid (any non-zero voxel is lesion).
    An attention cell's target is 1 when any lesion voxel falls in it (max pooling keeps a
    small lesion visible on the coarse grid). Lesion cells are a few percent of the grid, so
    the lesion and the background cells each carry half of the loss; otherwise switching
    the attention off everywhere would be nearly optimal. Cases without a lesion contribute
    nothing (a lesion-free case says nothing about where to look).
    """
    target = F.adaptive_max_pool3d((lesion[:, None] > 0).to(attention), attention.shape[2:])
    has_lesion = target.flatten(1).amax(1) > 0
    if not bool(has_lesion.any()):
        return attention.sum() * 0.0
    a = attention[has_lesion].clamp(1e-6, 1.0 - 1e-6)
    t = target[has_lesion]
    bce = F.binary_cross_entropy(a, t, reduction="none")
    inside = (bce * t).sum() / t.sum()
    outside = (bce * (1 - t)).sum() / (1 - t).sum().clamp_min(1.0)
    return 0.5 * (inside + outside)
