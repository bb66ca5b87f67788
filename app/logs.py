"""Structured JSON logs with a request id, and NO patient identifiers.

Only whitelisted `extra` keys are emitted, so a header or a patient name passed by mistake
never reaches the log; DICOM datasets are never logged.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# Keys a log record may carry besides the message. Deliberately no free-form payloads.
SAFE_KEYS = (
    "route",
    "method",
    "status",
    "duration_ms",
    "task",
    "model",
    "prediction_id",
    "reason",
    "error_type",
    "card",
    "stage",
    "removed",
    "label",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id_var.get(),
        }
        entry.update({k: getattr(record, k) for k in SAFE_KEYS if hasattr(record, k)})
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    logger = logging.getLogger("app")
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
