"""Networks of REACT-KD for hepatocellular carcinoma grading.

REACT-KD: Region-Aware Cross-modal Topological Knowledge Distillation for Interpretable
Medical Image Classification (Chen et al.). Two teachers guide a light CT student:

- `hcc_teacher_sf`, the structure-function teacher: one branch per tracer pairing (FDG PET
  with CT, 11C-acetate PET with CT), ONE CBAM3D shared by both branches so attention is
  consistent across modalities, fused by 1x1x1 convolutions, an element-wise sum and a
  sigmoid gate, then global pooling and a linear head.
- `hcc_teacher_dose`, the dose-aware teacher: a CT-only encoder meant to see paired full-
  and low-dose CT; distillation aligns its `features`.
- `hcc_student`: a light 3D CNN over the channels (ct, pet_fdg, pet_act) that serves with CT
  alone; a CBAM3D on its last stage gives the attention map shipped as the explanation.

Every network takes `(image (N, M, D, H, W), present (N, M))`, zeroes missing channels as its
first operation, and returns `ModelOutput(logits, attention, features)`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from models.cbam import CBAM3D
from models.layers import (
    ClassifierHead,
    ConvNormAct,
    GlobalPool,
    NormName,
    PoolName,
    ResidualBlock,
    check_positive,
    conv_type,
    mask_missing,
)
from models.registry import ModelOutput, register_model
from models.student import CBAMStudent

CT, PET_FDG, PET_ACT = 0, 1, 2


def _stages(widths: Sequence[int], norm: NormName, depth: int = 1) -> nn.ModuleList:
    """One stage per consecutive pair of `widths`: a stride-2 residual block, then `depth - 1`
    stride-1 residual blocks."""
    check_positive("depth", depth)
    stages = []
    for c_in, c_out in itertools.pairwise(widths):
        blocks = [ResidualBlock(3, c_in, c_out, stride=2, norm=norm)]
        blocks += [ResidualBlock(3, c_out, c_out, norm=norm) for _ in range(depth - 1)]
        stages.append(nn.Sequential(*blocks))
    return nn.ModuleList(stages)


class HCCStudent(CBAMStudent):
    """Light 3D CNN: stride-2 stem, two stride-2 residual stages (stride 8), CBAM3D, head.

    Args:
        in_channels: M, modalities in channel order (3: ct, pet_fdg, pet_act).
        num_classes: C.
        width: channels of the stem; the stages have 2x and 4x that.
        msgff: fuse the stem and both stages with MSGFF before the CBAM3D.
        norm: normalisation of every convolution ("instance", "group", "batch", "none").
            Instance by default, as for every HCC network: with it and top-k pooling they
            learned on every initialisation tried, with group norm only on some.
        pool: the peak pooled beside the mean ("topk" or "max", `models.layers.GlobalPool`).

    forward(image (N, M, D, H, W), present (N, M)) -> ModelOutput with logits (N, C),
    attention (N, 1, D/8, H/8, W/8) and features (N, 4*width, D/8, H/8, W/8) (ceil division).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 3,
        width: int = 16,
        msgff: bool = False,
        norm: NormName = "instance",
        reduction: int = 8,
        dropout: float = 0.2,
        attention: bool = True,
        pool: PoolName = "topk",
    ) -> None:
        check_positive("in_channels", in_channels)
        check_positive("width", width)
        widths = (width, 2 * width, 4 * width)
        stem = ConvNormAct(3, in_channels, width, 3, stride=2, norm=norm)
        stages = list(_stages(widths, norm))
        super().__init__(
            stem, stages, widths, in_channels, num_classes, msgff, norm, reduction, dropout, attention, pool
        )


class BranchEncoder(nn.Sequential):
    """Encoder of one branch: a stride-2 stem, then stages of `depth` residual blocks, each
    stage halving the grid. x: (N, C_in, D, H, W) -> (N, widths[-1], D / 2^len(widths), ...).

    Deeper and wider than the student (whose stages hold one block), which is what makes it
    a teacher; it keeps the student's stride-8 grid when `widths` has 3 entries.
    """

    def __init__(self, in_channels: int, widths: Sequence[int], norm: NormName, depth: int = 2) -> None:
        layers: list[nn.Module] = [
            ConvNormAct(3, in_channels, widths[0], 3, stride=2, norm=norm),
            *_stages(widths, norm, depth),
        ]
        super().__init__(*layers)


