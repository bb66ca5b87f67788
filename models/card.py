"""The model card, typed: what `reactkd export` writes beside each ONNX file and the service
checks before it loads one.

A card holds two kinds of fields. The contract (task, grid, classes or labels, modalities,
files and their sha256, the decision rule, a segmenter's stages and threshold) is typed here,
and a card whose contract does not fit is refused with the field named. The record (metrics,
training, training data, calibration, parity, prototypes, ...) is free-form evidence for
people, kept as written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.segmenter import SEGMENTERS
from models.tasks import TASKS, GridName

SHA256 = r"^[0-9a-f]{64}$"


class CardError(ValueError):
    """A model card whose contract does not fit; the message names the card and the field."""


class _Contract(BaseModel):
    # The record's fields (metrics, training, ...) ride along untyped; the contract's are typed.
    model_config = ConfigDict(extra="allow")


class InputSpec(_Contract):
    layout: str
    grid: GridName = "whole"
    spacing_mm: tuple[float, float, float] | None = None
    shape: tuple[int, int, int] | None = None


class Decision(_Contract):
    """argmax(probabilities x weights): weights with every modality, and per modality subset."""

    rule: str
    weights: dict[str, float]
    by_subset: dict[str, dict[str, float]] = Field(default_factory=dict)


class StageFile(_Contract):
    onnx_file: str
    onnx_sha256: str = Field(pattern=SHA256)


class ModelCard(_Contract):
    name: str
    version: str
    task: str
    role: Literal["student", "teacher", "segmenter"]
    modalities: list[str] = Field(min_length=1)
    onnx_file: str
    onnx_sha256: str = Field(pattern=SHA256)
    input: InputSpec
    created: str = ""
    # A grader's contract.
    classes: list[str] = Field(default_factory=list)
    required_modalities: list[str] = Field(default_factory=list)
    reads_modalities: list[str] | None = None
    decision: Decision | None = None
    weights_file: str | None = None
    # A segmenter's contract.
    labels: list[str] = Field(default_factory=list)
    stages: dict[str, StageFile] = Field(default_factory=dict)
    lesion_threshold: float | None = Field(None, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _fits_its_task(self) -> ModelCard:
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is not one of {sorted(TASKS)}")
        task = TASKS[self.task]
        unknown = [m for m in [*self.modalities, *(self.reads_modalities or [])] if m not in task.modalities]
        if unknown:
            raise ValueError(f"modalities {unknown} are not modalities of task {self.task!r}")
        if self.role == "segmenter":
            if self.task not in SEGMENTERS:
                raise ValueError(f"task {self.task!r} has no segmenter (known: {sorted(SEGMENTERS)})")
            stages = SEGMENTERS[self.task].stages
            if not self.labels or sorted(self.stages) != sorted(stages):
                raise ValueError(f"a segmenter's card needs its labels and its stages {list(stages)}")
            return self
        if list(self.classes) != list(task.classes):
            raise ValueError(f"classes {self.classes} are not task {self.task!r}'s {list(task.classes)}")
        if self.decision is not None:
            unknown = sorted(set(self.decision.weights) - set(self.classes))
            if unknown:
                raise ValueError(f"decision weights name {unknown}, not classes of the card")
        return self


def parse_card(raw: Mapping[str, Any], source: str = "model card") -> ModelCard:
    """The typed card of `raw`, or a `CardError` naming `source` and each field that does not
    fit (a dotted path such as ``decision.weights.HGG``; ``card`` for a rule across fields)."""
    try:
        return ModelCard.model_validate(dict(raw))
    except ValidationError as exc:
        problems = [
            f"field {'.'.join(str(part) for part in error['loc']) or 'card'!r}: {error['msg']}"
            for error in exc.errors()
        ]
        raise CardError(f"{source}: {'; '.join(problems)}") from None
