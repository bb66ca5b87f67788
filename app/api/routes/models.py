"""GET /v1/models: the model cards in the model folder, with readiness."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ModelsDep
from app.schemas import ModelInfo, ModelList

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ModelList)
async def list_models(models: ModelsDep) -> ModelList:
    """List every model card, whether it is served and ready, and why not."""
    served = {id(m) for m in models.served.values()}
    return ModelList(
        models=[
            ModelInfo(
                name=m.name,
                task=str(m.card.get("task")),
                version=m.version,
                status=m.status,
                reason=m.reason,
                served=id(m) in served,
                classes=list(m.card.get("classes", [])),
                modalities=list(m.card.get("modalities", [])),
                sha256=m.sha256,
                providers=m.providers,
                card=m.card,
            )
            for m in models.models
        ]
    )
