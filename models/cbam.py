"""CBAM: Convolutional Block Attention Module (Woo et al., ECCV 2018), generic over dimensions.

REACT-KD (Chen et al.) shares one CBAM3D across the modality branches of its teacher and
uses its spatial map as the student's explanation. timm's `CbamModule` is 2D only, so this
follows MONAI's way (`spatial_dims` picks the layers) with timm's split into small modules:
`ChannelAttention` (average- and max-pooled descriptors through one shared MLP), then
`SpatialAttention` (channel mean and max, one k-wide convolution, sigmoid), chained by `CBAM`.
"""

from __future__ import annotations

import torch
from torch import nn

from models.layers import check_positive, check_spatial_dims, conv_type


class ChannelAttention(nn.Module):
    """Channel attention: sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))) scales each channel.

    x: (N, C, *spatial) -> (N, C, *spatial). The MLP is C -> max(C // reduction, 1) -> C and is
    shared by both descriptors.
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        check_positive("channels", channels)
        check_positive("reduction", reduction)
        if reduction > channels:
            raise ValueError(f"reduction must not exceed channels ({channels}), got reduction={reduction}")
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel weights in [0, 1]. x: (N, C, *spatial) -> (N, C)."""
        flat = x.flatten(2)
        return torch.sigmoid(self.mlp(flat.mean(dim=-1)) + self.mlp(flat.amax(dim=-1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = (..., *([None] * (x.dim() - 2)))
        return x * self.weights(x)[index]


class SpatialAttention(nn.Module):
    """Spatial attention: sigmoid(conv_k([mean_c(x), max_c(x)])).

    x: (N, C, *spatial) -> map (N, 1, *spatial) in [0, 1].
    """

    def __init__(self, spatial_dims: int, kernel_size: int = 7) -> None:
        super().__init__()
        check_positive("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd to keep the grid, got kernel_size={kernel_size}")
        self.conv = conv_type(spatial_dims)(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        descriptors = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(descriptors))


class CBAM(nn.Module):
    """Channel then spatial attention.

    Args:
        spatial_dims: 1, 2 or 3.
        channels: C of the input.
        reduction: reduction ratio of the channel MLP (default 8).
        kernel_size: width of the spatial-attention convolution (odd, default 7).

    forward(x: (N, C, *spatial)) -> (attended (N, C, *spatial), spatial map (N, 1, *spatial)
    in [0, 1]).
    """

    def __init__(self, spatial_dims: int, channels: int, reduction: int = 8, kernel_size: int = 7) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        self.spatial_dims = spatial_dims
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(spatial_dims, kernel_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"expected a ({self.spatial_dims + 2})-D input (N, C, *spatial), got shape {tuple(x.shape)}"
            )
        x = self.channel(x)
        attention = self.spatial(x)
        return x * attention, attention


class CBAM3D(CBAM):
    """`CBAM` with spatial_dims=3. x: (N, C, D, H, W) -> ((N, C, D, H, W), (N, 1, D, H, W))."""

    def __init__(self, channels: int, reduction: int = 8, kernel_size: int = 7) -> None:
        super().__init__(3, channels, reduction, kernel_size)
