"""GET /v1/explain/{id}[/attention|/attribution|/graph]: why a prediction came out as it did."""

from __future__ import annotations

import io
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError

from app.api.deps import GateDep, MetricsDep, ModelsDep, SettingsDep, StoreDep
from app.errors import NotAvailableError
from app.explain import attribution as attributions
from app.explain.case import Localized, StoredCase, load_localized, load_stored_case
from app.explain.dicom_out import parametric_map, secondary_capture
from app.explain.graph import Attribution, build_graph, prototype_distances
from app.explain.render import Plane
from app.explain.segmentation import mask_on_reference
from app.explain.views import View, case_view, view_png
from app.ingest.nifti import nifti_bytes
from app.pacs.publish import instance, last_report, publish
from app.pacs.results import Kind, build_results, require_references, source_headers
from app.pacs.schemas import ResultIndex, StoreReport
from app.runtime import ServedModels
from app.schemas import ExplanationIndex, ExplanationLink, RegionGraph
from app.store import Store, npz_bytes
from models.contract import map_to_grid

router = APIRouter(tags=["explain"])

PNG, NIFTI, DICOM = "image/png", "application/gzip", "application/dicom"
PlaneQuery = Annotated[Plane, Query(description="plane of the PNG view")]
# No `ge=0` here: `_checked_slice` refuses negative and too-large slices alike, with the range.
SliceQuery = Annotated[
    int | None,
    Query(alias="slice", description="model-grid slice, 0 to the plane's slice count - 1; default: peak"),
]


def _case(store: Store, prediction_id: str) -> StoredCase:
    return load_stored_case(store, store.get(prediction_id))


def _localized(store: Store, prediction_id: str) -> Localized:
    return load_localized(store, store.get(prediction_id))


def _download(data: bytes, media_type: str, filename: str) -> Response:
    return Response(
        data, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )


def _checked_slice(view: View, plane: Plane, index: int | None) -> int | None:
    """`index` if it is a slice of the picture's grid in `plane`; a 422 giving the range otherwise.

    The renderer would clamp it: a client asking for slice 500 would get the last slice and
    could take it for the one it asked for.
    """
    count = view.slices(plane)
    if index is None or 0 <= index < count:
        return index
    message = (
        f"slice {index} is outside the picture's grid: {plane} slices run from 0 to {count - 1}; "
        "omit `slice` for the lesion's largest slice (or the peak of the map)"
    )
    raise RequestValidationError([{"type": "value_error", "loc": ("query", "slice"), "msg": message}])


def _render(
    case: StoredCase, map_dhw: np.ndarray, fmt: str, plane: Plane, index: int | None, what: str
) -> Response:
    """A map over the model grid as PNG overlay or as NIfTI on the sent image's grid."""
    name = case.prediction.id
    if fmt == "png":
        view = case_view(case, map_dhw)
        label = case.task.classes[case.class_index]
        png, shown = view_png(
            view,
            plane=plane,
            index=_checked_slice(view, plane, index),
            title=f"{what} for {label} on {case.reference_name}",
            label=what,
        )
        return Response(png, media_type=PNG, headers={"X-Slice": str(shown)})
    volume = map_to_grid(map_dhw, case.grid, case.reference_grid)
    return _download(nifti_bytes(volume), NIFTI, f"{name}-{what}.nii.gz")


@router.get("/explain/{prediction_id}", response_model=ExplanationIndex)
async def explain_index(prediction_id: str, store: StoreDep, models: ModelsDep) -> ExplanationIndex:
    """List the explanations available for a prediction."""
    prediction = await run_in_threadpool(store.get, prediction_id)
    base = f"/v1/explain/{prediction_id}"
    links = prediction.response.get("links", {})
    segmentation = ExplanationLink(
        kind="segmentation",
        href=f"{base}/segmentation",
        formats=["nifti", "dicom"] if "segmentation_dicom" in links else ["nifti"],
        available="segmentation" in links,
        note=None
        if "segmentation" in links
        else "no mask: the study came without one and no segmenter serves the task",
    )
    if not prediction.response.get("gradable", True):
        return ExplanationIndex(
            id=prediction_id,
            task=prediction.task,
            label=None,
            explanations=[segmentation],
        )
    served = models.served.get(prediction.task)
    has_weights = bool(
        served and served.card.get("weights_file") and (served.folder / served.card["weights_file"]).is_file()
    )
    has_prototypes = bool(served and served.card.get("prototypes"))
    # The prediction links DICOM attention only when it can be made (see `predict`).
    has_dicom = "attention_dicom" in prediction.response.get("links", {})
    return ExplanationIndex(
        id=prediction_id,
        task=prediction.task,
        label=prediction.response.get("label"),
        explanations=[
            ExplanationLink(
                kind="attention",
                href=f"{base}/attention",
                formats=["png", "nifti", "dicom"] if has_dicom else ["png", "nifti"],
                note=None if has_dicom else "no DICOM: the source series lacks a UID DICOM outputs reference",
            ),
            ExplanationLink(
                kind="attribution",
                href=f"{base}/attribution",
                formats=["png", "nifti"],
                methods=["gradcam", "integrated_gradients", "occlusion"] if has_weights else ["occlusion"],
                note=None
                if has_weights
                else "no PyTorch weights beside the model: gradient methods unavailable",
            ),
            ExplanationLink(
                kind="graph",
                href=f"{base}/graph",
                note=None if has_prototypes else "the model card has no class prototypes: no GW distances",
            ),
            segmentation,
        ],
    )


