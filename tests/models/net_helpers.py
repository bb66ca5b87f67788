"""Helpers of the network tests: tiny inputs and a gradient check."""

from __future__ import annotations

import torch
from torch import nn

TINY_SHAPES = [(16, 32, 32), (24, 40, 32)]
"""(D, H, W) grids small enough for 2 CPU cores, one of them not a power of two."""


def num_modalities(name: str) -> int:
    return 4 if name.startswith("brats") else 3


def tiny_input(name: str, shape: tuple[int, int, int], batch: int = 2, seed: int = 0):
    """(image (N, M, D, H, W), present (N, M)) with every modality present."""
    generator = torch.Generator().manual_seed(seed)
    m = num_modalities(name)
    return torch.randn(batch, m, *shape, generator=generator), torch.ones(batch, m)


def assert_gradients_reach_every_parameter(model: nn.Module, loss: torch.Tensor, min_nonzero: float = 0.9):
    """Every parameter gets a finite gradient, and almost all a non-zero one."""
    model.zero_grad(set_to_none=True)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad}"
    params = list(model.named_parameters())
    zero = [n for n, p in params if not p.grad.abs().sum() > 0]
    assert len(zero) <= (1 - min_nonzero) * len(params), f"zero gradient for {zero}"


SMALL_KWARGS: dict[str, dict] = {
    "hcc_teacher_sf": {"width": 8},
    "hcc_teacher_dose": {"width": 8},
    "brats_teacher_hybrid": {"width": 8, "hidden_size": 32},
}
"""Narrower teachers for tests whose property does not depend on width (gradients, masking)."""


def small_kwargs(name: str) -> dict:
    return SMALL_KWARGS.get(name, {})
