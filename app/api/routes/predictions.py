"""GET /v1/predictions/{id}: a stored prediction, as it was answered."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from app.api.deps import StoreDep
from app.schemas import Prediction

router = APIRouter(tags=["predictions"])


@router.get("/predictions/{prediction_id}", response_model=Prediction)
async def get_prediction(prediction_id: str, store: StoreDep) -> Prediction:
    """Return a stored prediction."""
    stored = await run_in_threadpool(store.get, prediction_id)
    return Prediction.model_validate(stored.response)
