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
from app.explain.case import Case, load_case
from app.explain.dicom_out import parametric_map, secondary_capture
from app.explain.graph import build_graph, prototype_distances
from app.explain.render import PLANE_AXIS, Plane, overlay_png
from app.ingest.nifti import nifti_bytes
from app.pacs.publish import instance, last_report, publish
from app.pacs.results import Kind, build_results, require_references, source_headers
from app.pacs.schemas import ResultIndex, StoreReport
from app.runtime import ModelRegistry
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


def _case(store: Store, prediction_id: str) -> Case:
    return load_case(store, store.get(prediction_id))


def _download(data: bytes, media_type: str, filename: str) -> Response:
    return Response(
        data, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )


def _checked_slice(case: Case, plane: Plane, index: int | None) -> int | None:
    """`index` if it is a slice of the model grid in `plane`; a 422 giving the range otherwise.

    The renderer would clamp it: a client asking for slice 500 would get the last slice and
    could take it for the one it asked for.
    """
    count = case.image.shape[1 + PLANE_AXIS[plane]]  # image: [modality, D, H, W]
    if index is None or 0 <= index < count:
        return index
    message = (
        f"slice {index} is outside the model grid: {plane} slices run from 0 to {count - 1}; "
        "omit `slice` for the slice of peak attention"
    )
    raise RequestValidationError([{"type": "value_error", "loc": ("query", "slice"), "msg": message}])


def _render(
    case: Case, map_dhw: np.ndarray, fmt: str, plane: Plane, index: int | None, what: str
) -> Response:
    """A map over the model grid as PNG overlay or as NIfTI on the sent image's grid."""
    name = case.prediction.id
    if fmt == "png":
        index = _checked_slice(case, plane, index)
        label = case.task.classes[case.class_index]
        png, shown = overlay_png(
            case.image[case.reference_channel],
            map_dhw,
            plane=plane,
            index=index,
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
        label=prediction.response["label"],
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
    case: Case, store: Store, map_dhw: np.ndarray, plane: Plane, index: int | None
) -> Response:
    headers = case.headers(store)
    description = f"REACT-KD attention ({case.task.name})"
    if case.reference_kind == "dicom" and headers:
        require_references(headers)
        volume = map_to_grid(map_dhw, case.grid, case.reference_grid)
        data = parametric_map(volume, headers, description)
    else:
        png, _ = overlay_png(
            case.image[case.reference_channel],
            map_dhw,
            plane=plane,
            index=_checked_slice(case, plane, index),
            title=description,
            label="attention",
        )
        data = secondary_capture(png, description, case.prediction.response.get("study", {}).get("study_uid"))
    return _download(data, DICOM, f"{case.prediction.id}-attention.dcm")


def _attribution_map(case: Case, store: Store, models: ModelRegistry, method: str) -> np.ndarray:
    cached = store.read_cache(case.prediction, f"{method}.npz")
    if cached is not None:
        with np.load(io.BytesIO(cached)) as npz:
            return npz["map"]
    model = models.for_task(case.task.name)
    if model.name != case.prediction.model:
        raise NotAvailableError(
            f"the prediction was made by {case.prediction.model}, now {model.name} serves; "
            "attributions need the original model",
            field="method",
        )
    try:
        map_dhw = attributions.compute(method, case, model)
    except FileNotFoundError as exc:
        raise NotAvailableError(
            f"{method} needs the model's PyTorch weights: {exc}", field="method"
        ) from None
    store.write_cache(case.prediction, f"{method}.npz", npz_bytes(map=map_dhw))
    return map_dhw


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
            if format == "png":
                _checked_slice(case, plane, slice_index)  # before an attribution that may take long
            map_dhw = _attribution_map(case, store, models, method)
            return _render(case, map_dhw, format, plane, slice_index, method)

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
                cam = _attribution_map(case, store, models, "gradcam")
            except NotAvailableError:
                cam = None
            nodes, edges, case_graph, source = build_graph(case, cam)
            served = models.served.get(case.task.name)
            prototypes = served.card.get("prototypes") if served is not None else None
            gw = prototype_distances(case_graph, prototypes) if prototypes and len(nodes) > 1 else None
            return RegionGraph(
                id=prediction_id,
                regions=source,
                predicted_class=case.task.classes[case.class_index],
                nodes=nodes,
                edges=edges,
                prototype_distances=gw,
                note=None if cam is not None else "contribution is mean attention (no Grad-CAM weights)",
            )

    return await gate.run(work, timeout=settings.request_timeout_s)


@router.get("/explain/{prediction_id}/dicom", response_model=ResultIndex)
async def dicom_results(prediction_id: str, store: StoreDep, metrics: MetricsDep) -> ResultIndex:
    """The DICOM results (SR, Parametric Map, SEG, capture): UIDs, links, where they were stored."""

    def work() -> ResultIndex:
        with metrics.stage("explain"):
            case = _case(store, prediction_id)
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
            results = build_results(_case(store, prediction_id), store)
            if kind not in results:
                raise NotAvailableError(
                    f"no {kind} result for this prediction (no region on the source grid)"
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
            case = _case(store, prediction_id)
            # Results that cannot be made are said before asking for a destination that would not help.
            source_headers(case, store)
            return publish(case, store, settings)

    return await run_in_threadpool(work)
