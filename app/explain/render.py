"""PNG overlays of a map on the reference image, on the model grid (RAS+, so planes are true).

Display follows the radiological convention: axial and coronal views show the patient's
right on the viewer's left; superior is up in coronal and sagittal views.
"""

from __future__ import annotations

import io
from typing import Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy import ndimage

Plane = Literal["axial", "coronal", "sagittal"]
PLANE_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}  # in [D, H, W] = [z, y, x]


def upsample(map_dhw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A coarse map zoomed to `shape` (block centres aligned as in `Grid.with_shape`)."""
    factors = [t / s for t, s in zip(shape, map_dhw.shape, strict=True)]
    out = ndimage.zoom(map_dhw.astype(np.float32), factors, order=1, mode="nearest", grid_mode=True)
    return out[tuple(slice(0, s) for s in shape)]


def peak_slice(map_dhw: np.ndarray, plane: Plane) -> int:
    return int(np.unravel_index(int(np.argmax(map_dhw)), map_dhw.shape)[PLANE_AXIS[plane]])


def _slice(volume: np.ndarray, plane: Plane, index: int) -> np.ndarray:
    """A 2D view ready for imshow (row 0 at the top)."""
    if plane == "axial":
        return volume[index][::-1, :]  # rows: anterior at top
    if plane == "coronal":
        return volume[:, index, :][::-1, :]  # rows: superior at top
    return volume[:, :, index][::-1, ::-1]  # superior at top, anterior on the left


def largest_slice(mask_dhw: np.ndarray, plane: Plane) -> int | None:
    """The slice of `plane` where `mask_dhw` is largest (None for an empty mask)."""
    axis = PLANE_AXIS[plane]
    areas = mask_dhw.sum(axis=tuple(a for a in range(3) if a != axis))
    return int(np.argmax(areas)) if areas.any() else None


def overlay_png(
    image_dhw: np.ndarray,
    map_dhw: np.ndarray,
    *,
    plane: Plane,
    index: int | None,
    title: str,
    label: str,
    outline_dhw: np.ndarray | None = None,
    where_dhw: np.ndarray | None = None,
    image_range: tuple[float, float] | None = None,
) -> tuple[bytes, int]:
    """PNG bytes of `map_dhw` (any coarser shape) over `image_dhw`, and the slice shown.

    `outline_dhw` (bool, the image's shape) is drawn as a contour (the lesion), and picks
    the default slice: where it is largest, else the map's peak. `where_dhw` limits the
    overlay to the voxels the map covers (a crop drawn over the whole scan); `image_range`
    windows the image (default: its own range).
    """
    full = upsample(map_dhw, image_dhw.shape)
    if index is None and outline_dhw is not None:
        index = largest_slice(outline_dhw, plane)
    if index is None:
        index = peak_slice(full, plane)
    index = int(np.clip(index, 0, image_dhw.shape[PLANE_AXIS[plane]] - 1))
    view = _slice(full, plane, index)
    if where_dhw is not None:
        view = np.ma.masked_where(~_slice(where_dhw, plane, index), view)
    covered = full[where_dhw] if where_dhw is not None and where_dhw.any() else full
    low, high = image_range if image_range is not None else (None, None)
    figure, axes = plt.subplots(figsize=(5, 5), dpi=100)
    try:
        axes.imshow(
            _slice(image_dhw, plane, index), cmap="gray", interpolation="nearest", vmin=low, vmax=high
        )
        shown = axes.imshow(
            view,
            cmap="inferno",
            alpha=0.45,
            vmin=float(covered.min()),
            vmax=float(covered.max()),
        )
        if outline_dhw is not None and _slice(outline_dhw, plane, index).any():
            axes.contour(
                _slice(outline_dhw, plane, index).astype(float), levels=[0.5], colors="cyan", linewidths=1.0
            )
        figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04, label=label)
        axes.set_title(f"{title}\n{plane} slice {index}", fontsize=9)
        axes.axis("off")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", bbox_inches="tight")
    finally:
        plt.close(figure)
    return buffer.getvalue(), index
