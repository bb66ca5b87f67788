"""Liveness, readiness and Prometheus metrics (outside /v1)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from app.api.deps import AuthDep, MetricsDep, ModelsDep
from app.schemas import Health, Readiness

router = APIRouter(tags=["operations"])


# Load balancers probe with HEAD as well as GET (HEAD is left out of the OpenAPI document,
# where it would repeat the GET's operation id).
@router.get("/healthz", response_model=Health)
@router.head("/healthz", response_model=Health, include_in_schema=False)
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
@router.head("/readyz", response_model=Readiness, include_in_schema=False)
async def readyz(models: ModelsDep) -> Response:
    """Every served model is loaded and warmed (503 with reasons otherwise)."""
    body = Readiness(ready=models.ready, models=models.reasons())
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.get("/metrics", dependencies=[AuthDep], response_class=Response)
async def metrics(collector: MetricsDep) -> Response:
    """Prometheus metrics."""
    return Response(collector.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
