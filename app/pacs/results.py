"""The DICOM results of one prediction: SR, attention Parametric Map, region SEG, RGB capture,
and the SEG of the mask the grade used (liver and lesion). A study not graded has only
its SR (saying so, with no grade) and its mask: nothing that could pass for a grade.

Built once from the stored case and kept in the prediction's cache folder, so downloads and
every STOW-RS push send the very same instances (same SOP Instance UIDs: storing twice
replaces, never duplicates). Results need a DICOM source series: they reference its
instances and lie on its geometry.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from app.errors import NotAvailableError
from app.explain import dicom_out
from app.explain.case import Localized, StoredCase, load_stored_case
from app.explain.graph import case_regions, node_name
from app.explain.lesions import Lesion, measure_lesions
from app.explain.segmentation import mask_on_reference, mask_seg
from app.explain.views import case_view, view_png
from app.identity import RESEARCH_ONLY
from app.pacs.references import missing_reference
from app.store import Store
from models.contract import Volume, map_to_grid
from models.segmenter import SEGMENTERS

log = logging.getLogger("app.pacs.results")

Kind = Literal["sr", "pm", "seg", "capture", "mask"]
KINDS: tuple[Kind, ...] = ("sr", "pm", "seg", "capture", "mask")
DESCRIPTIONS: dict[Kind, str] = {
    "sr": "Comprehensive 3D SR (TID 1500): each lesion outlined on its largest slice with its volume and "
    "longest axial diameter; the predicted class and class probabilities, or not gradable",
    "pm": "Parametric Map: attention on the source series' frames",
    "seg": "Segmentation: one segment per region of the region graph",
    "capture": "RGB Secondary Capture: attention overlay burned in",
    "mask": "Segmentation: the liver and the lesion the grade used (the segmenter's or the client's)",
}


@dataclass(frozen=True)
class ResultObject:
    """One result instance and the identifiers a client needs to find it in a PACS."""

    kind: Kind
    data: bytes
    sop_class_uid: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str


def _describe(kind: Kind, data: bytes) -> ResultObject:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return ResultObject(
        kind,
        data,
        str(ds.SOPClassUID),
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        str(ds.SOPInstanceUID),
    )


def provenance(case: Localized) -> dicom_out.Provenance:
    model = case.prediction.response.get("model", {})
    return dicom_out.Provenance(str(model.get("name", case.prediction.model)), str(model.get("version", "0")))


def mask_provenance(case: Localized) -> dicom_out.Provenance:
    """The segmenter that made the mask, or the grader's for a client's mask."""
    made_by = (case.prediction.response.get("mask") or {}).get("model")
    if not made_by:
        return provenance(case)
    return dicom_out.Provenance(str(made_by["name"]), str(made_by.get("version", "0")))


def attention_peak(attention: Volume) -> dicom_out.AttentionPeak:
    """The largest attention value on the source grid and its RAS+ position."""
    ijk = np.unravel_index(int(np.argmax(attention.array)), attention.array.shape)
    position = (attention.affine @ np.append(np.asarray(ijk, dtype=np.float64), 1.0))[:3]
    return dicom_out.AttentionPeak(float(attention.array[ijk]), tuple(float(v) for v in position))  # type: ignore[arg-type]


def region_labels(case: StoredCase) -> tuple[Volume, list[str]]:
    """Region-graph regions on the source grid (nearest neighbour), renumbered 1..N.

    Regions too small to keep a voxel on the source grid are left out (a SEG segment must
    not be empty); names match the graph explanation's node labels.
    """
    labels, graph, source = case_regions(case)
    on_source = map_to_grid(labels.astype(np.float32), case.grid, case.reference_grid, order=0)
    regions = np.rint(on_source.array).astype(np.int64)
    out = np.zeros(regions.shape, dtype=np.uint16)
    names: list[str] = []
    for region in graph.regions:
        inside = regions == int(region)
        if inside.any():
            names.append(node_name(case, int(region), source))
            out[inside] = len(names)
    return Volume(out, on_source.affine), names


def case_lesions(localized: Localized, on_reference: Volume) -> list[Lesion]:
    """The largest lesions of the prediction's mask on the source grid (`mask_on_reference`)."""
    spec = SEGMENTERS.get(localized.task.name)
    return measure_lesions(on_reference, has_organ=spec is not None and spec.has_organ)


