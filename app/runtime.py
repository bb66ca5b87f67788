"""ONNX Runtime sessions for the served students, their model cards, and an inference gate.

One session per model, providers from what the machine has (CUDA when a driver is
present, else CPU), thread counts from settings, a warm-up with a zero input at load. A
model whose file is missing, corrupt or does not match its card's sha256 is reported not
ready with the reason, while the other models still serve.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnxruntime as ort

from app.errors import BusyError, ModelNotReadyError, TimeoutProblem, UnknownTaskError
from app.settings import Settings
from models.tasks import TASKS, TaskSpec, task_of_card

log = logging.getLogger("app.runtime")
T = TypeVar("T")


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def choose_providers() -> list[str]:
    """CUDA when onnxruntime offers it AND a driver is loadable, then CPU."""
    available = ort.get_available_providers()
    providers = []
    if "CUDAExecutionProvider" in available:
        try:
            ctypes.CDLL("libcuda.so.1")
            providers.append("CUDAExecutionProvider")
        except OSError:
            pass  # onnxruntime-gpu on a machine without a GPU: CPU only, no noisy fallback
    providers.append("CPUExecutionProvider")
    return providers


@dataclass
class ServedModel:
    """One model of the folder: its card, session and readiness."""

    name: str
    card: dict[str, Any]
    folder: Path
    status: str = "loading"  # loading | ready | failed | not_served
    reason: str | None = None
    session: ort.InferenceSession | None = None
    providers: list[str] = field(default_factory=list)
    _torch: Any = None
    _torch_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def task(self) -> TaskSpec:
        return task_of_card(self.card)

    @property
    def needs_mask(self) -> bool:
        """Whether the model reads a crop on the lesion, so every study needs the lesion's mask."""
        try:
            return self.task.grid == "lesion"
        except ValueError:  # an unknown task or grid: the model fails to load, with the reason
            return False

    @property
    def version(self) -> str:
        return str(self.card.get("version", "0"))

    @property
    def sha256(self) -> str:
        return str(self.card.get("onnx_sha256", ""))

    @property
    def ready(self) -> bool:
        return self.status == "ready" and self.session is not None

    def load(self, settings: Settings) -> None:
        try:
            self._load(settings)
            self.status, self.reason = "ready", None
        except Exception as exc:  # any failure makes this model not ready, never the service
            self.status, self.reason, self.session = "failed", str(exc), None
            log.warning("model not ready", extra={"model": self.name, "reason": str(exc)})

    def _load(self, settings: Settings) -> None:
        task_of_card(self.card)  # a card of an unknown task or grid fails here, before the session
        path = self.folder / str(self.card.get("onnx_file") or f"{self.name}.onnx")
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file {path.name} is missing")
        actual = sha256_of(path)
        if actual != self.sha256:
            raise ValueError(f"sha256 of {path.name} is {actual[:12]}..., card says {self.sha256[:12]}...")
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.intra_op_threads
        options.inter_op_num_threads = settings.inter_op_threads
        self.session = ort.InferenceSession(str(path), options, providers=choose_providers())
        self.providers = self.session.get_providers()
        if settings.warmup:
            spec = self.task
            self.run(
                np.zeros((1, spec.num_modalities, *spec.shape), np.float32),
                np.ones((1, spec.num_modalities), np.float32),
            )

    def run(self, image: np.ndarray, present: np.ndarray) -> dict[str, np.ndarray]:
        """logits, attention, features for a batch ``image (N,M,D,H,W)``, ``present (N,M)``."""
        if self.session is None:
            raise ModelNotReadyError(f"model {self.name} is not loaded: {self.reason}", field="task")
        logits, attention, features = self.session.run(
            ["logits", "attention", "features"],
            {
                "image": image.astype(np.float32, copy=False),
                "present": present.astype(np.float32, copy=False),
            },
        )
        return {"logits": logits, "attention": attention, "features": features}

    def torch_model(self) -> Any:
        """The PyTorch network from the card's weights file (for gradient attributions)."""
        with self._torch_lock:
            if self._torch is None:
                import torch

                from models.registry import model_from_checkpoint

                weights = self.card.get("weights_file")
                path = self.folder / str(weights) if weights else None
                if path is None or not path.is_file():
                    raise FileNotFoundError(f"weights file {weights!r} of {self.name} is missing")
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
                self._torch = model_from_checkpoint(checkpoint)
            return self._torch


class ModelRegistry:
    """Every model card in a folder; one served model per task."""

    def __init__(self, models: list[ServedModel], served: dict[str, ServedModel]) -> None:
        self.models = models
        self.served = served

    @classmethod
    def from_folder(cls, folder: Path, settings: Settings) -> ModelRegistry:
        models = []
        for card_path in sorted(Path(folder).glob("*.json")):
            try:
                card = json.loads(card_path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                log.warning("unreadable model card", extra={"card": card_path.name, "reason": str(exc)})
                continue
            if not isinstance(card, dict) or "task" not in card:
                continue  # not a model card
            models.append(
                ServedModel(name=str(card.get("name", card_path.stem)), card=card, folder=card_path.parent)
            )
        served: dict[str, ServedModel] = {}
        for task in TASKS:
            candidates = [m for m in models if m.card.get("task") == task]
            if not candidates:
                continue
            wanted = settings.served_models.get(task)
            chosen = next((m for m in candidates if m.name == wanted), None) if wanted else None
            if chosen is None:
                # The newest model that needs nothing but images: one reading a lesion crop
                # needs a mask with every study, so it serves by default only when alone.
                chosen = max(candidates, key=lambda m: (not m.needs_mask, str(m.card.get("created", ""))))
            served[task] = chosen
            for other in candidates:
                if other is not chosen:
                    other.status, other.reason = "not_served", f"{chosen.name} serves {task}"
        return cls(models, served)

    def load(self, settings: Settings) -> None:
        for model in self.served.values():
            model.load(settings)

    @property
    def ready(self) -> bool:
        return bool(self.served) and all(m.ready for m in self.served.values())

    def reasons(self) -> dict[str, str]:
        out = {m.name: m.reason or m.status for m in self.served.values() if not m.ready}
        if not self.served:
            out["models"] = "no model cards found in the model folder"
        return out

    def for_task(self, task: str) -> ServedModel:
        if task not in TASKS:
            raise UnknownTaskError(f"unknown task {task!r}; known tasks: {sorted(TASKS)}", field="task")
        model = self.served.get(task)
        if model is None:
            raise ModelNotReadyError(f"no model serves task {task!r}", field="task")
        if not model.ready:
            raise ModelNotReadyError(
                f"model {model.name} for {task!r} is not ready: {model.reason or model.status}",
                field="task",
                headers={"Retry-After": "30"},
            )
        return model


class InferenceGate:
    """At most `limit` jobs at once, off the event loop, each within a timeout.

    A request finding every slot taken is answered 503 with Retry-After at once rather
    than queued: queued requests would only time out later while holding memory.
    """

    def __init__(self, limit: int, retry_after_s: int = 5) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self._semaphore = asyncio.Semaphore(limit)

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float) -> T:
        if self._semaphore.locked():
            raise BusyError(
                f"{self.limit} inference(s) already running; retry shortly",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        await self._semaphore.acquire()
        task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        # The slot is freed when the work ends, even if the request gave up waiting.
        task.add_done_callback(lambda _: self._semaphore.release())
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            raise TimeoutProblem(f"the work did not finish within {timeout:.0f} s; retry later") from None
