"""Tasks: what each classifier is asked, over which modalities, and on what grid.

A `TaskSpec` is the single source of truth shared by data readers, training, export and
the service: class names, the channel order of modalities, which subsets of modalities a
model must accept, and the grid every input is resampled onto (see `models.contract`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

ModalityKind = Literal["ct", "pet", "mri"]


@dataclass(frozen=True)
class TaskSpec:
    """One classification task.

    Attributes:
        name: short identifier used in the API (`task=hcc`).
        classes: class names in logit order.
        modalities: modality names in channel order.
        kinds: the imaging kind of each modality (drives intensity normalisation).
        required: modalities that must be present at inference (empty: any one suffices).
        spacing_mm: voxel size of the model grid, (x, y, z) in millimetres.
        shape: size of the model grid as (D, H, W) = (z, y, x) voxels.
        description: one line for model cards and `/v1/models`.
    """

    name: str
    classes: tuple[str, ...]
    modalities: tuple[str, ...]
    kinds: tuple[ModalityKind, ...]
    required: tuple[str, ...]
    spacing_mm: tuple[float, float, float]
    shape: tuple[int, int, int]
    description: str = ""
    ct_window_hu: tuple[float, float] = (-160.0, 240.0)
    pet_suv_scale: float = 2.5

    def __post_init__(self) -> None:
        if len(self.kinds) != len(self.modalities):
            raise ValueError(
                f"kinds must give one kind per modality, got {len(self.kinds)} kinds "
                f"for {len(self.modalities)} modalities"
            )
        unknown = set(self.required) - set(self.modalities)
        if unknown:
            raise ValueError(f"required modalities {sorted(unknown)} are not in {self.modalities}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    def kind_of(self, modality: str) -> ModalityKind:
        return self.kinds[self.modalities.index(modality)]

    def is_allowed(self, present: set[str] | frozenset[str]) -> bool:
        """Whether a model of this task must answer when exactly `present` is available."""
        return bool(present) and set(self.required) <= set(present) <= set(self.modalities)

    def allowed_subsets(self) -> list[tuple[str, ...]]:
        """Every subset of modalities a model must accept, in channel order, largest first."""
        subsets = [
            combo
            for size in range(self.num_modalities, 0, -1)
            for combo in itertools.combinations(self.modalities, size)
            if self.is_allowed(set(combo))
        ]
        return subsets


HCC = TaskSpec(
    name="hcc",
    classes=("well", "moderate", "poor"),
    modalities=("ct", "pet_fdg", "pet_act"),
    kinds=("ct", "pet", "pet"),
    required=("ct",),
    spacing_mm=(4.0, 4.0, 4.0),
    shape=(48, 96, 96),
    description="Hepatocellular carcinoma Edmondson-Steiner grade from portal-venous CT, "
    "optionally with FDG and 11C-acetate PET",
)

BRATS = TaskSpec(
    name="brats",
    classes=("LGG", "HGG"),
    modalities=("t1", "t1ce", "t2", "flair"),
    kinds=("mri", "mri", "mri", "mri"),
    required=(),
    spacing_mm=(2.5, 2.5, 2.5),
    shape=(64, 80, 64),
    description="Glioma grade (lower- vs high-grade) from any of T1, T1ce, T2 and FLAIR MRI",
)

TASKS: dict[str, TaskSpec] = {task.name: task for task in (HCC, BRATS)}


def get_task(name: str) -> TaskSpec:
    """The task called `name`, or a ValueError listing the known tasks."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}") from None
