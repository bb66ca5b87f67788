"""A torch Dataset over case records: the input contract, masks on the same grid, augmentation.

Un-augmented items are exactly `models.contract.prepare_input` (what the service computes),
plus the case's masks resampled with nearest neighbour onto the same `ModelInput.grid`.

With ``low_dose=(lo, hi)`` each item also carries ``image_low_dose``: the same case with its
CT re-acquired at a dose drawn log-uniformly from ``[lo, hi]``. The dose is reduced in HU on
the CT's own pixels and whole axial field, in the slices the model grid reaches
(`training.data.lowdose.acquisition_slab`, then `reduce_dose`), and the result goes onto the
grid by the same resampling and normalisation as every input, so the noise is what a scanner
would add at that dose, not a perturbation of normalised values or of the grid's voxels. Spatial
augmentation then moves ``image``, ``image_low_dose`` and the masks with one random draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from models.contract import (
    BACKGROUND,
    Grid,
    ModelInput,
    normalize,
    prepare_input,
    resample,
    to_tensor_layout,
)
from models.tasks import TaskSpec, get_task
from training.data.lowdose import acquisition_slab, reduce_dose
from training.data.readers import Case, CaseRecord, load_case
from training.data.transforms import train_transforms

# Masks each task's items carry (zeros when a case has none).
MASK_NAMES: dict[str, tuple[str, ...]] = {"hcc": ("liver", "tumor"), "brats": ("seg", "brain")}
# The mask of each task that outlines the lesion (BraTS: every tumour label of `seg`).
LESION_MASK: dict[str, str] = {"hcc": "tumor", "brats": "seg"}
# Label of an unlabelled case in a batch (labels are int64 tensors).
NO_LABEL = -1


def prepare_case(case: Case, task: TaskSpec, modalities: Sequence[str] | None = None) -> ModelInput:
    """`prepare_input` on a case's images (only `modalities`, if given), its lesion mask
    locating the crop on a task's lesion grid."""
    volumes = {
        name: v
        for name, v in case.volumes.items()
        if name in task.modalities and (modalities is None or name in modalities)
    }
    return prepare_input(volumes, task, lesion=case.masks.get(LESION_MASK[task.name]))