@router.get("/explain/{prediction_id}/attention", response_class=Response)
async def attention(
    prediction_id: str,
    store: StoreDep,
    metrics: MetricsDep,
    format: Literal["png", "nifti", "dicom"] = "png",
    plane: PlaneQuery = "axial",
    slice_index: SliceQuery = None,
) -> Response:
    """The model's spatial attention as a PNG overlay, NIfTI on the sent grid, or DICOM."""

    def work() -> Response:
        with metrics.stage("explain"):
            case = _case(store, prediction_id)
            map_dhw = case.outputs["attention"][0]
            if format != "dicom":
                return _render(case, map_dhw, format, plane, slice_index, "attention")
            return _attention_dicom(case, store, map_dhw, plane, slice_index)

    return await run_in_threadpool(work)


def _attention_dicom(
    case: StoredCase, store: Store, map_dhw: np.ndarray, plane: Plane, index: int | None
) -> Response:
    headers = case.headers(store)
    description = f"REACT-KD attention ({case.task.name})"
    if case.reference_kind == "dicom" and headers:
        require_references(headers)
        volume = map_to_grid(map_dhw, case.grid, case.reference_grid)
        data = parametric_map(volume, headers, description)
    else:
        view = case_view(case, map_dhw)
        png, _ = view_png(
            view, plane=plane, index=_checked_slice(view, plane, index), title=description, label="attention"
        )
        data = secondary_capture(png, description, case.prediction.response.get("study", {}).get("study_uid"))
    return _download(data, DICOM, f"{case.prediction.id}-attention.dcm")


def _attribution(
    case: StoredCase, store: Store, models: ServedModels, method: str
) -> tuple[np.ndarray, float | None]:
    """The method's map on the model grid (computed once, then cached) and, for integrated
    gradients, the logit rise its sum should equal."""
    cached = store.read_cache(case.prediction, f"{method}.npz")
    if cached is not None:
        with np.load(io.BytesIO(cached)) as npz:
            return npz["map"], float(npz["logit_rise"]) if "logit_rise" in npz.files else None
    model = models.for_task(case.task.name)
    if model.name != case.prediction.model:
        raise NotAvailableError(
            f"the prediction was made by {case.prediction.model}, now {model.name} serves; "
            "attributions need the original model",
            field="method",
        )
    try:
        map_dhw, rise = attributions.compute(method, case, model)
    except FileNotFoundError as exc:
        raise NotAvailableError(
            f"{method} needs the model's PyTorch weights: {exc}", field="method"
        ) from None
    data = npz_bytes(map=map_dhw) if rise is None else npz_bytes(map=map_dhw, logit_rise=np.asarray(rise))
    store.write_cache(case.prediction, f"{method}.npz", data)
    return map_dhw, rise


@router.get("/explain/{prediction_id}/attribution", response_class=Response)
async def attribution(
    prediction_id: str,
    store: StoreDep,
    models: ModelsDep,
    gate: GateDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    method: Literal["gradcam", "integrated_gradients", "occlusion"] = "gradcam",
    format: Literal["png", "nifti"] = "png",
    plane: PlaneQuery = "axial",
    slice_index: SliceQuery = None,
) -> Response:
    """An attribution map of the predicted class (computed on demand, then cached)."""

    def work() -> Response:
        with metrics.stage("explain"):
            case = _case(store, prediction_id)
            if format == "png":  # before an attribution that may take long
                _checked_slice(case_view(case, case.outputs["attention"][0]), plane, slice_index)
            map_dhw, _ = _attribution(case, store, models, method)
            # Integrated gradients are signed (they add up to the logit's rise); shown as magnitude.
            shown = np.abs(map_dhw) if method == "integrated_gradients" else map_dhw
            return _render(case, shown, format, plane, slice_index, method)

    return await gate.run(work, timeout=settings.request_timeout_s)


