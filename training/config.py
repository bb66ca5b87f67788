"""Run configuration: one validated object, read from YAML or TOML, saved inside each run.

A run is a teacher or a student of one task. Command-line flags override file values; the
resolved config is written to the run folder and into every checkpoint, so a checkpoint
alone says how it was made.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.tasks import TASKS, GridName

# Which registered network each role and kind trains.
TEACHER_MODELS: dict[tuple[str, str], str] = {
    ("hcc", "structure-function"): "hcc_teacher_sf",
    ("hcc", "dose-aware"): "hcc_teacher_dose",
    ("brats", "hybrid"): "brats_teacher_hybrid",
}
STUDENT_MODELS: dict[str, str] = {"hcc": "hcc_student", "brats": "brats_student"}


class TrainConfig(BaseModel):
    """Everything one training run needs; unknown keys are refused so typos are caught."""

    model_config = ConfigDict(extra="forbid")

    task: Literal["hcc", "brats"]
    # The task's grid (`models.tasks`): the whole body part, or a crop centred on the lesion
    # mask (then the served model needs the lesion's mask too). Teachers and students of one
    # run share it.
    grid: GridName = "whole"
    role: Literal["teacher", "student"]
    kind: str = Field("student", description="teacher kind (structure-function, dose-aware, hybrid)")
    model: str = Field("", description="registered network; derived from task, role and kind when empty")
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    data: Path = Field(description="HCC manifest.csv or BraTS root folder")
    out: Path = Path("runs")
    name: str = ""
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    patience: int = Field(8, ge=1, description="epochs without a better validation AUC before stopping")
    # The first epoch whose network may be selected (and from which patience counts). On a
    # small validation set a network that has not learned yet can rank the cases well by
    # chance, and no later epoch may beat that lucky draw.
    select_from_epoch: int = Field(0, ge=0)
    # Validate, select and keep an exponential moving average of the weights, updated after
    # every step with this decay (0: the raw weights). On small cohorts the raw weights'
    # validation AUC swings from epoch to epoch and selection keeps the luckiest swing; the
    # average moves smoothly (0.99 averages over about the last 100 steps).
    ema_decay: float = Field(0.0, ge=0, lt=1)
    loss: Literal["weighted_ce", "focal"] = "weighted_ce"
    augment: bool = True
    cache: bool = True
    max_cases: int | None = Field(None, ge=2, description="use only the first N cases (quick runs)")
    num_workers: int = Field(0, ge=0)

    # Dose-aware teacher: weight of the full-dose / low-dose feature consistency term.
    dose_consistency: float = Field(1.0, ge=0)
    # Any role: weight of a loss pulling the CBAM3D spatial attention onto the lesion mask
    # (`training.losses.attention_mask_loss`); cases without a mask add nothing.
    attention_supervision: float = Field(0.0, ge=0)
    # Student distillation.
    teachers: list[Path] = Field(default_factory=list)
    # How the teachers' soft targets (and region graphs) are mixed: "val_auc" weighs each by
    # its validation AUC above chance (`training.losses.teacher_weights_from_auc`), "equal"
    # alike, or one number per teacher.
    teacher_weights: list[float] | Literal["val_auc", "equal"] = "val_auc"
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.7, ge=0, le=1)
    rgd_weight: float = Field(0.5, ge=0)
    rgd_regions: Literal["masks", "supervoxels"] = "masks"
    modality_dropout: float = Field(0.5, ge=0, le=1)
    # Relative weights of the allowed subsets modality dropout draws from, by name ("ct",
    # "ct+pet_fdg"); a subset not named weighs 1. {"ct": 3} gives HCC's CT alone half the draws.
    modality_dropout_weights: dict[str, float] = Field(default_factory=dict)
    # Which modalities the student is ever given (None: all the case has); the teachers
    # always see everything. ["ct"] makes the CT-only student of the ablation's first steps.
    input_modalities: list[str] | None = None
    # Modalities given at validation, where the best checkpoint is chosen (None: all). A CT
    # student serves mostly on CT alone, so it is best selected on CT alone.
    val_modalities: list[str] | None = None
    low_dose: tuple[float, float] | None = Field(
        (0.1, 1.0), description="dose fraction range of the CT the student (and dose teacher) sees"
    )
    # The share of training items whose CT is re-acquired at a dose from `low_dose`; the others
    # keep the full dose. A student serves full-dose CT as well as low-dose CT.
    low_dose_prob: float = Field(1.0, ge=0, le=1)

    @model_validator(mode="after")
    def _resolve(self) -> TrainConfig:
        if self.role == "teacher":
            key = (self.task, self.kind)
            if not self.model and key not in TEACHER_MODELS:
                kinds = sorted(k for t, k in TEACHER_MODELS if t == self.task)
                raise ValueError(
                    f"unknown teacher kind {self.kind!r} for task {self.task!r}; choose from {kinds}"
                )
            self.model = self.model or TEACHER_MODELS[key]
        else:
            self.kind = "student"
            self.model = self.model or STUDENT_MODELS[self.task]
        weights = self.teacher_weights
        if isinstance(weights, list):
            if len(weights) != len(self.teachers):
                raise ValueError(
                    f"teacher_weights has {len(weights)} values for {len(self.teachers)} teachers"
                )
            if min(weights, default=0) < 0 or sum(weights) <= 0:
                raise ValueError(f"teacher_weights must be non-negative, not all 0; got {weights}")
        if self.select_from_epoch >= self.epochs:
            raise ValueError(
                f"select_from_epoch={self.select_from_epoch} leaves no epoch to select of {self.epochs}"
            )
        if self.low_dose is not None and not 0 < self.low_dose[0] <= self.low_dose[1] <= 1:
            raise ValueError(f"low_dose must be a range inside (0, 1], got {self.low_dose}")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}")
        for field in ("input_modalities", "val_modalities"):
            given = getattr(self, field)
            if given is not None and not TASKS[self.task].is_allowed(set(given)):
                raise ValueError(
                    f"{field}={given} is not an allowed modality subset of task {self.task!r}; "
                    f"choose from {TASKS[self.task].allowed_subsets()}"
                )
        for name in self.modality_dropout_weights:
            TASKS[self.task].subset_named(name)
        if min(self.modality_dropout_weights.values(), default=1) <= 0:
            raise ValueError(
                f"modality_dropout_weights must be positive, got {self.modality_dropout_weights}"
            )
        grid = "" if self.grid == "whole" else f"{self.grid}-"
        self.name = self.name or f"{self.task}-{grid}{self.kind}-s{self.seed}"
        return self

    @property
    def run_dir(self) -> Path:
        return self.out / self.name


def load_config(path: Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Read a YAML or TOML file (if given), apply non-None overrides, validate."""
    values: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        values = tomllib.loads(text) if Path(path).suffix == ".toml" else (yaml.safe_load(text) or {})
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.model_validate(values)
