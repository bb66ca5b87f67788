"""Shape primitives shared by the synthetic generators: grids in mm, ellipsoids, smooth noise.

Phantoms are described in RAS+ millimetres and sampled on whatever voxel grid a case uses, so
the same anatomy can be written at 3 mm or 8 mm, and an "external" cohort can store its
voxels in another orientation without the generator noticing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class GridSpec:
    """An axis-aligned voxel grid: ``shape`` (x, y, z) voxels, signed ``step`` mm, ``origin`` mm.

    A negative step stores that axis reversed (as a NIfTI converted from DICOM's LPS does).
    """

    shape: tuple[int, int, int]
    step: tuple[float, float, float]
    origin: tuple[float, float, float]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return (abs(self.step[0]), abs(self.step[1]), abs(self.step[2]))

    @property
    def affine(self) -> np.ndarray:
        affine = np.diag([*self.step, 1.0])
        affine[:3, 3] = self.origin
        return affine

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """RAS+ coordinates (mm) of the voxel centres, shaped to broadcast as ``[x, y, z]``."""
        x = self.origin[0] + self.step[0] * np.arange(self.shape[0], dtype=np.float32)
        y = self.origin[1] + self.step[1] * np.arange(self.shape[1], dtype=np.float32)
        z = self.origin[2] + self.step[2] * np.arange(self.shape[2], dtype=np.float32)
        return x[:, None, None], y[None, :, None], z[None, None, :]

    def center(self) -> np.ndarray:
        """RAS+ centre of the grid in mm."""
        return np.array(self.origin) + np.array(self.step) * (np.array(self.shape) - 1) / 2.0


def centered_grid(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    center: tuple[float, float, float],
    flip_xy: bool = False,
) -> GridSpec:
    """A grid of `shape` voxels of `spacing` mm centred on `center`; `flip_xy` stores it LPS-wise."""
    sign = np.array([-1.0, -1.0, 1.0]) if flip_xy else np.ones(3)
    step = sign * np.asarray(spacing, dtype=np.float64)
    origin = np.asarray(center, dtype=np.float64) - step * (np.asarray(shape) - 1) / 2.0
    return GridSpec(
        shape=tuple(int(s) for s in shape),  # type: ignore[arg-type]
        step=tuple(float(s) for s in step),  # type: ignore[arg-type]
        origin=tuple(float(o) for o in origin),  # type: ignore[arg-type]
    )


def ellipsoid_radius(
    axes: tuple[np.ndarray, np.ndarray, np.ndarray],
    center: np.ndarray | tuple[float, ...],
    semi_axes: np.ndarray | tuple[float, ...],
) -> np.ndarray:
    """Normalised radius (< 1 inside) of an axis-aligned ellipsoid; an infinite semi-axis ignores it."""
    total = np.zeros((), dtype=np.float32)
    for coord, c, s in zip(axes, center, semi_axes, strict=True):
        if np.isfinite(s):
            total = total + ((coord - np.float32(c)) / np.float32(s)) ** 2
    # Broadcast to the full grid so masks of ignored axes still index 3D arrays.
    full = np.broadcast_shapes(*(a.shape for a in axes))
    return np.broadcast_to(np.sqrt(total), full)


def smooth_noise(rng: np.random.Generator, grid: GridSpec, scale_mm: float) -> np.ndarray:
    """Zero-mean, unit-std random field with features about `scale_mm` across, on `grid`.

    Drawn on a coarse lattice (a few voxels per feature) and interpolated up one axis at a
    time, which costs a fraction of filtering full-resolution noise.
    """
    coarse_step = scale_mm / 2.0
    extent = np.array(grid.shape) * np.array(grid.spacing)
    coarse_shape = np.maximum(np.ceil(extent / coarse_step).astype(int) + 2, 4)
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape).astype(np.float32), 1.0)
    coarse /= max(float(coarse.std()), 1e-6)
    field = coarse
    for axis, (n, spacing) in enumerate(zip(grid.shape, grid.spacing, strict=True)):
        field = _upsample_axis(field, axis, n, spacing / coarse_step)
    return np.ascontiguousarray(field, dtype=np.float32)


def _upsample_axis(array: np.ndarray, axis: int, n_out: int, step: float) -> np.ndarray:
    """Linear interpolation of `array` along `axis` at positions ``0.5 + i * step``."""
    n_in = array.shape[axis]
    pos = 0.5 + np.arange(n_out) * step
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    frac = np.clip(pos - lo, 0.0, 1.0).astype(np.float32)
    shape = [1] * array.ndim
    shape[axis] = n_out
    frac = frac.reshape(shape)
    a0 = np.take(array, lo, axis=axis)
    a1 = np.take(array, lo + 1, axis=axis)
    return a0 + (a1 - a0) * frac


def gaussian_blur_mm(array: np.ndarray, fwhm_mm: float, spacing: tuple[float, ...]) -> np.ndarray:
    """Gaussian blur with a full width at half maximum of `fwhm_mm`."""
    sigma = [fwhm_mm / 2.3548 / s for s in spacing]
    return ndimage.gaussian_filter(array, sigma, mode="nearest")


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write `array` with `affine` as NIfTI-1, spacing and mm units in the header, both forms set."""
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units(xyz="mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))
