"""Structured JSON logs with a request id, and NO patient identifiers.

Only whitelisted `extra` keys are emitted, so a header or a patient name passed by mistake
never reaches the log; DICOM datasets are never logged. Every line is JSON, uvicorn's and
other libraries' included, so that one parser reads the whole log.
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


def _json_handler(logger: logging.Logger, level: int = logging.NOTSET) -> None:
    """Add a JSON handler on stderr to `logger`, unless it has one."""
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        handler.setLevel(level)
        logger.addHandler(handler)


def configure_logging(level: str) -> None:
    """The service's lines at `level`, uvicorn's and other libraries' in the same JSON.

    Called by `create_app`, after uvicorn has set up its own plain-text loggers (the app is a
    factory, loaded once uvicorn's logging is configured), so these replace them in each
    worker process. uvicorn's access lines are dropped: the service's own "request" line
    (route, status, duration, request id) is the one line per request.
    """
    app = logging.getLogger("app")
    _json_handler(app)
    app.setLevel(level.upper())
    app.propagate = False
    server = logging.getLogger("uvicorn")  # "uvicorn.error" propagates to it
    server.handlers = [h for h in server.handlers if isinstance(h.formatter, JsonFormatter)]
    _json_handler(server)
    server.propagate = False
    access = logging.getLogger("uvicorn.access")
    access.handlers = []
    access.propagate = False
    # Other libraries (dicomweb-client, onnxruntime, ...): their warnings and errors only.
    _json_handler(logging.getLogger(), logging.WARNING)
