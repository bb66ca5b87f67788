"""Tasks: what each classifier is asked, over which modalities, and on what grid.

A `TaskSpec` is the single source of truth shared by data readers, training, export and
the service: class names, the channel order of modalities, which subsets of modalities a
model must accept, and the grid every input is resampled onto (see `models.contract`).

A task has two grids. ``whole`` (the default) covers the body part, centred on the
foreground, so a model needs nothing but the images. ``lesion`` is a small fine cube
centred on the lesion of a mask (`LESION_GRID`): the model reads the lesion and its
surroundings only, and needs the lesion's mask to be served. A model's checkpoint and card
say which grid it was trained on; `get_task(name, grid)` gives the matching spec.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

ModalityKind = Literal["ct", "pet", "mri"]
GridName = Literal["whole", "lesion"]
GRIDS: tuple[GridName, ...] = ("whole", "lesion")

LESION_GRID: dict[str, Any] = {"spacing_mm": (2.0, 2.0, 2.0), "shape": (48, 48, 48)}
"""The lesion grid of every task: a 96 mm cube of 2 mm voxels. The largest synthetic HCC
lesions (38 mm radius) nearly fill it; a smaller one sits in its liver surroundings."""


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
        grid: where the grid is centred: on the reference modality's foreground (``whole``)
            or on the lesion of a mask (``lesion``; see `models.contract.lesion_center`).
        lesion_labels: which labels of a mask are the lesion: ``highest`` (the highest label
            present: 2 of a liver 1 / tumour 2 map as in LiTS, 1 of a binary mask) or
            ``nonzero`` (every label: BraTS' 1, 2 and 4 together).
        min_extent_mm: a scan shorter than this along any of its axes is not a volume of
            the organ (`models.contract.check_volume`).
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
    grid: GridName = "whole"
    lesion_labels: Literal["highest", "nonzero"] = "highest"
    # The shortest scan that can hold the organ graded (`models.contract.check_volume`): a
    # liver is 120-200 mm tall, a brain 130-160 mm; anything shorter is not the study.
    min_extent_mm: float = 80.0

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

    def subset_named(self, name: str) -> tuple[str, ...]:
        """'pet_fdg+ct' (any order) -> the allowed subset ('ct', 'pet_fdg'), in channel order."""
        given = {part.strip() for part in name.split("+")}
        if not self.is_allowed(given):
            allowed = ["+".join(s) for s in self.allowed_subsets()]
            raise ValueError(
                f"{name!r} is not an allowed modality subset of task {self.name!r}; choose from {allowed}"
            )
        return tuple(m for m in self.modalities if m in given)


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
    lesion_labels="nonzero",
    min_extent_mm=60.0,
)

TASKS: dict[str, TaskSpec] = {task.name: task for task in (HCC, BRATS)}


def get_task(name: str, grid: str = "whole") -> TaskSpec:
    """The task called `name` on `grid`, or a ValueError listing the known tasks or grids."""
    try:
        task = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}") from None
    if grid == "whole":
        return task
    if grid == "lesion":
        return replace(task, grid="lesion", **LESION_GRID)
    raise ValueError(f"unknown grid {grid!r}; known grids: {list(GRIDS)}")


def task_of_card(card: Mapping[str, Any]) -> TaskSpec:
    """The task a model card (or checkpoint) describes, on the grid it was trained on.

    Cards and checkpoints written before grids existed name no grid: theirs is ``whole``.
    """
    inputs = card.get("input")
    grid = card.get("grid") or (inputs.get("grid") if isinstance(inputs, Mapping) else None)
    return get_task(str(card.get("task")), str(grid or "whole"))


def decision_weights(card: Mapping[str, Any], given: Sequence[str] | None = None) -> dict[str, float]:
    """A card's decision weights for the modalities `given` (its `by_subset` entry for them,
    else the weights fitted with every modality; {} without a `decision`)."""
    decision = card.get("decision") or {}
    by_subset = decision.get("by_subset") or {}
    key = "+".join(m for m in card.get("modalities") or [] if m in set(given or ()))
    return dict(by_subset.get(key) or decision.get("weights") or {})


def labels_of_card(card: Mapping[str, Any], probabilities: Any, given: Sequence[str] | None = None) -> Any:
    """The classes a card answers for (N, C) probabilities of studies holding the modalities
    `given` (None: all): argmax of the probabilities times its decision weights (chosen on
    validation for balanced accuracy, per modality subset where the card has them; all 1
    without a `decision`). The probabilities themselves are reported as they are."""
    weights = decision_weights(card, given if given is not None else card.get("modalities"))
    classes = card.get("classes") or []
    scale = np.array([float(weights.get(c, 1.0)) for c in classes]) if weights else 1.0
    return np.argmax(np.asarray(probabilities) * scale, axis=-1)
