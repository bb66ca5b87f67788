"""MSGFF: multi-scale geometric feature fusion.

From "Cross-Architectural Knowledge Distillation in Medical Imaging: Multi-Scale Geometric
Feature Fusion for MRI Scan Classification" (Mantaqa and Khan), section VIII: features of
several scales are brought together and aggregated with attention-based, learnable weights so
the network can favour the scale that fits a lesion's size. Here: each stage's map is
projected to a common width (1x1 convolution), resized onto the grid of a reference stage
(area averaging when larger, trilinear when smaller), and summed with per-sample softmax
weights over the scales, scored from each projected map's global average.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import ConvNormAct, check_positive, check_spatial_dims, global_avg_pool

_INTERP_MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize x: (N, C, *spatial) onto `size`: area averaging if every axis shrinks by an
    integer factor, else (bi/tri)linear interpolation."""
    current = tuple(x.shape[2:])
    size = tuple(int(s) for s in size)
    if current == size:
        return x
    if all(c >= s and c % s == 0 for c, s in zip(current, size, strict=True)):
        kernel = tuple(c // s for c, s in zip(current, size, strict=True))
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[x.dim() - 2]
        return pool(x, kernel)
    return F.interpolate(x, size=size, mode=_INTERP_MODE[x.dim() - 2], align_corners=False)


class MSGFF(nn.Module):
    """Fuse feature maps of several scales with learned softmax attention over the scales.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: channels of each input map, one entry per scale (at least 2).
        out_channels: common width F of the fused map.
        reference: index of the input whose grid the output takes (default: the last).

    forward(features: sequence of (N, C_s, *spatial_s)) -> (N, F, *spatial_reference).
    `scale_weights(features)` gives the (N, S) softmax weights for inspection.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: Sequence[int],
        out_channels: int,
        reference: int = -1,
        norm: str = "group",
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        check_positive("out_channels", out_channels)
        if len(in_channels) < 2:
            raise ValueError(f"MSGFF needs at least 2 scales, got in_channels={list(in_channels)}")
        if not -len(in_channels) <= reference < len(in_channels):
            raise ValueError(f"reference must index in_channels ({len(in_channels)} scales), got {reference}")
        self.reference = reference % len(in_channels)
        self.projections = nn.ModuleList(
            ConvNormAct(spatial_dims, c, out_channels, kernel_size=1, norm=norm)  # type: ignore[arg-type]
            for c in in_channels
        )
        self.score = nn.Linear(out_channels, 1)

    def _project(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != len(self.projections):
            raise ValueError(f"expected {len(self.projections)} feature maps, got {len(features)}")
        size = features[self.reference].shape[2:]
        return [resize_to(proj(f), size) for proj, f in zip(self.projections, features, strict=True)]

    def _weights(self, projected: Sequence[torch.Tensor]) -> torch.Tensor:
        scores = torch.cat([self.score(global_avg_pool(p)) for p in projected], dim=1)  # (N, S)
        return torch.softmax(scores, dim=1)

    def scale_weights(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Softmax weights over the scales, (N, S), each row summing to 1."""
        return self._weights(self._project(features))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        projected = self._project(features)
        weights = self._weights(projected)  # (N, S)
        stacked = torch.stack(projected, dim=1)  # (N, S, F, *spatial)
        index = (..., *([None] * (stacked.dim() - 2)))
        return (stacked * weights[index]).sum(dim=1)
