from __future__ import annotations

import pytest
import torch

from models.msgff import MSGFF, resize_to


@pytest.mark.parametrize("grid", [(16, 32, 32), (24, 40, 32)])
def test_fuses_scales_onto_reference_grid(grid: tuple[int, int, int]) -> None:
    scales = [
        torch.randn(2, c, *(-(-g // s) for g in grid), requires_grad=True)
        for c, s in ((4, 2), (8, 4), (16, 8))
    ]
    module = MSGFF(3, [4, 8, 16], 12)
    fused = module(scales)
    assert fused.shape == (2, 12, *scales[-1].shape[2:])
    weights = module.scale_weights(scales)
    assert weights.shape == (2, 3)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))
    fused.square().mean().backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in scales)
    assert all(p.grad is not None for p in module.parameters())


def test_reference_can_be_the_finest_grid() -> None:
    scales = [torch.randn(1, 4, 8, 8, 8), torch.randn(1, 8, 4, 4, 4)]
    assert MSGFF(3, [4, 8], 6, reference=0)(scales).shape == (1, 6, 8, 8, 8)


def test_resize_to_area_averages_integer_factors() -> None:
    x = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
    assert resize_to(x, (1, 1, 1)).item() == pytest.approx(3.5)
    assert resize_to(torch.randn(1, 2, 3, 5, 4), (6, 10, 8)).shape == (1, 2, 6, 10, 8)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"in_channels=\[8\]"):
        MSGFF(3, [8], 8)
    with pytest.raises(ValueError, match="got 5"):
        MSGFF(3, [4, 8], 8, reference=5)
    with pytest.raises(ValueError, match="expected 2 feature maps, got 1"):
        MSGFF(3, [4, 8], 8)([torch.randn(1, 4, 2, 2, 2)])
