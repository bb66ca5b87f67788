"""Dependencies as `Annotated` aliases, so routes stay short and tests can override them."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request

from app.admission import InferenceGate
from app.errors import UnauthorizedError
from app.metrics import Metrics
from app.runtime import ServedModels
from app.settings import Settings
from app.store import Store


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_models(request: Request) -> ServedModels:
    return request.app.state.models


def get_gate(request: Request) -> InferenceGate:
    return request.app.state.gate


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
ModelsDep = Annotated[ServedModels, Depends(get_models)]
GateDep = Annotated[InferenceGate, Depends(get_gate)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def require_api_key(
    settings: SettingsDep,
    x_api_key: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> None:
    """Pass when no keys are configured, or the request carries one of them."""
    if not settings.api_keys:
        return
    offered = x_api_key
    if offered is None and authorization and authorization.lower().startswith("bearer "):
        offered = authorization[7:].strip()
    if offered and any(hmac.compare_digest(offered.encode(), key.encode()) for key in settings.api_keys):
        return
    raise UnauthorizedError(
        "send a configured API key as `X-API-Key: KEY` or `Authorization: Bearer KEY`",
        field="X-API-Key",
        headers={"WWW-Authenticate": "Bearer"},
    )


AuthDep = Depends(require_api_key)
