"""Typed domain errors and the one handler that turns every error into RFC 9457 problem+json.

Each error kind has a stable `type` URI (clients switch on it, never on `detail`), a title,
an HTTP status and the request `field` it concerns. Messages say what to do next.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from models import contract
from models.dicom import PixelDataError

PROBLEM_BASE = "https://reactkd.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"

log = logging.getLogger("app.errors")


class ProblemError(Exception):
    """Base of every domain error the service reports to a client."""

    slug: ClassVar[str] = "invalid-request"
    title: ClassVar[str] = "Invalid request"
    status: ClassVar[int] = 400

    def __init__(self, detail: str, field: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.slug


class UnsupportedMediaError(ProblemError):
    slug, title, status = "unsupported-media", "Unsupported media type", 415


class NotDicomError(ProblemError):
    slug, title, status = "not-dicom", "Not a DICOM file", 400


class SeveralSeriesError(ProblemError):
    slug, title, status = "several-series", "Several series where one was expected", 400


class MissingModalityError(ProblemError):
    slug, title, status = "missing-modality", "Required modality missing", 422


class UnknownModalityError(ProblemError):
    slug, title, status = "unknown-modality", "Unknown modality field", 422


class TooLargeError(ProblemError):
    slug, title, status = "too-large", "Upload too large", 413


class TooManyFilesError(ProblemError):
    slug, title, status = "too-many-files", "Too many files", 413


class ZipBombError(ProblemError):
    slug, title, status = "zip-bomb", "Archive expands too much", 413


class UnsafeArchiveError(ProblemError):
    slug, title, status = "unsafe-archive", "Unsafe member name in archive", 400


class CorruptPixelDataError(ProblemError):
    slug, title, status = "corrupt-pixel-data", "Pixel data cannot be decoded", 422


class NonFiniteVoxelsError(ProblemError):
    slug, title, status = "non-finite-voxels", "NaN or infinite voxels", 422


class InvalidStudyError(ProblemError):
    slug, title, status = "invalid-study", "Study cannot be used", 422


class NotAVolumeProblem(ProblemError):
    slug, title, status = "not-a-volume", "Not a volume", 422


class ModalityMismatchError(ProblemError):
    slug, title, status = "modality-mismatch", "Series is not of the field's modality", 422


class UnknownTaskError(ProblemError):
    slug, title, status = "unknown-task", "Unknown task", 422


class UnknownIdError(ProblemError):
    slug, title, status = "unknown-id", "Unknown prediction id", 404


class NotAvailableError(ProblemError):
    slug, title, status = "not-available", "Explanation not available", 409


class UnauthorizedError(ProblemError):
    slug, title, status = "unauthorized", "Missing or invalid API key", 401


class MissingFieldError(ProblemError):
    slug, title, status = "missing-field", "Missing field", 422


class ModelNotReadyError(ProblemError):
    slug, title, status = "model-not-ready", "Model not ready", 503


class BusyError(ProblemError):
    slug, title, status = "busy", "Too many inferences in progress", 503


class StorageError(ProblemError):
    slug, title, status = "storage-unavailable", "Prediction could not be stored", 507


class BodyTimeoutError(ProblemError):
    slug, title, status = "body-timeout", "Request body stalled", 408


class TimeoutProblem(ProblemError):
    slug, title, status = "timeout", "Request took too long", 504


class PacsNotConfiguredError(ProblemError):
    slug, title, status = "pacs-not-configured", "No DICOMweb server configured", 501


class PacsUnreachableError(ProblemError):
    slug, title, status = "pacs-unreachable", "DICOMweb server unreachable", 502


class PacsError(ProblemError):
    slug, title, status = "pacs-error", "DICOMweb server refused the request", 502


class PacsTimeoutError(ProblemError):
    slug, title, status = "pacs-timeout", "DICOMweb server did not answer in time", 504


class ConflictingInputError(ProblemError):
    slug, title, status = "conflicting-input", "Files and a study UID sent together", 422


class StudyNotFoundError(ProblemError):
    slug, title, status = "study-not-found", "Study not found in the PACS", 404


CONTRACT_PROBLEMS: dict[type[contract.ContractError], type[ProblemError]] = {
    contract.ContractError: InvalidStudyError,
    contract.GeometryError: InvalidStudyError,
    PixelDataError: CorruptPixelDataError,
    contract.NonFiniteError: NonFiniteVoxelsError,
    contract.UnknownModalityError: UnknownModalityError,
    contract.MissingModalityError: MissingModalityError,
    contract.MissingMaskError: MissingFieldError,
    contract.MaskError: InvalidStudyError,
    contract.NotAVolumeError: NotAVolumeProblem,
}
"""The problem each kind of input contract error (`models.contract`) is answered with; a class
not listed takes its nearest listed base's (`contract_problem`)."""


def contract_problem(
    exc: contract.ContractError, detail: str | None = None, field: str | None = None
) -> ProblemError:
    """The problem for a contract error, by its class; `detail` and `field` override the
    error's own (the ingest names the request field a series came in, not the DICOM tag)."""
    kind = next(cls for cls in type(exc).__mro__ if cls in CONTRACT_PROBLEMS)
    return CONTRACT_PROBLEMS[kind](detail or exc.reason, field=field or exc.field)


_HTTP_SLUGS = {401: "unauthorized", 404: "not-found", 405: "method-not-allowed", 413: "too-large"}


def problem_response(
    request: Request,
    *,
    type_: str,
    title: str,
    status: int,
    detail: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": type_,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "field": field,
    }
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        body["request_id"] = request_id
    body.update(extra or {})
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


async def handle_error(request: Request, exc: Exception) -> JSONResponse:
    """The one handler: domain errors, validation errors and HTTP errors as problem+json."""
    if isinstance(exc, ProblemError):
        return problem_response(
            request,
            type_=exc.type,
            title=exc.title,
            status=exc.status,
            detail=exc.detail,
            field=exc.field,
            headers=exc.headers,
        )
    if isinstance(exc, RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header")]
        missing = first.get("type") == "missing"
        return problem_response(
            request,
            type_=PROBLEM_BASE + ("missing-field" if missing else "invalid-request"),
            title="Missing field" if missing else "Invalid request",
            status=422,
            detail="; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in errors),
            field=".".join(loc) or None,
        )
    if isinstance(exc, StarletteHTTPException):
        slug = _HTTP_SLUGS.get(exc.status_code, "http-error")
        return problem_response(
            request,
            type_=PROBLEM_BASE + slug,
            title=str(exc.detail) if exc.status_code != 404 else "Not found",
            status=exc.status_code,
            detail=str(exc.detail),
            headers=getattr(exc, "headers", None),
        )
    log.exception("unhandled error", extra={"error_type": type(exc).__name__})
    return problem_response(
        request,
        type_=PROBLEM_BASE + "internal",
        title="Internal error",
        status=500,
        detail="an unexpected error occurred; the request id identifies it in the logs",
    )


def install_error_handler(app: FastAPI) -> None:
    for kind in (ProblemError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(kind, handle_error)
