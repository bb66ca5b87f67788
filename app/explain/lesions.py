"""The lesions of a mask, measured and outlined as a radiologist reports them, for the SR.

A lesion is a 26-connected component of the mask's lesion voxels on the source series' grid
(as `app.explain.segmentation.mask_on_reference` gives it): HCC's label 2, or for tasks
whose labels are all tumour (BraTS: 1, 2, 4) the whole tumour. Each is measured by its
volume (voxel count) and its longest axial diameter (the largest distance between two
points of its outline on any slice), and outlined on its largest axial slice: the slice a
reader would measure it on, and the one an SR SCOORD points a viewer to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.distance import pdist
from skimage.measure import find_contours

from models.contract import Volume

# A report lists the largest few; the SEG of the mask holds them all.
MAX_LESIONS = 3
_CONNECTED = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class Lesion:
    """One lesion: `slice_index` is its largest slice (the source series' slice order);
    `outline` its boundary there as a closed polyline of (column, row) DICOM pixel
    coordinates (the top left pixel's centre is (0.5, 0.5))."""

    volume_ml: float
    diameter_mm: float
    slice_index: int
    outline: np.ndarray  # (N, 2), first point == last point


def lesion_voxels(labels: np.ndarray, has_organ: bool) -> np.ndarray:
    """HCC masks are liver 1 and lesion 2; masks without an organ label are all tumour."""
    return labels == 2 if has_organ else labels > 0


def _contours(plane_xy: np.ndarray) -> list[np.ndarray]:
    """Closed 0.5 iso-contours of a ``[column, row]`` plane, as (column, row) DICOM pixel
    coordinates: padded so a lesion on the edge of the image still gets a closed outline."""
    padded = np.pad(plane_xy.T.astype(np.float32), 1)  # [row, column]
    return [c[:, ::-1] - 0.5 for c in find_contours(padded, 0.5)]  # -1 (pad) +0.5 (centre)


def _longest_axial_diameter(component: np.ndarray, spacing_xy: np.ndarray) -> float:
    longest = 0.0
    for k in np.flatnonzero(component.any(axis=(0, 1))):
        points = np.concatenate(_contours(component[:, :, k])) * spacing_xy
        if len(points) > 1:
            longest = max(longest, float(pdist(points).max()))
    return longest


def measure_lesions(labels: Volume, has_organ: bool, limit: int = MAX_LESIONS) -> list[Lesion]:
    """The `limit` largest lesions of a ``[x, y, z]`` = ``[column, row, slice]`` label map on
    the source grid, largest first (none for a mask without lesion voxels)."""
    components, count = ndimage.label(lesion_voxels(labels.array, has_organ), structure=_CONNECTED)
    if count == 0:
        return []
    sizes = np.bincount(components.ravel())[1:]
    axes = np.asarray(labels.affine)[:3, :3]
    spacing_xy = np.linalg.norm(axes[:, :2], axis=0)
    voxel_ml = abs(float(np.linalg.det(axes))) / 1000.0
    lesions = []
    for index in np.argsort(-sizes, kind="stable")[:limit]:
        component = components == index + 1
        largest = int(np.argmax(component.sum(axis=(0, 1))))
        outline = max(_contours(component[:, :, largest]), key=len)
        if not np.array_equal(outline[0], outline[-1]):
            outline = np.vstack([outline, outline[:1]])
        lesions.append(
            Lesion(
                volume_ml=float(sizes[index]) * voxel_ml,
                diameter_mm=_longest_axial_diameter(component, spacing_xy),
                slice_index=largest,
                outline=outline,
            )
        )
    return lesions