def _build(localized: Localized, store: Store, headers: list[Dataset]) -> dict[Kind, Dataset]:
    made_by = provenance(localized)
    response = localized.prediction.response
    objects: dict[Kind, Dataset] = {}
    lesions: list[Lesion] = []
    if localized.mask is not None:
        on_reference = mask_on_reference(localized)  # once: the SEG and the SR's lesions
        objects["mask"] = mask_seg(localized, headers, mask_provenance(localized), on_reference)
        lesions = case_lesions(localized, on_reference)
    if not localized.gradable:
        objects["sr"] = dicom_out.structured_report(
            headers,
            task=localized.task.name,
            label=None,
            probabilities={},
            provenance=made_by,
            lesions=lesions,
        )
        return objects
    case = load_stored_case(store, localized.prediction)
    attention_dhw = case.outputs["attention"][0]
    attention = map_to_grid(attention_dhw, case.grid, case.reference_grid)
    objects["sr"] = dicom_out.structured_report(
        headers,
        task=case.task.name,
        label=str(response["label"]),
        probabilities=response["probabilities"],
        provenance=made_by,
        peak=attention_peak(attention),
        lesions=lesions,
    )
    objects["pm"] = dicom_out.parametric_map_dataset(attention, headers, made_by)
    labels, names = region_labels(case)
    if names:
        objects["seg"] = dicom_out.segmentation(labels, headers, names, made_by)
    else:
        log.warning(
            "no region kept a voxel on the source grid: no SEG", extra={"prediction_id": case.prediction.id}
        )
    png, _ = view_png(
        case_view(case, attention_dhw),
        plane="axial",
        index=None,
        title=f"attention for {response['label']} ({RESEARCH_ONLY})",
        label="attention",
    )
    objects["capture"] = dicom_out.rgb_capture(png, headers[len(headers) // 2], made_by)
    return objects


def require_references(headers: Sequence[Dataset]) -> None:
    """Refuse, before building anything, results that could not name their source."""
    keyword = missing_reference(headers)
    if keyword is not None:
        raise NotAvailableError(
            f"the source series has no valid {keyword}: DICOM results cannot be placed on it; "
            "PNG and NIfTI outputs are available",
            field="id",
        )


def source_headers(case: Localized, store: Store) -> list[Dataset]:
    """The source series' headers, when DICOM results can be made from them (else 409)."""
    headers = case.headers(store)
    if case.reference_kind != "dicom" or not headers:
        raise NotAvailableError(
            "DICOM results reference a DICOM source series; this prediction was made from "
            f"{case.reference_kind} input. Use /v1/explain/{{id}}/attention?format=dicom for a capture",
            field="id",
        )
    require_references(headers)
    return headers


def build_results(case: Localized, store: Store) -> dict[Kind, ResultObject]:
    """The result instances of a prediction (built on first use, then read from the cache)."""
    cached = {kind: store.read_cache(case.prediction, f"results/{kind}.dcm") for kind in KINDS}
    if cached["sr"] is not None:
        return {kind: _describe(kind, data) for kind, data in cached.items() if data is not None}
    headers = source_headers(case, store)
    results = {kind: dicom_out.to_bytes(ds) for kind, ds in _build(case, store, headers).items()}
    # The SR goes last: its presence marks a complete set (see the cache check above).
    for kind in sorted(results, key=lambda k: k == "sr"):
        store.write_cache(case.prediction, f"results/{kind}.dcm", results[kind])
    return {kind: _describe(kind, data) for kind, data in results.items()}


def as_datasets(results: dict[Kind, ResultObject]) -> list[Dataset]:
    return [pydicom.dcmread(io.BytesIO(r.data)) for r in results.values()]
