from __future__ import annotations

import math

import pytest
import torch

from models.layers import (
    TOPK_FRACTION,
    ConvNormAct,
    GlobalPool,
    ResidualBlock,
    check_positive,
    conv_type,
    make_norm,
    mask_missing,
)


@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_norm_act_shapes(spatial_dims: int, stride: int) -> None:
    x = torch.randn(2, 4, *([9] * spatial_dims))
    y = ConvNormAct(spatial_dims, 4, 8, stride=stride)(x)
    assert y.shape == (2, 8, *([-(-9 // stride)] * spatial_dims))
    z = ResidualBlock(spatial_dims, 4, 6, stride=stride)(x)
    assert z.shape == (2, 6, *([-(-9 // stride)] * spatial_dims))


@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
def test_norms(norm: str) -> None:
    assert make_norm(norm, 3, 12)(torch.randn(2, 12, 3, 3, 3)).shape == (2, 12, 3, 3, 3)  # type: ignore[arg-type]


def test_bad_arguments_name_the_value() -> None:
    with pytest.raises(ValueError, match="spatial_dims=4"):
        conv_type(4)
    with pytest.raises(ValueError, match="norm='layer'"):
        make_norm("layer", 3, 8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="width=0"):
        check_positive("width", 0)


def test_mask_missing_zeroes_absent_channels() -> None:
    image = torch.randn(2, 3, 4, 4, 4)
    present = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    masked = mask_missing(image, present)
    assert torch.equal(masked[0, 1], torch.zeros(4, 4, 4))
    assert torch.equal(masked[1, 0], torch.zeros(4, 4, 4))
    assert torch.equal(masked[0, 0], image[0, 0])
    with pytest.raises(ValueError, match=r"present \(2, 3, 1\)"):
        mask_missing(image, present[..., None])


@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
@pytest.mark.parametrize(("batch", "stride", "groups"), [(1, 1, 1), (1, 2, 2), (3, 2, 1)])
def test_onednn_conv_matches_the_reference(spatial_dims: int, batch: int, stride: int, groups: int) -> None:
    torch.manual_seed(0)
    conv = conv_type(spatial_dims)(4, 6, 3, stride=stride, padding=1, groups=groups)
    x = torch.randn(batch, 4, *([7] * spatial_dims), requires_grad=True)
    reference = getattr(torch.nn.functional, f"conv{spatial_dims}d")(
        x, conv.weight, conv.bias, stride, 1, 1, groups
    )
    y = conv(x)
    torch.testing.assert_close(y, reference, rtol=1e-5, atol=1e-5)
    (grad_x,) = torch.autograd.grad(y.square().sum(), x)
    (want_x,) = torch.autograd.grad(reference.square().sum(), x)
    torch.testing.assert_close(grad_x, want_x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
def test_global_pool_keeps_the_mean_and_the_peak(spatial_dims: int) -> None:
    x = torch.randn(2, 3, *([10] * spatial_dims), requires_grad=True)
    flat = x.detach().flatten(2)
    k = math.ceil(TOPK_FRACTION * flat.shape[-1])
    top = GlobalPool("topk")(x)
    assert top.shape == (2, 6)
    torch.testing.assert_close(top[:, :3], flat.mean(-1))
    torch.testing.assert_close(top[:, 3:], flat.sort(-1, descending=True).values[..., :k].mean(-1))
    torch.testing.assert_close(GlobalPool("max")(x)[:, 3:], flat.amax(-1))
    # The peak's gradient reaches the k largest voxels of each channel, not one.
    top[:, 3:].sum().backward()
    assert x.grad is not None
    assert (x.grad.flatten(2) > 0).sum(-1).eq(k).all()


def test_global_pool_takes_at_least_one_voxel_and_refuses_unknown_names() -> None:
    x = torch.randn(1, 2, 3, 3)
    torch.testing.assert_close(GlobalPool("topk")(x), GlobalPool("max")(x))
    with pytest.raises(ValueError, match="pool must be"):
        GlobalPool("lse")  # type: ignore[arg-type]
