"""The prediction pipeline: uploads -> study -> localized mask -> model input -> ONNX outputs
-> response + files, kept (`predict_study`, the one function the route calls).

Localize, then grade (DESIGN.md). A study comes as volumes and, perhaps, a mask (the
client's, or a SEG kept with the study). Where the task has a segmenter and no mask came,
the segmenter makes one (`models.segmenter.segment`). The mask is judged before any grade:
no liver, a liver cut off by the scan, no lesion or a lesion the scan cuts make the study
not gradable, answered 200 with the reasons and the segmentation, and no grade at all.
A gradable study is graded on the crop and regions that mask gives.

Each stage that computes runs in a thread under the request's admission (`app.admission`:
its slot, a deadline) and is timed in the metrics under its name: ingest, localize,
preprocess, inference, checks, outcome, save.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi.concurrency import run_in_threadpool
from pydicom.dataset import Dataset

from app.admission import Admission
from app.errors import (
    TimeoutProblem,
    contract_problem,
)
from app.ingest.archive import ZipLimits
from app.ingest.study import IngestLimits, Study, Upload, build_study
from app.localization import Localization, MaskSource
from app.memory import trim_heaps
from app.metrics import Metrics
from app.outcome import Graded, Outcome, build_outcome, link_dicom_outputs
from app.quality import input_warnings
from app.runtime import ServedModel, ServedModels
from app.schemas import NotGradable
from app.settings import Settings
from app.store import Store, new_id
from models.contract import (
    ContractError,
    MissingMaskError,
    ModelInput,
    Volume,
    check_volume,
    grid_of,
    prepare_input,
    reference_modality,
    to_tensor_layout,
)
from models.segmenter import (
    MaskSummary,
    SegmenterSpec,
    get_segmenter_spec,
    labels_ml,
    segment,
    segmenter_input,
    summarize,
)
from models.tasks import TaskSpec


def check_volumes(study: Study, task: TaskSpec) -> None:
    """422 `not-a-volume` for a slice, a handful of slices or too short a scan (any modality)."""
    for name, volume in study.volumes.items():
        try:
            check_volume(name, volume, task)
        except ContractError as exc:  # not a volume, or a voxel size no scan has
            raise contract_problem(exc) from None


def localize(
    study: Study, task: TaskSpec, segmenter: ServedModel | None, fetched: bool, settings: Settings
) -> Localization:
    """The study's mask (the client's or a SEG of the study first, else the segmenter's),
    what it says, and whether it allows a grade (`gradability`)."""
    reference = study.volumes[reference_modality(task, set(study.volumes))]
    spec = segmenter.segmenter_spec if segmenter is not None else _spec_of(task)
    if study.mask is not None:
        source: MaskSource = "pacs" if fetched else "upload"
        if spec is None:  # a task that localizes nothing: the mask only gives regions
            return Localization(source, study.mask, None, None)
        overview = segmenter_input(study.volumes, spec)
        values = to_tensor_layout(np.rint(study.mask.array).astype(np.int64))
        mask_grid = grid_of(study.mask)
        if spec.has_organ:
            localization = Localization(source, study.mask, summarize(values, mask_grid, reference), overview)
        else:  # the labels are parts of the lesion (BraTS): all of them together are the lesion
            labels = spec.label_indices(values)
            summary = summarize((labels > 0).astype(np.uint8), mask_grid, reference)
            localization = Localization(source, study.mask, summary, overview)
            localization.labels_ml = labels_ml(labels, mask_grid, spec)
    elif segmenter is not None:
        spec = segmenter.segmenter_spec
        segmentation = segment(segmenter.predictors, study.volumes, spec)
        localization = Localization(
            "model", segmentation.as_volume(), segmentation.summary, segmentation.overview, segmentation
        )
        if not spec.has_organ:
            localization.labels_ml = segmentation.labels_ml()
    else:
        return Localization(None, None, None, None)
    localization.reasons = gradability(localization.summary, settings, localization.source == "model")
    return localization


def _spec_of(task: TaskSpec) -> SegmenterSpec | None:
    try:
        return get_segmenter_spec(task.name)
    except ValueError:
        return None


def gradability(summary: MaskSummary | None, settings: Settings, segmented: bool = True) -> list[NotGradable]:
    """Why a mask does not allow a grade, by the thresholds of `settings` (docs/api.md: *Not gradable*).

    The liver's volume is judged only in the segmenter's masks (`segmented`): its thresholds
    were chosen from what the segmenter calls liver in scans without one, and a liver a
    client drew is the client's to judge. A binary mask (the lesion alone) says nothing of
    the liver either. The lesion is judged in every mask.
    """
    if summary is None:
        return []
    reasons = []
    liver = summary.organ_ml if segmented else None
    if liver is not None and liver < settings.min_liver_ml:
        return [
            NotGradable(
                code="no-liver",
                detail=f"{liver:.0f} ml of liver found (under {settings.min_liver_ml:.0f} ml): the scan "
                "does not hold the liver; nothing is graded",
            )
        ]
    cut = [edge for edge in summary.organ_cut if edge in ("top", "bottom")]
    if liver is not None and cut and liver < settings.min_cut_liver_ml:
        reasons.append(
            NotGradable(
                code="liver-cut",
                detail=f"the scan cuts the liver at its {' and '.join(cut)} and holds {liver:.0f} ml of it "
                f"(under {settings.min_cut_liver_ml:.0f} ml): too little to judge the lesion; send a scan "
                "covering the whole liver",
            )
        )
    if summary.lesion_ml < settings.min_lesion_ml:
        reasons.append(
            NotGradable(
                code="no-lesion",
                detail=f"no lesion found (lesions total {summary.lesion_ml:.2f} ml, under "
                f"{settings.min_lesion_ml} ml): there is nothing to grade",
            )
        )
    elif summary.lesion_cut:
        reasons.append(
            NotGradable(
                code="lesion-cut",
                detail="the edge of the scan cuts the largest lesion: part of it was not imaged; send a "
                "scan covering the whole lesion",
            )
        )
    return reasons


def preprocess(
    study: Study, task: TaskSpec, mask: Volume | None = None, reads: Collection[str] | None = None
) -> ModelInput:
    """`prepare_input` on the study's modalities the model `reads` (None: all), its lesion
    located by `mask` (else the study's own), with contract errors turned into typed problems."""
    volumes = {name: v for name, v in study.volumes.items() if reads is None or name in reads}
    try:
        return prepare_input(volumes, task, lesion=mask if mask is not None else study.mask)
    except MissingMaskError as exc:  # a lesion-grid model without the lesion's mask
        raise contract_problem(
            exc,
            f"{exc.reason}: send it as field 'mask' (a NIfTI label map or a DICOM SEG), or "
            "keep a DICOM SEG of the lesion in the study",
        ) from None
    except ContractError as exc:
        raise contract_problem(exc) from None


def modality_warnings(study: Study, model: ServedModel) -> list[str]:
    """What the model had to do without (a PET it reads, not sent), and what it was sent but
    never learned to read (not used). A PET a CT-only model does not read is not missing."""
    reads = model.reads_modalities
    missing = [
        f"{name} missing: answered from the other modalities, with less information"
        for name in reads
        if name not in study.volumes and model.task.kind_of(name) == "pet"
    ]
    unread = [
        f"{name} was sent but {model.name} was trained on {'+'.join(reads)} alone: {name} was not used"
        for name in study.volumes
        if name not in reads
    ]
    return missing + unread


def localization_warnings(
    model: ServedModel, localization: Localization, segmenter: ServedModel | None
) -> list[str]:
    """A grader that learned behind one segmenter (its card's `training_data.masks_from`)
    graded behind another: its crops are placed by masks unlike those it learned on."""
    learned = (model.card.get("training_data") or {}).get("masks_from") or {}
    expected = str(learned.get("onnx_sha256", ""))
    if localization.source != "model" or segmenter is None or not expected:
        return []
    if segmenter.sha256.startswith(expected):
        return []
    return [
        f"{model.name} learned on masks of {learned.get('name', 'a segmenter')} ({expected[:12]}), "
        f"this one was placed by {segmenter.name} ({segmenter.sha256[:12]}): a grade behind a "
        "segmenter it was not trained with"
    ]


def infer(model: ServedModel, model_input: ModelInput) -> dict[str, np.ndarray]:
    outputs = model.run(model_input.image[None], model_input.present[None])
    return {key: value[0] for key, value in outputs.items()}


def ingest_limits(settings: Settings) -> IngestLimits:
    return IngestLimits(
        zip=ZipLimits(settings.max_files, settings.max_uncompressed_bytes, settings.max_compression_ratio),
        max_image_bytes=settings.max_uncompressed_bytes,
    )


@dataclass(frozen=True)
class Service:
    """What a prediction runs on: the served models, its admission (slot and memory), the
    store, the settings."""

    settings: Settings
    models: ServedModels
    admission: Admission
    store: Store
    metrics: Metrics


async def predict_study(
    service: Service,
    task_name: str,
    uploads: dict[str, list[Upload]],
    spool: Path | None,
    fetched: Sequence[Dataset] = (),
) -> Outcome:
    """One study, uploaded (spooled in `spool`) or `fetched` from the PACS, through the whole
    pipeline: ingest, refuse what is not a volume, localize, judge gradability, crop, grade,
    build the response and commit it to the store with the uploads (a fetched study stays in
    the PACS: no second copy is kept). Raises the service's typed problems."""
    settings, metrics, admission = service.settings, service.metrics, service.admission
    deadline = time.monotonic() + settings.request_timeout_s
    model = service.models.for_task(task_name)
    task = model.task  # on the grid the served model was trained on

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutProblem(f"the request exceeded {settings.request_timeout_s:.0f} s")
        return left

    def ingest() -> Study:
        with metrics.stage("ingest"):
            study = build_study(uploads, task, ingest_limits(settings), fetched)
            check_volumes(study, task)
        trim_heaps()  # the slices' bytes, freed as they were decoded, before the models' grids
        return study

    study = await admission.run(ingest, timeout=remaining())
    # Localize, then grade: the client's mask (or the study's SEG) wins over the segmenter's.
    models = service.models
    segmenter = models.segmenter_for(task_name) if study.mask is None else models.segmenters.get(task_name)

    def localize_and_prepare() -> tuple[Localization, ModelInput | None]:
        with metrics.stage("localize"):
            localization = localize(study, task, segmenter, bool(fetched), settings)
        if not localization.gradable:
            return localization, None
        with metrics.stage("preprocess"):
            return localization, preprocess(study, task, localization.mask, model.reads_modalities)

    def input_checks() -> list[str]:
        with metrics.stage("checks"):
            return input_warnings(study.volumes, task)

    def timed_infer() -> Graded | None:
        if model_input is None:
            return None
        with metrics.stage("inference"):
            return Graded(model_input, infer(model, model_input))

    # The input checks (CT noise, liver coverage) need only the study: they run beside the
    # segmenter and the grader, on another core when there is one (ONNX Runtime uses
    # `intra_op_threads`), off the critical path.
    checks = asyncio.ensure_future(run_in_threadpool(input_checks))
    try:
        localization, model_input = await admission.run(localize_and_prepare, timeout=remaining())
        graded = await admission.run(timed_infer, timeout=remaining())
    finally:
        checked = await checks
    warnings = [
        *modality_warnings(study, model),
        *localization_warnings(model, localization, segmenter),
        *checked,
    ]
    prediction_id = new_id()

    def outcome_and_save() -> Outcome:
        # Off the event loop: building the response and encoding files are CPU work.
        with metrics.stage("outcome"):
            outcome = build_outcome(
                prediction_id, task, model, study, localization, graded, warnings, segmenter
            )
            reference = study.sources[reference_modality(task, set(study.volumes))]
            link_dicom_outputs(outcome.response.links, prediction_id, reference)
        with metrics.stage("save"):
            # Committed (files, then the row) before the answer leaves: nothing accepted is lost.
            service.store.save(
                prediction_id,
                task=task_name,
                model=model.name,
                response=outcome.response.model_dump(mode="json"),
                files=outcome.files,
                uploads=spool if uploads else None,
            )
        return outcome

    return await run_in_threadpool(outcome_and_save)