class HCCTeacherSF(nn.Module):
    """Structure-function teacher: FDG/CT and acetate/CT branches, one shared CBAM3D, gated fusion.

    Each branch encodes (ct, its PET) at full resolution; the SAME `CBAM3D` module attends
    both branch maps; 1x1x1 convolutions of the two attended maps are summed, a sigmoid of the
    sum gates between the branches (fused = g * a + (1 - g) * b), and the fused map is pooled
    into the head. `attention` is the mean of the two branch maps; `features` the fused map.

    Args:
        in_channels: must be 3 (ct, pet_fdg, pet_act).
        num_classes: C.
        width: channels of each branch's stem; two stages double it twice.
        depth: residual blocks per stage.

    forward(image (N, 3, D, H, W), present (N, 3)) -> ModelOutput at stride 8.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 3,
        width: int = 16,
        norm: NormName = "instance",
        reduction: int = 8,
        dropout: float = 0.2,
        msgff: bool = False,
        depth: int = 2,
        pool: PoolName = "topk",
    ) -> None:
        super().__init__()
        if in_channels != 3:
            raise ValueError(
                f"hcc_teacher_sf needs channels (ct, pet_fdg, pet_act), got in_channels={in_channels}"
            )
        check_positive("width", width)
        widths = (width, 2 * width, 4 * width)
        self.fdg_branch = BranchEncoder(2, widths, norm, depth)
        self.act_branch = BranchEncoder(2, widths, norm, depth)
        self.cbam = CBAM3D(widths[-1], reduction)  # shared by both branches
        self.fdg_proj = conv_type(3)(widths[-1], widths[-1], 1)
        self.act_proj = conv_type(3)(widths[-1], widths[-1], 1)
        self.pool = GlobalPool(pool)
        self.head = ClassifierHead(2 * widths[-1], in_channels, num_classes, dropout)
        self.num_features = widths[-1]
        if msgff:
            raise ValueError("hcc_teacher_sf does not offer msgff; got msgff=True")

    def forward_features(
        self, image: torch.Tensor, present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(fused features (N, F, d, h, w), mean branch attention (N, 1, d, h, w))."""
        x = mask_missing(image, present)
        fdg, fdg_map = self.cbam(self.fdg_branch(x[:, [CT, PET_FDG]]))
        act, act_map = self.cbam(self.act_branch(x[:, [CT, PET_ACT]]))
        gate = torch.sigmoid(self.fdg_proj(fdg) + self.act_proj(act))
        fused = gate * fdg + (1.0 - gate) * act
        return fused, 0.5 * (fdg_map + act_map)

    def forward(self, image: torch.Tensor, present: torch.Tensor) -> ModelOutput:
        features, attention = self.forward_features(image, present)
        return ModelOutput(self.head(self.pool(features), present), attention, features)


class HCCTeacherDose(nn.Module):
    """Dose-aware teacher: a CT-only encoder for paired full- and low-dose CT.

    Uses channel `ct` only (PET channels are ignored); training runs it on a full-dose and a
    low-dose version of a case and aligns the two `features`. One `BranchEncoder` (deeper
    than the student's stages), a CBAM3D, and a head that sees the ct presence flag.

    forward(image (N, M, D, H, W), present (N, M)) -> ModelOutput at stride 8.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 3,
        width: int = 16,
        norm: NormName = "instance",
        reduction: int = 8,
        dropout: float = 0.2,
        depth: int = 2,
        pool: PoolName = "topk",
    ) -> None:
        super().__init__()
        check_positive("in_channels", in_channels)
        check_positive("width", width)
        widths = (width, 2 * width, 4 * width)
        self.encoder = BranchEncoder(1, widths, norm, depth)
        self.cbam = CBAM3D(widths[-1], reduction)
        self.pool = GlobalPool(pool)
        self.head = ClassifierHead(2 * widths[-1], 1, num_classes, dropout)
        self.num_features = widths[-1]

    def forward_features(
        self, image: torch.Tensor, present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, F, d, h, w), attention (N, 1, d, h, w)) from the CT channel."""
        ct = mask_missing(image, present)[:, CT : CT + 1]
        return self.cbam(self.encoder(ct))

    def forward(self, image: torch.Tensor, present: torch.Tensor) -> ModelOutput:
        features, attention = self.forward_features(image, present)
        logits = self.head(self.pool(features), present[:, CT : CT + 1])
        return ModelOutput(logits, attention, features)


@register_model
def hcc_student(
    in_channels: int = 3, num_classes: int = 3, width: int = 8, msgff: bool = False, **kwargs: object
) -> HCCStudent:
    """Light CT(+PET) student; CT alone suffices at inference."""
    return HCCStudent(in_channels, num_classes, width, msgff, **kwargs)  # type: ignore[arg-type]


@register_model
def hcc_teacher_sf(
    in_channels: int = 3, num_classes: int = 3, width: int = 32, **kwargs: object
) -> HCCTeacherSF:
    """Structure-function PET/CT teacher with a shared CBAM3D."""
    return HCCTeacherSF(in_channels, num_classes, width, **kwargs)  # type: ignore[arg-type]


@register_model
def hcc_teacher_dose(
    in_channels: int = 3, num_classes: int = 3, width: int = 24, **kwargs: object
) -> HCCTeacherDose:
    """Dose-aware CT teacher."""
    return HCCTeacherDose(in_channels, num_classes, width, **kwargs)  # type: ignore[arg-type]
