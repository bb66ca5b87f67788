"""A stored prediction reloaded for explanation: model input, outputs, the input's grid."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from app.errors import NotAvailableError
from app.store import Store, StoredPrediction
from models.contract import Grid, Volume
from models.tasks import TASKS, TaskSpec


@dataclass
class Case:
    prediction: StoredPrediction
    task: TaskSpec
    image: np.ndarray  # [M, D, H, W]
    present: np.ndarray  # [M]
    grid: Grid
    outputs: dict[str, np.ndarray]
    reference_grid: Grid  # voxels of the reference image that was sent
    reference_name: str
    reference_kind: str
    mask: Volume | None

    @property
    def class_index(self) -> int:
        return int(np.argmax(self.outputs["probabilities"]))

    @property
    def reference_channel(self) -> int:
        return self.task.modalities.index(self.reference_name)

    def headers(self, store: Store) -> list[Dataset]:
        data = store.read(self.prediction, "headers.json")
        if data is None:
            return []
        return [Dataset.from_json(item) for item in json.loads(data)]


def load_case(store: Store, prediction: StoredPrediction) -> Case:
    model_input = store.read_npz(prediction, "input.npz")
    outputs = store.read_npz(prediction, "outputs.npz")
    reference = store.read_npz(prediction, "reference.npz")
    meta_bytes = store.read(prediction, "meta.json")
    if model_input is None or outputs is None or reference is None or meta_bytes is None:
        raise NotAvailableError("the stored files of this prediction are incomplete", field="id")
    meta = json.loads(meta_bytes)
    mask = store.read_npz(prediction, "mask.npz")
    shape = tuple(int(s) for s in model_input["grid_shape"])
    return Case(
        prediction=prediction,
        task=TASKS[prediction.task],
        image=model_input["image"],
        present=model_input["present"],
        grid=Grid(shape=shape, affine=model_input["grid_affine"]),  # type: ignore[arg-type]
        outputs=outputs,
        reference_grid=Grid(shape=tuple(int(n) for n in reference["shape"]), affine=reference["affine"]),  # type: ignore[arg-type]
        reference_name=meta["reference"],
        reference_kind=meta["reference_kind"],
        mask=Volume(mask["array"], mask["affine"]) if mask is not None else None,
    )
