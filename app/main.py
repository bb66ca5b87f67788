"""Builds the FastAPI app: settings, store, models, middleware, routers, the error handler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NoReturn

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import ValidationError

from app.admission import InferenceGate, default_memory_budget
from app.api.deps import AuthDep
from app.api.routes import explain, health, predict, predictions
from app.api.routes import models as models_route
from app.errors import StorageError, install_error_handler
from app.ingest.uploads import BodyLimitMiddleware
from app.logs import configure_logging, request_id_var
from app.memory import freeze_startup_objects
from app.metrics import Metrics
from app.runtime import ServedModels
from app.settings import Settings
from app.store import Store, check_writable

log = logging.getLogger("app.main")
# uvicorn's exit status when the app cannot start.
STARTUP_FAILURE = 3


async def _retention_loop(store: Store, settings: Settings) -> None:
    while True:
        await asyncio.sleep(settings.retention_interval_s)
        removed = await asyncio.to_thread(store.purge, settings.retention_days)
        log.info("retention", extra={"removed": removed})


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    app.state.store = Store(settings.store_dir)
    removed = await asyncio.to_thread(app.state.store.purge, settings.retention_days)
    log.info("store opened", extra={"removed": removed})
    registry = ServedModels.from_folder(settings.model_dir, settings)
    app.state.models = registry
    await asyncio.to_thread(registry.load, settings)
    freeze_startup_objects()
    log.info("models loaded", extra={"status": "ready" if registry.ready else "not ready"})
    budget = settings.memory_budget_mb * 2**20 if settings.memory_budget_mb else default_memory_budget()
    if budget is not None:
        budget //= settings.workers  # the service's budget, shared by its worker processes
    app.state.gate = InferenceGate(settings.max_concurrent_inferences, memory_budget=budget)
    log.info("admission", extra={"slots": settings.max_concurrent_inferences, "memory_budget": budget})
    janitor = asyncio.create_task(_retention_loop(app.state.store, settings))
    try:
        yield
    finally:
        janitor.cancel()
        app.state.store.close()


def _observe(app: FastAPI) -> None:
    @app.middleware("http")
    async def request_context(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = request_id
        token = request_id_var.set(request_id)
        start = time.perf_counter()
        status = 500
        failed = True
        try:
            response = await call_next(request)
            status = response.status_code
            response.headers["X-Request-ID"] = request_id
            failed = False
            return response
        finally:
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            # Nested routers report their own template; restore the /v1 prefix (low cardinality).
            if request.url.path.startswith("/v1/") and not path.startswith("/v1") and path != "unmatched":
                path = "/v1" + path
            elapsed = time.perf_counter() - start
            metrics: Metrics = request.app.state.metrics
            metrics.requests.labels(route=path, method=request.method, status=str(status)).inc()
            metrics.latency.labels(route=path).observe(elapsed)
            log.info(
                "request",
                extra={
                    "route": path,
                    "method": request.method,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 1),
                },
            )
            if not failed:
                request_id_var.reset(token)
            # Else the id stays set: an unhandled exception goes on to Starlette's outermost
            # middleware, which runs the error handler (the "unhandled error" log line) after
            # this one, in this same request task; the value ends with that task.


def _docs(app: FastAPI) -> APIRouter:
    """`/openapi.json`, `/docs` and `/redoc` behind the same API-key check as `/v1`.

    FastAPI's built-in documentation routes take no dependencies, so with keys configured
    they would describe the API to anyone; these do the same work but ask for a key (and
    pass, like every route, when no keys are configured). A browser does not send the key
    by itself: with auth on, read them through a client or proxy that adds the header.
    """
    router = APIRouter(dependencies=[AuthDep], include_in_schema=False)

    @router.get("/openapi.json")
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @router.get("/docs")
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - Swagger UI")

    @router.get("/redoc")
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")

    return router


def _refuse_start(reason: str) -> NoReturn:
    """One JSON line that says what to do, then exit: not a traceback in plain text."""
    log.critical("start-up refused: %s", reason)
    raise SystemExit(STARTUP_FAILURE)


def _settings_or_exit() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        # Messages only: pydantic's full text echoes the input, API keys and passwords included.
        reasons = []
        for error in exc.errors():
            where = f"REACTKD_{'_'.join(map(str, error['loc'])).upper()}: " if error["loc"] else ""
            reasons.append(where + error["msg"].removeprefix("Value error, "))
        _refuse_start("; ".join(reasons))


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service, configured by `settings` (default: from the environment and `.env`).

    Exits with one log line when the settings or the store folder cannot serve.
    """
    configure_logging(settings.log_level if settings else "INFO")  # before any refusal
    settings = settings or _settings_or_exit()
    configure_logging(settings.log_level)
    try:
        check_writable(settings.store_dir)
    except StorageError as exc:
        _refuse_start(exc.detail)
    app = FastAPI(
        title="REACT-KD Serve",
        version="0.1.0",
        description="Grades liver tumours (CT, PET) and gliomas (MRI). Research use only, not for diagnosis.",
        lifespan=lifespan,
        # Served by `_docs` instead, behind the API-key check.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    install_error_handler(app)
    # Added first, so innermost: its errors reach the route as they are. Outside `_observe`
    # (a BaseHTTPMiddleware, which reads the body in a task group) they arrived wrapped in an
    # ExceptionGroup and were answered 500.
    app.add_middleware(
        BodyLimitMiddleware, limit=settings.max_upload_bytes, idle_s=settings.body_idle_timeout_s
    )
    _observe(app)
    if settings.allow_cors:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allow_cors,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    v1 = APIRouter(prefix="/v1", dependencies=[AuthDep])
    for module in (predict, predictions, explain, models_route):
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(health.router)
    app.include_router(_docs(app))
    return app
