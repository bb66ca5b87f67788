from __future__ import annotations

import pytest
import torch

from models.cbam import CBAM, CBAM3D, ChannelAttention, SpatialAttention

CASES = [(1, (2, 16, 20)), (2, (2, 16, 8, 12)), (3, (2, 16, 4, 6, 5)), (3, (1, 8, 3, 3, 3))]


@pytest.mark.parametrize(("spatial_dims", "shape"), CASES)
def test_shapes_and_map_range(spatial_dims: int, shape: tuple[int, ...]) -> None:
    # Seeded: with 8 channels the hidden layer of the channel MLP has 2 ReLU units, and on one
    # random draw in a few hundred both are dead for a 1-case batch (no gradient reaches fc1).
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    module = CBAM(spatial_dims, shape[1], reduction=4)
    attended, attention = module(x)
    assert attended.shape == x.shape
    assert attention.shape == (shape[0], 1, *shape[2:])
    assert attention.min() >= 0 and attention.max() <= 1
    attended.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_cbam3d_is_cbam_with_three_dims() -> None:
    module = CBAM3D(16)
    assert isinstance(module, CBAM) and module.spatial_dims == 3
    assert module.channel.mlp[0].out_features == 2  # default reduction 8
    with pytest.raises(ValueError, match=r"got shape \(2, 16, 4, 4\)"):
        module(torch.randn(2, 16, 4, 4))


def test_channel_attention_shares_one_mlp() -> None:
    module = ChannelAttention(8, reduction=2)
    assert len(list(module.parameters())) == 4  # two linear layers, used for avg and max


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": 16, "reduction": 0}, "reduction=0"),
        ({"channels": 16, "reduction": -2}, "reduction=-2"),
        ({"channels": 4, "reduction": 8}, "reduction=8"),
        ({"channels": 0}, "channels=0"),
        ({"channels": 16, "kernel_size": 6}, "kernel_size=6"),
    ],
)
def test_bad_arguments_name_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CBAM3D(**kwargs)


def test_bad_spatial_dims() -> None:
    with pytest.raises(ValueError, match="spatial_dims=4"):
        CBAM(4, 16)
    with pytest.raises(ValueError, match="kernel_size=0"):
        SpatialAttention(3, 0)