class CaseDataset(Dataset):
    """Items ``{"image" (M,D,H,W) float32, "present" (M,), "label" int64, "masks" {name: (D,H,W)
    uint8}, "case_id" str}``, plus ``"image_low_dose"`` and ``"dose"`` when `low_dose` is set.

    Args:
        records: cases to serve (from `training.data.readers`).
        task: the task spec (default: the records' task).
        augment: apply `train_transforms` (flips, small affine, intensity) on the model grid.
        cache: keep prepared, un-augmented inputs in memory (prepare_input costs ~0.1 s).
        low_dose: dose range ``(lo, hi)`` within (0, 1] for ``image_low_dose``; None: off.
        low_dose_prob: probability an item's low-dose image is really re-acquired (else dose 1).
        seed: base seed of the augmentation randomness.
        transforms: a replacement for the default augmentation (used when `augment`).
    """

    def __init__(
        self,
        records: Sequence[CaseRecord],
        task: TaskSpec | None = None,
        *,
        augment: bool = False,
        cache: bool = False,
        low_dose: tuple[float, float] | None = None,
        low_dose_prob: float = 1.0,
        seed: int = 0,
        transforms: Any = None,
    ) -> None:
        self.records = list(records)
        if task is None:
            if not self.records:
                raise ValueError("give a task when records is empty")
            task = get_task(self.records[0].task)
        self.task = task
        if low_dose is not None and not 0 < low_dose[0] <= low_dose[1] <= 1:
            raise ValueError(f"low_dose must be a range inside (0, 1], got low_dose={low_dose}")
        if not 0 <= low_dose_prob <= 1:
            raise ValueError(f"low_dose_prob must be in [0, 1], got low_dose_prob={low_dose_prob}")
        self.low_dose = low_dose if "ct" in task.modalities else None
        self.low_dose_prob = low_dose_prob
        self.mask_names = MASK_NAMES.get(task.name, ())
        self.cache = cache
        self.seed = seed
        self._cache: dict[int, dict[str, Any]] = {}
        image_keys = ["image", "image_low_dose"] if self.low_dose else ["image"]
        mask_keys = [f"mask_{name}" for name in self.mask_names]
        self.transforms = (transforms or train_transforms(image_keys, mask_keys)) if augment else None
        self._rng: np.random.Generator | None = None
        self._rng_key: int | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        prepared = self.prepared(index)
        item: dict[str, Any] = {"image": prepared["image"].copy()}
        if self.low_dose is not None:
            item["image_low_dose"], item["dose"] = self._low_dose(prepared)
        for name in self.mask_names:
            item[f"mask_{name}"] = prepared["masks"][name][None]
        if self.transforms is not None:
            self._reseed()
            item["present"] = prepared["present"]
            item = dict(self.transforms(item))
        out: dict[str, Any] = {
            "image": _tensor(item["image"], torch.float32),
            "present": torch.as_tensor(prepared["present"], dtype=torch.float32),
            "label": torch.tensor(
                NO_LABEL if prepared["label"] is None else prepared["label"], dtype=torch.int64
            ),
            "masks": {
                name: _tensor(item[f"mask_{name}"], torch.float32)[0].round().to(torch.uint8)
                for name in self.mask_names
            },
            "case_id": prepared["case_id"],
        }
        if self.low_dose is not None:
            out["image_low_dose"] = _tensor(item["image_low_dose"], torch.float32)
            out["dose"] = torch.tensor(item["dose"], dtype=torch.float32)
        return out

    def prepared(self, index: int) -> dict[str, Any]:
        """The un-augmented item as numpy arrays (cached when `cache` is on)."""
        if index in self._cache:
            return self._cache[index]
        record = self.records[index]
        prepared = self._prepare(load_case(record))
        if self.cache:
            self._cache[index] = prepared
        return prepared

    def _prepare(self, case: Case) -> dict[str, Any]:
        model_input = prepare_case(case, self.task)
        grid = model_input.grid
        prepared: dict[str, Any] = {
            "image": model_input.image,
            "present": model_input.present,
            "label": case.label,
            "case_id": case.case_id,
            "grid": grid,
            "masks": {name: self._mask_on_grid(case, name, grid) for name in self.mask_names},
        }
        if self.low_dose is not None and "ct" in case.volumes:
            prepared["ct_slab"] = acquisition_slab(case.volumes["ct"], grid)
        return prepared

    def _mask_on_grid(self, case: Case, name: str, grid: Grid) -> np.ndarray:
        mask = case.masks.get(name)
        if mask is None:
            return np.zeros(self.task.shape, dtype=np.uint8)
        on_grid = resample(mask.array, mask.affine, grid, order=0, cval=0.0)
        return to_tensor_layout(np.rint(on_grid).astype(np.uint8))

    def _low_dose(self, prepared: dict[str, Any]) -> tuple[np.ndarray, float]:
        """The prepared image with its CT re-acquired at a random dose, and that dose."""
        image = prepared["image"].copy()
        if "ct_slab" not in prepared or self._generator().random() >= self.low_dose_prob:
            return image, 1.0
        lo, hi = self.low_dose  # type: ignore[misc]
        rng = self._generator()
        dose = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        slab = prepared["ct_slab"]
        hu = reduce_dose(slab.array, slab.spacing, dose, rng)
        on_grid = resample(hu, slab.affine, prepared["grid"], order=1, cval=BACKGROUND["ct"])
        image[self.task.modalities.index("ct")] = to_tensor_layout(normalize(on_grid, "ct", self.task))
        return image, dose

    def _generator(self) -> np.random.Generator:
        self._reseed()
        assert self._rng is not None
        return self._rng

    def _reseed(self) -> None:
        """Fresh streams per DataLoader worker and epoch (torch gives each its own initial seed)."""
        key = torch.initial_seed()
        if self._rng_key == key:
            return
        self._rng_key = key
        self._rng = np.random.default_rng([self.seed, key % 2**63])
        if self.transforms is not None:
            self.transforms.set_random_state(seed=int(self._rng.integers(2**31)))


def _tensor(value: Any, dtype: torch.dtype) -> torch.Tensor:
    """A plain contiguous tensor (MONAI returns MetaTensors, which collate with metadata)."""
    if hasattr(value, "as_tensor"):
        value = value.as_tensor()
    return torch.as_tensor(value).to(dtype).contiguous()
