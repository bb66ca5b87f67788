"""Networks for glioma grading (LGG vs HGG) on BraTS-like MRI.

From "Cross-Architectural Knowledge Distillation in Medical Imaging: Multi-Scale Geometric
Feature Fusion for MRI Scan Classification" (Mantaqa and Khan): a hybrid teacher (a VGG19-
style CNN beside a Vision Transformer, their features concatenated) distils into an
EfficientNet student. Built here in 3D over (t1, t1ce, t2, flair) with REACT-KD's CBAM3D on
the last CNN stage, so both networks return the `ModelOutput` contract:

- `brats_student`: stride-2 stem, fused-MBConv stages (EfficientNetV2's block: 3x3x3
  expansion, 1x1x1 projection, residual when shapes match), optional MSGFF over the stages,
  CBAM3D, head.
- `brats_teacher_hybrid`: a VGG-style branch (double 3x3x3 convolutions then max-pooling,
  CBAM3D on its last stage) and a small ViT branch (patch embedding, learned positional
  embedding resized to the token grid, pre-norm transformer blocks); pooled features of both and
  the `present` vector feed a linear head. Attention and features come from the CNN branch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.cbam import CBAM3D
from models.layers import (
    ClassifierHead,
    ConvNormAct,
    GlobalPool,
    NormName,
    PoolName,
    check_positive,
    conv_type,
    mask_missing,
)
from models.registry import ModelOutput, register_model
from models.student import CBAMStudent
from models.tasks import BRATS


class FusedMBConv(nn.Module):
    """Fused inverted residual block of EfficientNetV2: a 3x3x3 expansion convolution (with
    the stride), then a 1x1x1 projection, residual when shapes match.

    EfficientNetV2 fuses the expand and depthwise convolutions of MBConv where depthwise
    convolutions run poorly; 3D depthwise convolutions are slow in PyTorch on CPU (a depthwise
    student measured about 3x slower here; ONNX Runtime not measured), so every block is fused.
    x: (N, in_channels, D, H, W) -> (N, out_channels, ceil(D / stride), ...).
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, expand: int = 2, norm: NormName = "group"
    ) -> None:
        super().__init__()
        check_positive("expand", expand)
        hidden = in_channels * expand
        self.block = nn.Sequential(
            ConvNormAct(3, in_channels, hidden, 3, stride=stride, norm=norm),
            ConvNormAct(3, hidden, out_channels, 1, norm=norm, act=False),
        )
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block: multi-head self-attention, then an MLP.

    tokens: (N, T, hidden) -> (N, T, hidden). Written out (rather than MONAI's block, which
    needs einops) with `scaled_dot_product_attention`, which exports to ONNX.
    """

    def __init__(self, hidden_size: int, mlp_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size must be divisible by num_heads ({num_heads}), got {hidden_size}")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(hidden_size)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, hidden_size)
        )
        self.dropout = nn.Dropout(dropout)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # (N, heads, T, c / heads)
        return self.out(y.transpose(1, 2).reshape(n, t, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.norm1(x)))
        return x + self.dropout(self.mlp(self.norm2(x)))


class BraTSStudent(CBAMStudent):
    """EfficientNet-style 3D student with CBAM3D.

    A stride-2 stem of `width` channels, two stride-2 fused-MBConv stages (2x and 4x
    `width`), one more residual block at stride 8, CBAM3D, head.
    forward(image (N, 4, D, H, W), present (N, 4)) -> ModelOutput with attention
    (N, 1, D/8, H/8, W/8) and features (N, 4*width, D/8, H/8, W/8) (ceil division).
    """

    def __init__(
        self,
        in_channels: int = 4,
        num_classes: int = 2,
        width: int = 12,
        msgff: bool = False,
        expand: int = 2,
        norm: NormName = "group",
        reduction: int = 8,
        dropout: float = 0.2,
        attention: bool = True,
        pool: PoolName = "topk",
    ) -> None:
        check_positive("in_channels", in_channels)
        check_positive("width", width)
        widths = (width, 2 * width, 4 * width)
        stem = ConvNormAct(3, in_channels, widths[0], 3, stride=2, norm=norm)
        stages = [
            FusedMBConv(widths[0], widths[1], stride=2, expand=expand, norm=norm),
            nn.Sequential(
                FusedMBConv(widths[1], widths[2], stride=2, expand=expand, norm=norm),
                FusedMBConv(widths[2], widths[2], expand=expand, norm=norm),
            ),
        ]
        super().__init__(
            stem, stages, widths, in_channels, num_classes, msgff, norm, reduction, dropout, attention, pool
        )


class VGGBranch(nn.Sequential):
    """VGG-style 3D CNN: a stride-2 stem, then stages of two 3x3x3 ConvNormAct separated by
    2x max-pooling (VGG19's layout, shortened and made 3D; the stem keeps full-resolution
    3D convolutions affordable on CPU).

    x: (N, C_in, D, H, W) -> (N, widths[-1], D / 2^len(widths), ...) (ceil division).
    """

    def __init__(self, in_channels: int, widths: Sequence[int], norm: NormName) -> None:
        layers: list[nn.Module] = [ConvNormAct(3, in_channels, widths[0], 3, stride=2, norm=norm)]
        in_channels = widths[0]
        for i, width in enumerate(widths):
            if i:
                layers.append(nn.MaxPool3d(2, ceil_mode=True))
            layers += [
                ConvNormAct(3, in_channels, width, 3, norm=norm),
                ConvNormAct(3, width, width, 3, norm=norm),
            ]
            in_channels = width
        super().__init__(*layers)


class ViTBranch(nn.Module):
    """A small 3D Vision Transformer: patch embedding, positional embedding, transformer blocks.

    The learned positional embedding lives on the token grid of `img_size` and is resized
    trilinearly when an input has another grid, so any input of at least one patch works.
    x: (N, C, D, H, W) -> pooled tokens (N, hidden_size) (mean over tokens after LayerNorm).
    """

    def __init__(
        self,
        in_channels: int,
        img_size: Sequence[int],
        patch_size: int = 16,
        hidden_size: int = 96,
        mlp_dim: int = 192,
        num_layers: int = 2,
        num_heads: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("patch_size", patch_size),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
        ):
            check_positive(name, value)
        grid = tuple(max(int(s) // patch_size, 1) for s in img_size)
        self.patch_size = patch_size
        self.embed = conv_type(3)(in_channels, hidden_size, patch_size, stride=patch_size)
        self.position = nn.Parameter(torch.zeros(1, hidden_size, *grid))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden_size, mlp_dim, num_heads, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(s < self.patch_size for s in x.shape[2:]):
            raise ValueError(f"input grid {tuple(x.shape[2:])} is smaller than one patch ({self.patch_size})")
        tokens = self.embed(x)  # (N, hidden, gd, gh, gw)
        position: torch.Tensor = self.position
        if position.shape[2:] != tokens.shape[2:]:
            position = F.interpolate(position, size=tokens.shape[2:], mode="trilinear", align_corners=False)
        tokens = (tokens + position).flatten(2).transpose(1, 2)  # (N, T, hidden)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens).mean(dim=1)


class BraTSTeacherHybrid(nn.Module):
    """Hybrid VGG + ViT teacher; CBAM3D on the CNN branch gives attention and features.

    forward(image (N, 4, D, H, W), present (N, 4)) -> ModelOutput with attention and
    features on the CNN branch's stride-8 grid.
    """

    def __init__(
        self,
        in_channels: int = 4,
        num_classes: int = 2,
        width: int = 16,
        img_size: Sequence[int] = BRATS.shape,
        patch_size: int = 16,
        hidden_size: int = 96,
        num_layers: int = 2,
        num_heads: int = 4,
        norm: NormName = "group",
        reduction: int = 8,
        dropout: float = 0.2,
        msgff: bool = False,
        pool: PoolName = "topk",
    ) -> None:
        super().__init__()
        check_positive("in_channels", in_channels)
        check_positive("width", width)
        if msgff:
            raise ValueError("brats_teacher_hybrid does not offer msgff; got msgff=True")
        widths = (width, 2 * width, 4 * width)
        self.cnn = VGGBranch(in_channels, widths, norm)
        self.cbam = CBAM3D(widths[-1], reduction)
        self.pool = GlobalPool(pool)
        self.vit = ViTBranch(
            in_channels, img_size, patch_size, hidden_size, 2 * hidden_size, num_layers, num_heads
        )
        self.head = ClassifierHead(2 * widths[-1] + hidden_size, in_channels, num_classes, dropout)
        self.num_features = widths[-1]

    def forward(self, image: torch.Tensor, present: torch.Tensor) -> ModelOutput:
        x = mask_missing(image, present)
        features, attention = self.cbam(self.cnn(x))
        pooled = torch.cat([self.pool(features), self.vit(x)], dim=1)
        return ModelOutput(self.head(pooled, present), attention, features)


@register_model
def brats_student(
    in_channels: int = 4, num_classes: int = 2, width: int = 12, msgff: bool = False, **kwargs: object
) -> BraTSStudent:
    """EfficientNet-style MRI student with CBAM3D; any subset of modalities."""
    return BraTSStudent(in_channels, num_classes, width, msgff, **kwargs)  # type: ignore[arg-type]


@register_model
def brats_teacher_hybrid(
    in_channels: int = 4, num_classes: int = 2, width: int = 16, **kwargs: object
) -> BraTSTeacherHybrid:
    """Hybrid VGG + ViT MRI teacher."""
    return BraTSTeacherHybrid(in_channels, num_classes, width, **kwargs)  # type: ignore[arg-type]
