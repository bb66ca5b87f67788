"""The mask a prediction used, as a result: on the sent image's grid, as NIfTI or DICOM SEG.

For HCC the map is LiTS-style, liver 1 and lesion 2, whoever made it (a lesion-only mask
from a client keeps its lesion as 2 and has no liver). The segmenter's mask is brought onto
the sent grid from its probabilities (`models.segmenter.labels_on_grid`: smooth boundaries
on 0.7 mm pixels, not 3 mm blocks); a client's by nearest neighbour, as sent. Tasks without
a segmenter (BraTS for now) return the client's labels as they are.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from app.errors import NotAvailableError
from app.explain import dicom_out
from app.explain.case import Localized
from models.contract import Volume, grid_of, resample, to_tensor_layout
from models.segmenter import SEGMENTERS, labels_on_grid, liver_and_lesion


def mask_on_reference(localized: Localized) -> Volume:
    """The mask on the reference image's grid (``[x, y, z]`` uint8); 409 without a mask."""
    mask = localized.mask
    if mask is None:
        raise NotAvailableError(
            "this prediction used no mask: none was sent and no segmenter serves its task", field="id"
        )
    target = localized.reference_grid
    if localized.probabilities is not None:
        labels = to_tensor_layout(np.rint(mask.array).astype(np.uint8))
        array = labels_on_grid(localized.probabilities, labels, grid_of(mask), target)
        return Volume(array, target.affine)
    raw = np.rint(resample(mask.array.astype(np.float32), mask.affine, target, order=0)).astype(np.uint8)
    if localized.task.name not in SEGMENTERS:
        return Volume(raw, target.affine)
    organ, lesion = liver_and_lesion(raw)
    array = np.zeros(raw.shape, dtype=np.uint8)
    if organ is not None:
        array[organ] = 1
    array[lesion] = 2
    return Volume(array, target.affine)


def mask_seg(localized: Localized, headers: list[Dataset], provenance: dicom_out.Provenance) -> Dataset:
    """The mask as a DICOM SEG on the source frames: segments Liver and Lesion (HCC), marked
    as the model's (algorithm name and version) or as the client's."""
    labels = mask_on_reference(localized)
    if localized.task.name in SEGMENTERS:
        present = [value for value in (1, 2) if np.any(labels.array == value)]
        names = {1: dicom_out.LIVER, 2: dicom_out.LESION}
        renumbered = np.zeros(labels.array.shape, dtype=np.uint8)
        for number, value in enumerate(present, start=1):
            renumbered[labels.array == value] = number
        segments: list[dicom_out.Segment | str] = [names[v] for v in present]
        labels = Volume(renumbered, labels.affine)
    else:
        values = [int(v) for v in np.unique(labels.array) if v > 0]
        renumbered = np.searchsorted([0, *values], labels.array).astype(np.uint8)
        segments = [f"label {v}" for v in values]
        labels = Volume(renumbered, labels.affine)
    if not segments:
        raise NotAvailableError("the mask is empty on the source grid: no SEG to make", field="id")
    return dicom_out.segmentation(
        labels,
        headers,
        segments,
        provenance,
        what="REACT-KD segmentation" if localized.mask_source == "model" else "REACT-KD mask used",
        automatic=localized.mask_source == "model",
        series_offset=5,
    )
