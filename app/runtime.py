"""ONNX Runtime sessions for the served models and their model cards.

A task is served by a grader (the distilled student) and, where the task has one, the
segmenter that localizes before it grades (`models.segmenter`); a card whose ``role`` is
``segmenter`` is one. One session per model, providers from what the machine has (CUDA when a driver is
present, else CPU), thread counts from settings, a warm-up with a zero input at load. A
model whose file is missing, corrupt or does not match its card's sha256 is reported not
ready with the reason, while the other models still serve.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from app.errors import ModelNotReadyError, UnknownTaskError
from app.settings import Settings
from models.card import parse_card
from models.segmenter import Predictor, SegmenterSpec, StageName, spec_of_card
from models.tasks import TASKS, TaskSpec, decision_weights, labels_of_card, task_of_card

log = logging.getLogger("app.runtime")
NO_SEGMENTER = "none"
"""`served_segmenters` value that serves no segmenter for a task."""


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
    stage_sessions: dict[str, ort.InferenceSession] = field(default_factory=dict)
    providers: list[str] = field(default_factory=list)
    _torch: Any = None
    _torch_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def task(self) -> TaskSpec:
        return task_of_card(self.card)

    @property
    def task_name(self) -> str:
        return str(self.card.get("task"))

    @property
    def reads_modalities(self) -> list[str]:
        """The modalities the network was trained on (cards before this key: all the task's)."""
        reads = self.card.get("reads_modalities") or self.card.get("modalities") or []
        return [str(m) for m in reads]

    def label_of(self, probabilities: np.ndarray, given: Sequence[str]) -> int:
        """The class answered for a study holding the modalities `given`: argmax of the
        probabilities times the card's decision weights for them (chosen on validation for
        balanced accuracy; all 1 without a `decision`)."""
        return int(labels_of_card(self.card, probabilities, given))

    def decision(self, given: Sequence[str]) -> dict[str, Any] | None:
        """The card's label rule for a study holding the modalities `given`
        (`training.calibration`): its rule, the weights applied, where they were fitted;
        None for plain argmax."""
        decision = self.card.get("decision")
        if not decision:
            return None
        return {
            "rule": decision.get("rule", "argmax(probabilities x weights)"),
            "weights": decision_weights(self.card, given),
            "fitted_on": decision.get("fitted_on", ""),
        }

    @property
    def is_segmenter(self) -> bool:
        return self.card.get("role") == "segmenter"

    @property
    def segmenter_spec(self) -> SegmenterSpec:
        return spec_of_card(self.card)

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
        # A card whose contract does not fit (a wrong field, an unknown task or grid) is refused
        # here, naming the field, before any session.
        parse_card(self.card, f"model card {self.name}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.intra_op_threads
        options.inter_op_num_threads = settings.inter_op_threads
        files = {"": (str(self.card.get("onnx_file") or f"{self.name}.onnx"), self.sha256)}
        if self.is_segmenter:  # one graph per stage of the cascade
            stages = self.card.get("stages") or {}
            files = {
                name: (str(stages[name]["onnx_file"]), str(stages[name]["onnx_sha256"]))
                for name in self.segmenter_spec.stages
            }
        sessions = {}
        for key, (name, expected) in files.items():
            path = self.folder / name
            if not path.is_file():
                raise FileNotFoundError(f"ONNX file {path.name} is missing")
            actual = sha256_of(path)
            if actual != expected:
                raise ValueError(f"sha256 of {path.name} is {actual[:12]}..., card says {expected[:12]}...")
            sessions[key] = ort.InferenceSession(str(path), options, providers=choose_providers())
        self.session = next(iter(sessions.values()))
        self.stage_sessions = sessions
        self.providers = self.session.get_providers()
        if settings.warmup and self.is_segmenter:
            segmenter = self.segmenter_spec
            for stage in segmenter.stages:
                self.predictors[stage](torch.zeros((1, segmenter.channels, *segmenter.stage(stage).roi)))
        elif settings.warmup:
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

    @property
    def predictors(self) -> dict[StageName, Predictor]:
        """A segmenter's stages as `models.segmenter.Predictor`s: windows (N, channels, *roi)
        in, logits (N, L, *roi) out."""
        if self.session is None:
            raise ModelNotReadyError(f"model {self.name} is not loaded: {self.reason}", field="task")

        def stage(session: ort.InferenceSession) -> Predictor:
            def predict(windows: torch.Tensor) -> torch.Tensor:
                (logits,) = session.run(["logits"], {"image": windows.numpy().astype(np.float32, copy=False)})
                return torch.from_numpy(logits)

            return predict

        return {name: stage(self.stage_sessions[name]) for name in self.segmenter_spec.stages}

    def torch_model(self) -> Any:
        """The PyTorch network from the card's weights file (for gradient attributions)."""
        with self._torch_lock:
            if self._torch is None:
                from models.registry import model_from_checkpoint

                weights = self.card.get("weights_file")
                path = self.folder / str(weights) if weights else None
                if path is None or not path.is_file():
                    raise FileNotFoundError(f"weights file {weights!r} of {self.name} is missing")
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
                self._torch = model_from_checkpoint(checkpoint)
            return self._torch


class ServedModels:
    """Every model card in a folder; per task one served grader and, where there is one, one
    served segmenter."""

    def __init__(
        self,
        models: list[ServedModel],
        served: dict[str, ServedModel],
        segmenters: dict[str, ServedModel] | None = None,
    ) -> None:
        self.models = models
        self.served = served
        self.segmenters = segmenters or {}

    @property
    def all_served(self) -> list[ServedModel]:
        return [*self.served.values(), *self.segmenters.values()]

    @classmethod
    def from_folder(cls, folder: Path, settings: Settings) -> ServedModels:
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
        # Localize, then grade: a task's segmenter serves by default (the one named in
        # `served_segmenters`, else the newest); naming "none" turns localization off, and the
        # task's studies then need the client's mask or a whole-scan grader.
        off = {task for task, name in settings.served_segmenters.items() if name == NO_SEGMENTER}
        for model in (m for m in models if m.is_segmenter and m.task_name in off):
            model.status = "not_served"
            model.reason = f"localization is off: REACTKD_SERVED_SEGMENTERS names {NO_SEGMENTER!r}"
        wanted = {task: name for task, name in settings.served_segmenters.items() if task not in off}
        segmenters = _choose(
            [m for m in models if m.is_segmenter and m.task_name not in off],
            wanted,
            lambda m: str(m.card.get("created", "")),
        )

        def grader_rank(model: ServedModel) -> tuple[bool, bool, str]:
            # A model reading a lesion crop needs a mask with every study: the task's segmenter
            # gives one (localize, then grade: preferred), else the client must, so without a
            # segmenter it serves by default only when alone. Then the newest.
            localized = model.task_name in segmenters
            return (
                localized or not model.needs_mask,
                localized and model.needs_mask,
                str(model.card.get("created", "")),
            )

        served = _choose([m for m in models if not m.is_segmenter], settings.served_models, grader_rank)
        return cls(models, served, segmenters)

    def load(self, settings: Settings) -> None:
        for model in self.all_served:
            model.load(settings)

    @property
    def ready(self) -> bool:
        return bool(self.served) and all(m.ready for m in self.all_served)

    def segmenter_for(self, task: str) -> ServedModel | None:
        """The task's served segmenter, ready (None when the task has none; 503 if not ready)."""
        model = self.segmenters.get(task)
        if model is not None and not model.ready:
            raise ModelNotReadyError(
                f"segmenter {model.name} for {task!r} is not ready: {model.reason or model.status}; "
                "send the lesion's mask, or retry",
                field="task",
                headers={"Retry-After": "30"},
            )
        return model

    def reasons(self) -> dict[str, str]:
        out = {m.name: m.reason or m.status for m in self.all_served if not m.ready}
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


def _choose(
    models: list[ServedModel], wanted: dict[str, str], rank: Callable[[ServedModel], Any]
) -> dict[str, ServedModel]:
    """One model per task: the one `wanted` names, else the best by `rank`; the others are
    marked not served, with the reason."""
    chosen: dict[str, ServedModel] = {}
    for task in TASKS:
        candidates = [m for m in models if m.task_name == task]
        if not candidates:
            continue
        named = next((m for m in candidates if m.name == wanted.get(task)), None)
        chosen[task] = named or max(candidates, key=rank)
        for other in candidates:
            if other is not chosen[task]:
                other.status, other.reason = "not_served", f"{chosen[task].name} serves {task}"
    return chosen
