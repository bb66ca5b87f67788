"""The mask a prediction used, as a result: on the sent image's grid, as NIfTI or DICOM SEG.

For HCC the map is LiTS-style, liver 1 and lesion 2, whoever made it (a lesion-only mask
from a client keeps its lesion as 2 and has no liver); for BraTS its labels 1 (necrotic
core), 2 (edema) and 4 (enhancing tumour). The segmenter's mask is brought onto the sent
grid from its probabilities (`models.segmenter.labels_on_grid`: smooth boundaries on 0.7 mm
pixels, not 3 mm blocks); a client's by nearest neighbour, as sent.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from app.errors import NotAvailableError
from app.explain import dicom_out
from app.explain.case import Localized
from models.contract import Volume, grid_of, resample, to_tensor_layout
from models.segmenter import SEGMENTERS, labels_on_grid, liver_and_lesion

# What each value of a task's mask is, in a SEG.
SEGMENTS: dict[str, dict[int, dicom_out.Segment]] = {
    "hcc": {1: dicom_out.LIVER, 2: dicom_out.LESION},
    "brats": {1: dicom_out.NECROTIC_CORE, 2: dicom_out.EDEMA, 4: dicom_out.ENHANCING_TUMOR},
}


def mask_on_reference(localized: Localized) -> Volume:
    """The mask on the reference image's grid (``[x, y, z]`` uint8 mask values); 409 without
    a mask."""
    mask = localized.mask
    if mask is None:
        raise NotAvailableError(
            "this prediction used no mask: none was sent and no segmenter serves its task", field="id"
        )
    target = localized.reference_grid
    spec = SEGMENTERS.get(localized.task.name)
    if localized.probabilities is not None and spec is not None:
        labels = spec.label_indices(to_tensor_layout(np.rint(mask.array).astype(np.int64)))
        array = labels_on_grid(localized.probabilities, labels, grid_of(mask), target)
        return Volume(spec.label_values()[array], target.affine)
    raw = np.rint(resample(mask.array.astype(np.float32), mask.affine, target, order=0)).astype(np.uint8)
    if spec is None or not spec.has_organ:  # labels that name themselves (BraTS')
        return Volume(raw, target.affine)
    organ, lesion = liver_and_lesion(raw)
    array = np.zeros(raw.shape, dtype=np.uint8)
    if organ is not None:
        array[organ] = 1
    array[lesion] = 2
    return Volume(array, target.affine)


def mask_seg(
    localized: Localized,
    headers: list[Dataset],
    provenance: dicom_out.Provenance,
    on_reference: Volume | None = None,
) -> Dataset:
    """The mask as a DICOM SEG on the source frames: segments Liver and Lesion (HCC), a
    glioma's necrotic core, edema and enhancing tumour (BraTS), marked as the model's
    (algorithm name and version) or as the client's. `on_reference`: the mask already
    brought there (`mask_on_reference`), if it was."""
    labels = on_reference if on_reference is not None else mask_on_reference(localized)
    named = SEGMENTS.get(localized.task.name, {})
    values = [int(v) for v in np.unique(labels.array) if v > 0]
    renumbered = np.searchsorted([0, *values], labels.array).astype(np.uint8)
    segments: list[dicom_out.Segment | str] = [named.get(v, f"label {v}") for v in values]
    if not segments:
        raise NotAvailableError("the mask is empty on the source grid: no SEG to make", field="id")
    return dicom_out.segmentation(
        Volume(renumbered, labels.affine),
        headers,
        segments,
        provenance,
        what="REACT-KD segmentation" if localized.mask_source == "model" else "REACT-KD mask used",
        automatic=localized.mask_source == "model",
        series_offset=5,
    )