@router.get("/explain/{prediction_id}/graph", response_model=RegionGraph)
async def graph(
    prediction_id: str,
    store: StoreDep,
    models: ModelsDep,
    gate: GateDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> RegionGraph:
    """The region graph of the case and its GW distance to each class prototype."""

    def work() -> RegionGraph:
        with metrics.stage("explain"):
            case = _case(store, prediction_id)
            try:
                ig_map, rise = _attribution(case, store, models, "integrated_gradients")
                attribution = Attribution(ig_map, float(rise if rise is not None else np.nan))
            except NotAvailableError:
                attribution = None
            nodes, edges, case_graph, source, contribution = build_graph(case, attribution)
            served = models.served.get(case.task.name)
            prototypes = served.card.get("prototypes") if served is not None else None
            gw = prototype_distances(case_graph, prototypes) if prototypes and len(nodes) > 1 else None
            notes = []
            if source == "supervoxels":
                notes.append("no mask: the regions are supervoxels of the model input, not anatomy")
            if attribution is None:
                notes.append("no PyTorch weights beside the model: contribution is mean attention")
            return RegionGraph(
                id=prediction_id,
                regions=source,
                predicted_class=case.task.classes[case.class_index],
                nodes=nodes,
                edges=edges,
                contribution=contribution,
                prototype_distances=gw,
                note="; ".join(notes) or None,
            )

    return await gate.run(work, timeout=settings.request_timeout_s)


@router.get("/explain/{prediction_id}/segmentation", response_class=Response)
async def segmentation(
    prediction_id: str,
    store: StoreDep,
    metrics: MetricsDep,
    format: Literal["nifti", "dicom"] = "nifti",
) -> Response:
    """The mask the grade used (liver 1, lesion 2): NIfTI on the sent image's grid, or a DICOM SEG."""

    def work() -> Response:
        with metrics.stage("explain"):
            localized = _localized(store, prediction_id)
            if format == "nifti":
                cached = store.read_cache(localized.prediction, "segmentation.nii.gz")
                if cached is None:
                    cached = nifti_bytes(mask_on_reference(localized))
                    store.write_cache(localized.prediction, "segmentation.nii.gz", cached)
                return _download(cached, NIFTI, f"{prediction_id}-segmentation.nii.gz")
            results = build_results(localized, store)
            if "mask" not in results:
                raise NotAvailableError("this prediction used no mask: no segmentation to send", field="id")
            return _download(results["mask"].data, DICOM, f"{prediction_id}-segmentation.dcm")

    return await run_in_threadpool(work)


@router.get("/explain/{prediction_id}/dicom", response_model=ResultIndex)
async def dicom_results(prediction_id: str, store: StoreDep, metrics: MetricsDep) -> ResultIndex:
    """The DICOM results (SR, Parametric Map, SEG, capture): UIDs, links, where they were stored."""

    def work() -> ResultIndex:
        with metrics.stage("explain"):
            case = _localized(store, prediction_id)
            results = build_results(case, store)
            return ResultIndex(
                id=prediction_id,
                results=[instance(prediction_id, r) for r in results.values()],
                stored=last_report(case, store),
            )

    return await run_in_threadpool(work)


@router.get("/explain/{prediction_id}/dicom/{kind}", response_class=Response)
async def dicom_result(prediction_id: str, kind: Kind, store: StoreDep, metrics: MetricsDep) -> Response:
    """One DICOM result instance (Part-10 file) of a prediction made from a DICOM series."""

    def work() -> Response:
        with metrics.stage("explain"):
            results = build_results(_localized(store, prediction_id), store)
            if kind not in results:
                raise NotAvailableError(
                    f"no {kind} result for this prediction (not graded, no mask, or no region on the "
                    "source grid)"
                )
            return _download(results[kind].data, DICOM, f"{prediction_id}-{kind}.dcm")

    return await run_in_threadpool(work)


@router.post("/explain/{prediction_id}/store", response_model=StoreReport)
async def store_results(
    prediction_id: str, store: StoreDep, settings: SettingsDep, metrics: MetricsDep
) -> StoreReport:
    """Send the DICOM results to the configured STOW-RS destination (same instances every time)."""

    def work() -> StoreReport:
        with metrics.stage("store"):
            case = _localized(store, prediction_id)
            # Results that cannot be made are said before asking for a destination that would not help.
            source_headers(case, store)
            return publish(case, store, settings)

    return await run_in_threadpool(work)
