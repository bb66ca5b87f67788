"""Warnings about the input that the client should read beside the prediction.

Heuristics, documented so their limits are clear:

- Missing optional modalities (PET for `hcc`): the student was trained to answer without
  them, but with less information.
- Unusual spacing: a voxel side larger than 1.5 times the model grid's spacing (detail is
  lost when upsampling) or smaller than 0.3 mm (an unusual reconstruction).
- Low dose (CT): noise is estimated in soft tissue (-100..200 HU) as the median absolute
  deviation of the image minus its 3x3 in-plane mean, scaled to a Gaussian sigma. Portal
  venous CT at routine dose has about 10-20 HU noise; above 30 HU suggests a low-dose or
  very thin-slice scan, where the student is less reliable (noise grows as 1/sqrt(dose)).
- No liver (`hcc`): fewer than 100 ml of voxels in the enhanced-liver range 60..160 HU
  means the field of view probably misses the liver.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from models.contract import Volume
from models.tasks import TaskSpec

NOISE_WARN_HU = 30.0
LIVER_HU = (60.0, 160.0)
MIN_LIVER_ML = 100.0


def _in_plane_mean_3x3(array: np.ndarray) -> np.ndarray:
    """`ndimage.uniform_filter(array, size=(3, 3, 1))` (mirrored edges), as sums of shifted views.

    Agrees with scipy to float32 rounding, several times faster on a CT (scipy filters each
    line through a float64 buffer).
    """
    padded = np.pad(array, ((1, 1), (1, 1), (0, 0)), mode="symmetric")
    rows = padded[:-2] + padded[1:-1] + padded[2:]
    return (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) / np.asarray(9.0, dtype=array.dtype)


def _eroded(mask: np.ndarray) -> np.ndarray:
    """`ndimage.binary_erosion(mask)` (6-connected, outside counts as False), by shifted views."""
    out = np.zeros_like(mask)
    if min(mask.shape) < 3:
        return out
    inner = (slice(1, -1),) * 3
    core = mask[inner].copy(order="K")  # keep the layout (NIfTI arrays are Fortran-ordered)
    for axis in range(3):
        for shift in (slice(None, -2), slice(2, None)):
            view = list(inner)
            view[axis] = shift
            core &= mask[tuple(view)]
    out[inner] = core
    return out


def ct_noise_hu(volume: Volume) -> float | None:
    """Robust noise estimate (HU) in soft tissue, or None when too little soft tissue."""
    array = volume.array
    soft = (array > -100) & (array < 200)
    if soft.sum() < 500:
        return None
    residual = array - _in_plane_mean_3x3(array)
    # Both flattened in the same order, the input's memory order (cheap for Fortran-ordered
    # NIfTI arrays); the voxel order does not matter to a median.
    fortran = array.flags.f_contiguous and not array.flags.c_contiguous
    order: Literal["C", "F"] = "F" if fortran else "C"
    values = residual.ravel(order=order)[_eroded(soft).ravel(order=order)]
    if values.size < 500:
        return None
    mad = float(np.median(np.abs(values - np.median(values))))
    # residual of a 3x3 mean has variance sigma^2 * (1 - 1/9); MAD -> sigma by 1.4826.
    return 1.4826 * mad / np.sqrt(1 - 1 / 9)


def liver_ml(volume: Volume) -> float:
    lo, hi = LIVER_HU
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    return float(((volume.array >= lo) & (volume.array <= hi)).sum()) * voxel_ml


def input_warnings(volumes: dict[str, Volume], task: TaskSpec) -> list[str]:
    warnings = []
    for name in task.modalities:
        if name not in volumes and task.kind_of(name) == "pet":
            warnings.append(f"{name} missing: answered from the other modalities, with less information")
    for name, volume in volumes.items():
        spacing = volume.spacing
        coarse = max(task.spacing_mm) * 1.5
        if max(spacing) > coarse or min(spacing) < 0.3:
            warnings.append(
                f"{name}: unusual voxel spacing {tuple(round(s, 2) for s in spacing)} mm "
                f"(model grid {task.spacing_mm} mm)"
            )
    ct = volumes.get("ct") if "ct" in task.modalities else None
    if ct is not None:
        noise = ct_noise_hu(ct)
        if noise is not None and noise > NOISE_WARN_HU:
            warnings.append(
                f"ct: soft-tissue noise about {noise:.0f} HU suggests a low-dose scan; "
                "the prediction is less reliable"
            )
        if task.name == "hcc" and liver_ml(ct) < MIN_LIVER_ML:
            warnings.append(
                f"ct: under {MIN_LIVER_ML:.0f} ml of tissue in the liver range {LIVER_HU} HU; "
                "the field of view may not include the liver"
            )
    return warnings
