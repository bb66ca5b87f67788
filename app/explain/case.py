"""A stored prediction reloaded for explanation: its mask, and for a graded one the model
input, outputs, the input's grid.

A prediction keeps what its explanations need (`app.prediction`): the mask and where it
came from, the overview image on the segmenter's grid, the segmenter's probabilities, the
model input and outputs, the source headers. Predictions stored before the model input was
kept have it rebuilt from the stored uploads by the very code that built it at prediction
time (`build_study`, then `prepare_input`), checked against the sha256 recorded then, and
cached beside the prediction.
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
from app.outcome import input_digest
from app.prediction import preprocess
from app.store import Store, StoredPrediction, npz_bytes
from models.contract import Grid, Volume, from_tensor_layout
from models.tasks import TaskSpec, get_task

# The uploads were checked against the configured limits when they were accepted; reading
# our own store back must not refuse them if an operator has since lowered the limits.
_STORED_LIMITS = IngestLimits(ZipLimits(1 << 31, 1 << 62, float("inf")), max_image_bytes=1 << 62)


@dataclass
class Localized:
    """What every prediction keeps, graded or not: the mask and the views of the scan.

    overview: the reference image on the segmenter's grid, intensities in [0, 1] (None for
    tasks without a segmenter); probabilities: the segmenter's (L, D, H, W) on that grid when
    it made the mask.
    """

    prediction: StoredPrediction
    task: TaskSpec
    reference_grid: Grid  # voxels of the reference image that was sent
    reference_name: str
    reference_kind: str
    mask: Volume | None
    mask_source: str | None
    overview: Volume | None
    probabilities: np.ndarray | None

    @property
    def gradable(self) -> bool:
        return bool(self.prediction.response.get("gradable", True))

    def headers(self, store: Store) -> list[Dataset]:
        """The source series' headers (no pixel data), in slice order; [] unless DICOM."""
        data = store.read(self.prediction, "headers.json") or store.read_cache(
            self.prediction, "headers.json"
        )
        if data is None:
            return []
        return [Dataset.from_json(item) for item in json.loads(data)]


@dataclass
class StoredCase(Localized):
    """A graded prediction: also what the grader saw and said."""

    image: np.ndarray  # [M, D, H, W]
    present: np.ndarray  # [M]
    grid: Grid
    outputs: dict[str, np.ndarray]

    @property
    def class_index(self) -> int:
        """The class the prediction answered (the model's decision rule may differ from the
        argmax of its probabilities: `ServedModel.label_of`)."""
        label = self.prediction.response.get("label")
        if label in self.task.classes:
            return self.task.classes.index(label)
        return int(np.argmax(self.outputs["probabilities"]))

    @property
    def reference_channel(self) -> int:
        return self.task.modalities.index(self.reference_name)


def stored_uploads(store: Store, prediction: StoredPrediction) -> dict[str, list[Upload]]:
    """The uploaded files of a prediction by field, in the order they were sent."""
    uploads: dict[str, list[Upload]] = defaultdict(list)
    root = prediction.folder / "uploads"
    if root.is_dir():
        for field_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            for path in sorted(p for p in field_dir.iterdir() if p.is_file()):
                name = path.name.split("-", 1)[-1]
                uploads[field_dir.name].append(Upload(field_dir.name, name, "", path))
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
        model_input = preprocess(study, task, reads=meta.get("used"))
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


def load_localized(store: Store, prediction: StoredPrediction) -> Localized:
    """The mask and views every prediction keeps (409 when its files are incomplete)."""
    reference = store.read_npz(prediction, "reference.npz")
    meta_bytes = store.read(prediction, "meta.json")
    if reference is None or meta_bytes is None:
        raise NotAvailableError("the stored files of this prediction are incomplete", field="id")
    meta = json.loads(meta_bytes)
    mask = store.read_npz(prediction, "mask.npz") or store.read_npz(prediction, "cache/mask.npz")
    overview = store.read_npz(prediction, "overview.npz")
    segmentation = store.read_npz(prediction, "segmentation.npz")
    return Localized(
        prediction=prediction,
        task=get_task(prediction.task, meta.get("grid", "whole")),
        reference_grid=Grid(shape=tuple(int(n) for n in reference["shape"]), affine=reference["affine"]),  # type: ignore[arg-type]
        reference_name=meta["reference"],
        reference_kind=meta["reference_kind"],
        mask=Volume(mask["array"].astype(np.float32), mask["affine"]) if mask is not None else None,
        mask_source=meta.get("mask_source", "upload" if mask is not None else None),
        overview=Volume(from_tensor_layout(overview["image"].astype(np.float32) / 255.0), overview["affine"])
        if overview is not None
        else None,
        probabilities=segmentation["probabilities"].astype(np.float32) / 255.0
        if segmentation is not None
        else None,
    )


def load_stored_case(store: Store, prediction: StoredPrediction) -> StoredCase:
    """A graded prediction with its model input and outputs (409 for one not graded)."""
    localized = load_localized(store, prediction)
    if not localized.gradable:
        raise NotAvailableError(
            "this study was not graded (see `not_gradable` in the prediction): there is no grade to "
            "explain; its segmentation is at /v1/explain/{id}/segmentation",
            field="id",
        )
    outputs = store.read_npz(prediction, "outputs.npz")
    if outputs is None:
        raise NotAvailableError("the stored files of this prediction are incomplete", field="id")
    meta = json.loads(store.read(prediction, "meta.json") or b"{}")
    # Kept with the prediction, else (older predictions) cached, else rebuilt from the upload.
    model_input = store.read_npz(prediction, "input.npz") or store.read_npz(prediction, "cache/input.npz")
    mask = localized.mask
    if model_input is None:
        model_input, rebuilt_mask = _rebuild_input(store, prediction, localized.task, meta)
        if rebuilt_mask is not None:
            mask = Volume(rebuilt_mask["array"], rebuilt_mask["affine"])
    shape = tuple(int(s) for s in model_input["grid_shape"])
    return StoredCase(
        **{**localized.__dict__, "mask": mask},
        image=model_input["image"],
        present=model_input["present"],
        grid=Grid(shape=shape, affine=model_input["grid_affine"]),  # type: ignore[arg-type]
        outputs=outputs,
    )
