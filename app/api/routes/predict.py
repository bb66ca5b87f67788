"""POST /v1/predict: a study in, a grade with probabilities and links to explanations out.

The study is uploaded (multipart files) or named by `study_uid` (a JSON body, or a form
field without files) and fetched from the configured DICOMweb server.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from pydicom.dataset import Dataset

from app.admission import prediction_memory
from app.api.deps import GateDep, MetricsDep, ModelsDep, SettingsDep, StoreDep
from app.errors import (
    ConflictingInputError,
    InvalidStudyError,
    ProblemError,
    UnknownTaskError,
    UnsupportedMediaError,
)
from app.explain.case import load_localized
from app.ingest.study import Upload
from app.ingest.uploads import declared_length, read_uploads, task_name
from app.pacs.dicomweb import source_client
from app.pacs.publish import publish
from app.pacs.schemas import StudyRequest
from app.prediction import Service, predict_study
from app.schemas import Prediction
from app.settings import Settings
from app.store import Store
from models.tasks import TASKS

router = APIRouter(tags=["predict"])
log = logging.getLogger("app.predict")


def _study_request(body: bytes) -> StudyRequest:
    try:
        data = json.loads(body or b"null")
    except ValueError as exc:
        raise InvalidStudyError(f"the body is not JSON ({exc})", field="body") from None
    except RecursionError:
        # The parser recurses once per nesting level; a study request nests two levels deep.
        raise InvalidStudyError(
            "the JSON body nests too deeply to read. "
            "Send {'task': ..., 'study_uid': ..., 'series_uids': [...]}",
            field="body",
        ) from None
    if not isinstance(data, dict) or "study_uid" not in data:
        # JSON only names a study in the PACS; images themselves come as multipart files.
        raise UnsupportedMediaError(
            "send multipart/form-data with one field per modality, or JSON with `study_uid` to fetch "
            "the study from the PACS",
            field="body",
        )
    try:
        return StudyRequest.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        field = ".".join(str(p) for p in errors[0]["loc"]) if errors else "body"
        detail = "; ".join(e["msg"] for e in errors)
        raise InvalidStudyError(
            f"{detail}. Send {{'task': ..., 'study_uid': ..., 'series_uids': [...]}}", field=field
        ) from None


def _form_study_request(fields: dict[str, str], name: str) -> StudyRequest:
    series = [uid for uid in fields.get("series_uids", "").replace(",", " ").split() if uid]
    try:
        return StudyRequest(task=name, study_uid=fields.get("study_uid", ""), series_uids=series)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidStudyError(first["msg"], field=str(first["loc"][0])) from None


def _fetch(settings: Settings, wanted: StudyRequest) -> list[Dataset]:
    """The study's instances from the DICOMweb server (read as if uploaded as `study`)."""
    return source_client(settings).fetch_study(wanted.study_uid, wanted.series_uids)


async def _read_request(
    request: Request, settings: Settings, spool: Path
) -> tuple[str, dict[str, list[Upload]], list[Dataset]]:
    """Task name, and the uploads (spooled in `spool`) or the instances fetched from the PACS
    when a study UID is given."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        wanted = _study_request(await request.body())
    elif content_type.startswith("application/x-www-form-urlencoded"):
        # A plain form carries no files: only a study to fetch.
        form = await request.form(max_files=0, max_fields=20)
        fields = {key: str(value) for key, value in form.items()}
        wanted = _form_study_request(fields, task_name(fields, request))
    else:
        uploads, fields = await read_uploads(request, spool, settings.max_files, settings.max_upload_bytes)
        name = task_name(fields, request)
        if not fields.get("study_uid"):
            return name, uploads, []
        if uploads:
            raise ConflictingInputError(
                "send either files or `study_uid` (fetched from the PACS), not both", field="study_uid"
            )
        wanted = _form_study_request(fields, name)
    if wanted.task not in TASKS:
        raise UnknownTaskError(f"unknown task {wanted.task!r}; known tasks: {sorted(TASKS)}", field="task")
    return wanted.task, {}, await run_in_threadpool(_fetch, settings, wanted)


def _auto_store(prediction_id: str, store: Store, settings: Settings) -> str | None:
    """Push the results when configured; a failure becomes a warning, never a failed prediction."""
    case = load_localized(store, store.get(prediction_id))
    if case.reference_kind != "dicom":
        return "results were not stored in the PACS: they need a DICOM source series"
    try:
        publish(case, store, settings)
    except ProblemError as exc:
        log.warning("auto-store failed", extra={"prediction_id": prediction_id, "error": exc.detail})
        return f"results were not stored in the PACS ({exc.title}): {exc.detail}"
    return None


@router.post("/predict", response_model=Prediction, status_code=200)
async def predict(
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    models: ModelsDep,
    gate: GateDep,
    metrics: MetricsDep,
) -> Prediction:
    """Grade one study: multipart files (`task`, a field per modality or `study`, `mask`) or `study_uid`."""
    # Admitted (a slot, memory by the declared size) before a byte of the body is read.
    async with gate.admit(prediction_memory(request.headers, settings)) as admission:
        with store.spool(declared_length(request.headers)) as spool:
            with metrics.stage("receive"):
                name, uploads, fetched = await _read_request(request, settings, spool)
            if name not in TASKS:
                raise UnknownTaskError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}", field="task")
            service = Service(settings, models, admission, store, metrics)
            outcome = await predict_study(service, name, uploads, spool, fetched)
            del fetched  # the study's pixels: gone before the memory is handed back
        if settings.dicomweb_auto_store:
            warning = await run_in_threadpool(_auto_store, outcome.response.id, store, settings)
            if warning:
                outcome.response.warnings.append(warning)
    metrics.predictions.labels(task=name, label=outcome.response.label or "not-gradable").inc()
    log.info(
        "prediction",
        extra={"prediction_id": outcome.response.id, "task": name, "model": outcome.response.model.name},
    )
    return outcome.response
