"""A small layer factory generic over `spatial_dims`, in the manner of MONAI's factories.

MONAI (`monai/networks/layers/factories.py`) picks `Conv1d/2d/3d` from one argument so 2D
and 3D blocks share code; this module does the same for the handful of layers our networks
use (convolution, normalisation, pooling), plus `ConvNormAct`, the unit every network here
is built from, and the modality mask that every registered network applies first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

NormName = Literal["batch", "instance", "group", "none"]
PoolName = Literal["topk", "max"]


def _use_onednn(x: torch.Tensor, conv: nn.Module) -> bool:
    """Whether to call oneDNN directly: eager CPU float32, not while tracing or exporting."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and getattr(conv, "padding_mode", "") == "zeros"
        and isinstance(getattr(conv, "padding", None), tuple)
        and torch.backends.mkldnn.is_available()
        and bool(torch.backends.mkldnn.enabled)
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
        and not torch.onnx.is_in_onnx_export()
    )


class _OneDNNConv:
    """Convolution that runs on oneDNN in eager CPU float32, whatever the batch size.

    PyTorch's CPU dispatch sends a convolution with batch 1, kernel <= 3, one group and
    N * C * D * H <= 20480 to its native im2col kernel ("for some case, native is faster"),
    which for our small 3D networks is 5-15x slower than oneDNN (measured on this CPU), so a
    student served at batch 1 would pay it at every layer. Same weights, same result (and
    gradient) as the parent class; tracing, torch.compile and ONNX export see the ordinary
    convolution, so exported graphs hold a plain Conv node.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _use_onednn(x, self):  # type: ignore[arg-type]
            return torch.mkldnn_convolution(
                x.contiguous(),
                self.weight,  # type: ignore[attr-defined]
                self.bias,  # type: ignore[attr-defined]
                self.padding,  # type: ignore[attr-defined]
                self.stride,  # type: ignore[attr-defined]
                self.dilation,  # type: ignore[attr-defined]
                self.groups,  # type: ignore[attr-defined]
            )
        return super().forward(x)  # type: ignore[misc]


class Conv1d(_OneDNNConv, nn.Conv1d):
    """`nn.Conv1d` on oneDNN in eager CPU float32 (see `_OneDNNConv`)."""


class Conv2d(_OneDNNConv, nn.Conv2d):
    """`nn.Conv2d` on oneDNN in eager CPU float32 (see `_OneDNNConv`)."""


class Conv3d(_OneDNNConv, nn.Conv3d):
    """`nn.Conv3d` on oneDNN in eager CPU float32 (see `_OneDNNConv`)."""


_CONV: dict[int, type[nn.Module]] = {1: Conv1d, 2: Conv2d, 3: Conv3d}
_BATCH_NORM: dict[int, type[nn.Module]] = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_INSTANCE_NORM: dict[int, type[nn.Module]] = {
    1: nn.InstanceNorm1d,
    2: nn.InstanceNorm2d,
    3: nn.InstanceNorm3d,
}
_MAX_POOL: dict[int, type[nn.Module]] = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}


def check_spatial_dims(spatial_dims: int) -> int:
    """`spatial_dims` if it is 1, 2 or 3, else a ValueError naming it."""
    if spatial_dims not in _CONV:
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got spatial_dims={spatial_dims}")
    return spatial_dims


def check_positive(name: str, value: int) -> int:
    """`value` if it is a positive int, else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
    return value


def conv_type(spatial_dims: int) -> type[nn.Module]:
    """`Conv1d`, `Conv2d` or `Conv3d` (drop-in `nn.ConvNd` subclasses, see `_OneDNNConv`)."""
    return _CONV[check_spatial_dims(spatial_dims)]


def max_pool_type(spatial_dims: int) -> type[nn.Module]:
    """`nn.MaxPool1d`, `nn.MaxPool2d` or `nn.MaxPool3d`."""
    return _MAX_POOL[check_spatial_dims(spatial_dims)]


def make_norm(norm: NormName, spatial_dims: int, channels: int) -> nn.Module:
    """A normalisation layer over `channels` channels.

    "group" uses up to 8 groups (fewer when `channels` is not divisible), which behaves the
    same at batch 1 and batch 32, so training on small CPU batches and serving agree.
    """
    check_spatial_dims(spatial_dims)
    if norm == "batch":
        return _BATCH_NORM[spatial_dims](channels)
    if norm == "instance":
        return _INSTANCE_NORM[spatial_dims](channels, affine=True)
    if norm == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch', 'instance', 'group' or 'none', got norm={norm!r}")


