"""What a picture of a prediction shows: the scan, a map over it, the lesion outlined.

The grader reads a 96 mm crop; a picture of the crop alone hides where in the patient it
lies. Where the task has a segmenter, pictures are drawn on the overview (the whole scan on
the segmenter's grid, abdominal window), the map shown only over the voxels the grader
read, the lesion outlined, on the lesion's largest slice by default. Other predictions are
drawn on the model input's own grid, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.explain.case import StoredCase
from app.explain.render import PLANE_AXIS, Plane, overlay_png
from models.contract import grid_of, map_to_grid, to_tensor_layout
from models.segmenter import get_segmenter_spec, liver_and_lesion, mask_on_grid, normalize_intensity


@dataclass(frozen=True)
class View:
    image: np.ndarray  # (D, H, W)
    map: np.ndarray  # (D, H, W), or coarser covering the image's field of view
    outline: np.ndarray | None  # (D, H, W) bool: the lesion
    where: np.ndarray | None  # (D, H, W) bool: the voxels the map covers
    image_range: tuple[float, float] | None

    def slices(self, plane: Plane) -> int:
        return int(self.image.shape[PLANE_AXIS[plane]])


def case_view(case: StoredCase, map_dhw: np.ndarray) -> View:
    """The picture of `map_dhw` (on the model grid, any coarser shape) for `case`."""
    if case.overview is None:
        outline = None
        if case.mask is not None:
            _, lesion = liver_and_lesion(mask_on_grid(case.mask, case.grid))
            outline = lesion if lesion.any() else None
        return View(case.image[case.reference_channel], map_dhw, outline, None, None)
    grid = grid_of(case.overview)
    on_overview = to_tensor_layout(map_to_grid(map_dhw, case.grid, grid).array)
    covered = to_tensor_layout(map_to_grid(np.ones_like(map_dhw), case.grid, grid, order=0).array) > 0.5
    outline = None
    if case.mask is not None:
        _, lesion = liver_and_lesion(mask_on_grid(case.mask, grid))
        outline = lesion if lesion.any() else None
    window = normalize_intensity(np.array([-150.0, 250.0]), get_segmenter_spec(case.task.name))
    return View(
        to_tensor_layout(case.overview.array),
        on_overview,
        outline,
        covered,
        (float(window[0]), float(window[1])),
    )


def view_png(view: View, *, plane: Plane, index: int | None, title: str, label: str) -> tuple[bytes, int]:
    return overlay_png(
        view.image,
        view.map,
        plane=plane,
        index=index,
        title=title,
        label=label,
        outline_dhw=view.outline,
        where_dhw=view.where,
        image_range=view.image_range,
    )
