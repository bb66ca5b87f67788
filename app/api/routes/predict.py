"""POST /v1/predict: a study in, a grade with probabilities and links to explanations out."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from app.api.deps import GateDep, MetricsDep, ModelsDep, SettingsDep, StoreDep
from app.errors import TimeoutProblem, UnknownTaskError
from app.ingest.archive import ZipLimits
from app.ingest.study import IngestLimits, build_study
from app.ingest.uploads import read_uploads, task_name
from app.prediction import build_outcome, infer, preprocess
from app.schemas import Prediction
from app.store import new_id
from models.tasks import TASKS

router = APIRouter(tags=["predict"])
log = logging.getLogger("app.predict")


def _limits(settings: SettingsDep) -> IngestLimits:
    return IngestLimits(
        zip=ZipLimits(settings.max_files, settings.max_uncompressed_bytes, settings.max_compression_ratio),
        max_image_bytes=settings.max_uncompressed_bytes,
    )


@router.post("/predict", response_model=Prediction, status_code=200)
async def predict(
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    models: ModelsDep,
    gate: GateDep,
    metrics: MetricsDep,
) -> Prediction:
    """Grade one study (multipart: `task`, one field per modality or `study`, optional `mask`)."""
    deadline = time.monotonic() + settings.request_timeout_s
    uploads, fields = await read_uploads(request, settings.max_files, settings.max_upload_bytes)
    name = task_name(fields, request)
    if name not in TASKS:
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}", field="task")
    task = TASKS[name]
    model = models.for_task(name)

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutProblem(f"the request exceeded {settings.request_timeout_s:.0f} s")
        return left

    def ingest_and_prepare():  # type: ignore[no-untyped-def]
        with metrics.stage("ingest"):
            study = build_study(uploads, task, _limits(settings))
        with metrics.stage("preprocess"):
            return study, preprocess(study, task)

    study, model_input = await gate.run(ingest_and_prepare, timeout=remaining())

    def timed_infer():  # type: ignore[no-untyped-def]
        with metrics.stage("inference"):
            return infer(model, model_input)

    outputs = await gate.run(timed_infer, timeout=remaining())
    prediction_id = new_id()
    outcome = build_outcome(prediction_id, task, model, study, model_input, outputs, uploads)
    await run_in_threadpool(
        store.save,
        prediction_id,
        task=name,
        model=model.name,
        response=outcome.response.model_dump(mode="json"),
        files=outcome.files,
    )
    metrics.predictions.labels(task=name, label=outcome.response.label).inc()
    log.info("prediction", extra={"prediction_id": prediction_id, "task": name, "model": model.name})
    return outcome.response
