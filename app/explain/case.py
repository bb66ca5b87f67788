"""A stored prediction reloaded for explanation: model input, outputs, the input's grid.

The model input (and, for DICOM, the source headers) is not stored with a prediction made
from uploaded files: it is rebuilt from the stored uploads by the very code that built it
at prediction time (`build_study`, then `prepare_input`), checked against the sha256
recorded then, and cached beside the prediction for later explanations. A study fetched
from the PACS keeps its `input.npz` and `headers.json`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from app.errors import NotAvailableError, ProblemError
from app.ingest.archive import ZipLimits
from app.ingest.study import IngestLimits, Upload, build_study
from app.prediction import input_digest, preprocess
from app.store import Store, StoredPrediction, npz_bytes
from models.contract import Grid, Volume
from models.tasks import TaskSpec, get_task

# The uploads were checked against the configured limits when they were accepted; reading
# our own store back must not refuse them if an operator has since lowered the limits.
_STORED_LIMITS = IngestLimits(ZipLimits(1 << 31, 1 << 62, float("inf")), max_image_bytes=1 << 62)


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
        """The source series' headers (no pixel data), in slice order; [] unless DICOM."""
        data = store.read(self.prediction, "headers.json") or store.read_cache(
            self.prediction, "headers.json"
        )
        if data is None:
            return []
        return [Dataset.from_json(item) for item in json.loads(data)]


def stored_uploads(store: Store, prediction: StoredPrediction) -> dict[str, list[Upload]]:
    """The uploaded files of a prediction by field, in the order they were sent."""
    uploads: dict[str, list[Upload]] = defaultdict(list)
    root = prediction.folder / "uploads"
    if root.is_dir():
        for field_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            for path in sorted(p for p in field_dir.iterdir() if p.is_file()):
                name = path.name.split("-", 1)[-1]
                uploads[field_dir.name].append(Upload(field_dir.name, name, "", path.read_bytes()))
    return dict(uploads)


def _rebuild_input(
    store: Store, prediction: StoredPrediction, task: TaskSpec, meta: dict
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """The model input (and mask) rebuilt from the stored uploads, verified, then cached."""
    uploads = stored_uploads(store, prediction)
    if not uploads:
        raise NotAvailableError("the model input of this prediction was not kept", field="id")
    try:
        study = build_study(uploads, task, _STORED_LIMITS)
        model_input = preprocess(study, task)
    except ProblemError as exc:
        # Accepted then, refused by today's input checks: the prediction stands, but the
        # input cannot be rebuilt; a 4xx about the upload would blame this GET's request.
        raise NotAvailableError(
            f"the stored upload is refused by the current input checks ({exc.field}: {exc.detail}); "
            "predict again to explain",
            field="id",
        ) from None
    if input_digest(model_input) != meta.get("input_digest"):
        # The preprocessing changed since the prediction: an explanation of another tensor
        # than the one the model saw would mislead.
        raise NotAvailableError(
            "the model input rebuilt from the stored upload differs from the one predicted on "
            "(the preprocessing has changed since); predict again to explain",
            field="id",
        )
    # The input is cached last: its presence says the headers and mask are cached too.
    headers = study.sources[meta["reference"]].headers
    if headers:
        store.write_cache(
            prediction, "headers.json", json.dumps([h.to_json_dict() for h in headers]).encode()
        )
    mask = None
    if study.mask is not None:
        mask = {"array": study.mask.array, "affine": study.mask.affine}
        store.write_cache(prediction, "mask.npz", npz_bytes(array=mask["array"], affine=mask["affine"]))
    arrays = {
        "image": model_input.image,
        "present": model_input.present,
        "grid_affine": model_input.grid.affine,
        "grid_shape": np.asarray(model_input.grid.shape),
    }
    store.write_cache(
        prediction,
        "input.npz",
        npz_bytes(
            image=arrays["image"],
            present=arrays["present"],
            grid_affine=arrays["grid_affine"],
            grid_shape=arrays["grid_shape"],
        ),
    )
    return arrays, mask


def load_case(store: Store, prediction: StoredPrediction) -> Case:
    outputs = store.read_npz(prediction, "outputs.npz")
    reference = store.read_npz(prediction, "reference.npz")
    meta_bytes = store.read(prediction, "meta.json")
    if outputs is None or reference is None or meta_bytes is None:
        raise NotAvailableError("the stored files of this prediction are incomplete", field="id")
    meta = json.loads(meta_bytes)
    task = get_task(prediction.task, meta.get("grid", "whole"))
    # Kept with the prediction (fetched studies, older predictions), else cached, else rebuilt.
    model_input = store.read_npz(prediction, "input.npz")
    mask = store.read_npz(prediction, "mask.npz")
    if model_input is None:
        model_input = store.read_npz(prediction, "cache/input.npz")
        mask = store.read_npz(prediction, "cache/mask.npz")
    if model_input is None:
        model_input, mask = _rebuild_input(store, prediction, task, meta)
    shape = tuple(int(s) for s in model_input["grid_shape"])
    return Case(
        prediction=prediction,
        task=task,
        image=model_input["image"],
        present=model_input["present"],
        grid=Grid(shape=shape, affine=model_input["grid_affine"]),  # type: ignore[arg-type]
        outputs=outputs,
        reference_grid=Grid(shape=tuple(int(n) for n in reference["shape"]), affine=reference["affine"]),  # type: ignore[arg-type]
        reference_name=meta["reference"],
        reference_kind=meta["reference_kind"],
        mask=Volume(mask["array"], mask["affine"]) if mask is not None else None,
    )