class ConvNormAct(nn.Sequential):
    """Convolution (padding keeps the grid at stride 1), normalisation, optional activation.

    x: (N, in_channels, *spatial) -> (N, out_channels, *ceil(spatial / stride)).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        norm: NormName = "group",
        act: bool = True,
    ) -> None:
        check_positive("in_channels", in_channels)
        check_positive("out_channels", out_channels)
        check_positive("kernel_size", kernel_size)
        check_positive("stride", stride)
        conv = conv_type(spatial_dims)(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=norm == "none",
        )
        layers: list[nn.Module] = [conv, make_norm(norm, spatial_dims, out_channels)]
        if act:
            layers.append(nn.SiLU(inplace=True))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """Two 3x3 ConvNormAct with a shortcut (1x1 projection when shape changes).

    x: (N, in_channels, *spatial) -> (N, out_channels, *ceil(spatial / stride)).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        norm: NormName = "group",
    ) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(spatial_dims, in_channels, out_channels, 3, stride, norm=norm)
        self.conv2 = ConvNormAct(spatial_dims, out_channels, out_channels, 3, 1, norm=norm, act=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = ConvNormAct(
                spatial_dims, in_channels, out_channels, 1, stride, norm=norm, act=False
            )
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class ClassifierHead(nn.Module):
    """Linear head over pooled features concatenated with the `present` vector.

    pooled: (N, F), present: (N, M) -> logits (N, C).
    """

    def __init__(self, features: int, modalities: int, num_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        check_positive("num_classes", num_classes)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got dropout={dropout}")
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(features + modalities, num_classes)

    def forward(self, pooled: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([self.dropout(pooled), present.to(pooled.dtype)], dim=1))


def mask_missing(image: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Zero every channel whose `present` flag is 0, so its content cannot reach the output.

    image: (N, M, *spatial); present: (N, M) of 0/1 floats -> (N, M, *spatial).
    """
    if image.dim() < 3 or present.dim() != 2:
        raise ValueError(
            f"expected image (N, M, *spatial) and present (N, M), got image {tuple(image.shape)} "
            f"and present {tuple(present.shape)}"
        )
    index = (..., *([None] * (image.dim() - 2)))
    return image * present.to(image.dtype)[index]


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """Mean over all spatial axes. x: (N, C, *spatial) -> (N, C)."""
    return x.flatten(2).mean(dim=-1)


# Share of voxels whose mean is the "peak" of a feature map under top-k pooling: about a
# lesion's share of an abdominal field of view.
TOPK_FRACTION = 0.01


class GlobalPool(nn.Module):
    """Mean and a peak over all spatial axes, concatenated. x: (N, C, *spatial) -> (N, 2C).

    Heads pool this way because a lesion fills about 1 % of an abdominal field of view: its
    evidence (say, FDG uptake) is diluted a hundredfold by the mean alone, while the peak
    keeps it, and the mean keeps the context. The peak is
    - "topk" (default): the mean of the largest `TOPK_FRACTION` of voxels (at least one).
      The gradient reaches every voxel of that share, so a lesion a little below the
      hottest voxel at initialisation still gets trained. With "max" and group norm, the
      HCC networks sat at the class prior for most initialisations on the synthetic
      benchmark; with "topk" and instance norm they learned for every one tried.
    - "max": the single largest voxel.
    """

    def __init__(self, pool: PoolName = "topk") -> None:
        super().__init__()
        if pool not in ("topk", "max"):
            raise ValueError(f"pool must be 'topk' or 'max', got pool={pool!r}")
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)
        if self.pool == "max":
            peak = flat.amax(dim=-1)
        else:
            k = max(1, math.ceil(TOPK_FRACTION * flat.shape[-1]))
            peak = flat.topk(k, dim=-1).values.mean(dim=-1)
        return torch.cat([flat.mean(dim=-1), peak], dim=1)

    def extra_repr(self) -> str:
        return f"pool={self.pool!r}"


def spatial_size(x: torch.Tensor) -> Sequence[int]:
    """The spatial shape of a (N, C, *spatial) tensor."""
    return tuple(x.shape[2:])
