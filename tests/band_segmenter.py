"""A segmenter for tests that knows where `tests.common.ct_volume`'s liver and lesion are.

The service's tests need a segmenter whose answer is known: a trained U-Net is too slow to
ship with them and a random one labels noise. `BandSegmenter` labels by intensity bands,
as a reader of that phantom would: liver where the CT is 85-200 HU, lesion where it is
20-95 HU *and* the liver fills most of the 45 mm around it (the body is 50 HU too, so the
band alone would call it lesion). Its few constants are buffers, not trained weights; it
is exported to ONNX by the same `training.export.export_segmenter` as the real one, so the
served path (cascade, windows, ONNX Runtime, card checks) is the one users get.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.registry import register_segmenter
from models.segmenter import get_segmenter_spec, normalize_intensity

SHARPNESS_HU = 5.0  # width of a band's soft edge


class BandSegmenter(nn.Module):
    def __init__(self, spacing_mm: float, context_mm: float = 45.0) -> None:
        super().__init__()
        spec = get_segmenter_spec("hcc")

        def level(hu: float) -> float:
            return float(normalize_intensity(np.array([hu]), spec)[0])

        self.per_hu = (level(250.0) - level(-150.0)) / 400.0
        self.liver = (level(85.0), level(200.0))
        self.lesion = (level(20.0), level(95.0))
        k = 2 * round(context_mm / spacing_mm / 2) + 1  # odd: centred on the voxel
        self.pools = nn.ModuleList(
            nn.AvgPool3d(size, stride=1, padding=tuple(s // 2 for s in size), count_include_pad=False)
            for size in ((k, 1, 1), (1, k, 1), (1, 1, k))
        )

    def band(self, x: torch.Tensor, low: float, high: float) -> torch.Tensor:
        width = SHARPNESS_HU * self.per_hu
        return torch.sigmoid((x - low) / width) * torch.sigmoid((high - x) / width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        liver = self.band(x, *self.liver)
        context = liver
        for pool in self.pools:
            context = pool(context)
        lesion = self.band(x, *self.lesion) * torch.sigmoid(20.0 * (context - 0.55))
        return torch.cat([torch.zeros_like(x), 8.0 * (liver - 0.5), 8.0 * (lesion - 0.5)], dim=1)


@register_segmenter
def band_segmenter(spacing_mm: float = 3.0, context_mm: float = 45.0) -> nn.Module:
    return BandSegmenter(spacing_mm, context_mm)


def band_checkpoints() -> dict[str, dict[str, Any]]:
    """Checkpoints of both cascade stages, in the layout `train segmenter` writes."""
    spec = get_segmenter_spec("hcc")
    out = {}
    for name in ("coarse", "fine"):
        kwargs = {"spacing_mm": spec.stage(name).spacing_mm[0]}
        model = band_segmenter(**kwargs)
        out[name] = {
            "model": "band_segmenter",
            "model_kwargs": kwargs,
            "task": "hcc",
            "role": "segmenter",
            "stage": name,
            "state_dict": model.state_dict(),
        }
    return out


def export_band_segmenter(folder: Path, name: str = "hcc_band_segmenter") -> dict[str, Any]:
    from training.export import export_segmenter

    stages = band_checkpoints()
    return export_segmenter(
        stages["coarse"],
        stages["fine"],
        folder / f"{name}.onnx",
        training_data={"synthetic": True, "description": "intensity bands for tests, not trained"},
    )
