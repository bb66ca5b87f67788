"""The skeleton every student shares: encoder stages, optional MSGFF, CBAM3D, pooled head.

A student is a stride-2 stem and stride-2 stages (built by the task's module), then the
second seed's multi-scale fusion when asked, REACT-KD's CBAM3D on the last grid (its spatial
map is the served attention), and a linear head over mean- and peak-pooled features
(`models.layers.GlobalPool`) joined with the `present` vector. Subclasses only choose their stem and stages.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.cbam import CBAM3D
from models.layers import ClassifierHead, GlobalPool, NormName, PoolName, mask_missing
from models.msgff import MSGFF
from models.registry import ModelOutput


class CBAMStudent(nn.Module):
    """stem -> stages -> [MSGFF over the stem and every stage] -> [CBAM3D] -> head.

    Args:
        stem: the first module, on the masked image (N, M, D, H, W).
        stages: applied in turn; `widths` lists the channels of the stem and each stage.
        in_channels: M, the number of modalities (the `present` vector's length).
        attention: use the CBAM3D (False only for the ablation's baseline students).
        pool: the peak statistic pooled beside the mean (`models.layers.GlobalPool`).
    forward(image, present) -> ModelOutput(logits (N, C), attention (N, 1, d, h, w),
    features (N, widths[-1], d, h, w)).
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: Sequence[nn.Module],
        widths: Sequence[int],
        in_channels: int,
        num_classes: int,
        msgff: bool,
        norm: NormName,
        reduction: int,
        dropout: float,
        attention: bool = True,
        pool: PoolName = "topk",
    ) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.fusion = MSGFF(3, widths, widths[-1], norm=norm) if msgff else None
        # attention=False is the ablation's student without CBAM3D: features pass unchanged
        # and the served attention map is uniform (ones), which says "no attention" plainly.
        self.cbam = CBAM3D(widths[-1], reduction) if attention else None
        self.pool = GlobalPool(pool)
        self.head = ClassifierHead(2 * widths[-1], in_channels, num_classes, dropout)
        self.num_features = widths[-1]

    def forward_features(
        self, image: torch.Tensor, present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(attended features (N, F, d, h, w), attention (N, 1, d, h, w))."""
        x = self.stem(mask_missing(image, present))
        scales = [x]
        for stage in self.stages:
            x = stage(x)
            scales.append(x)
        if self.fusion is not None:
            x = self.fusion(scales)
        if self.cbam is None:
            return x, torch.ones_like(x[:, :1])
        return self.cbam(x)

    def forward_head(self, features: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(features), present)

    def forward(self, image: torch.Tensor, present: torch.Tensor) -> ModelOutput:
        features, attention = self.forward_features(image, present)
        return ModelOutput(self.forward_head(features, present), attention, features)
