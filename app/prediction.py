"""The prediction pipeline: study -> model input -> ONNX outputs -> response + stored files."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from app.errors import (
    InvalidStudyError,
    MissingFieldError,
    MissingModalityError,
    NonFiniteVoxelsError,
    NotAVolumeProblem,
)
from app.ingest.study import Study, Upload
from app.quality import input_warnings
from app.runtime import ServedModel
from app.schemas import Modalities, ModelRef, Prediction, SeriesAssignment, StudyInfo
from app.store import npz_bytes
from models.contract import (
    ContractError,
    ModelInput,
    NotAVolumeError,
    check_volume,
    prepare_input,
    reference_modality,
)
from models.tasks import TaskSpec


def check_volumes(study: Study, task: TaskSpec) -> None:
    """422 `not-a-volume` for a slice, a handful of slices or too short a scan (any modality)."""
    for name, volume in study.volumes.items():
        try:
            check_volume(name, volume, task)
        except NotAVolumeError as exc:
            raise NotAVolumeProblem(exc.reason, field=exc.field) from None
        except ContractError as exc:  # a voxel size no scan has: the header is wrong
            raise InvalidStudyError(exc.reason, field=exc.field) from None


def preprocess(study: Study, task: TaskSpec) -> ModelInput:
    """`prepare_input`, with its contract errors turned into typed problems."""
    try:
        return prepare_input(study.volumes, task, lesion=study.mask)
    except ContractError as exc:
        if "NaN" in exc.reason:
            raise NonFiniteVoxelsError(exc.reason, field=exc.field) from None
        if "needs" in exc.reason:
            # A lesion-grid model without the lesion's mask: a missing field, not a modality.
            if exc.field == "mask":
                raise MissingFieldError(
                    f"{exc.reason}: send it as field 'mask' (a NIfTI label map or a DICOM SEG), or "
                    "keep a DICOM SEG of the lesion in the study",
                    field="mask",
                ) from None
            raise MissingModalityError(exc.reason, field=exc.field) from None
        raise InvalidStudyError(exc.reason, field=exc.field) from None


def input_digest(model_input: ModelInput) -> str:
    """sha256 of what the model was fed: `present`, the grid, and every present channel.

    Absent channels are zeros by construction (`prepare_input`), so they are not hashed.
    An explanation that rebuilds the input from the stored upload checks it against this.
    """
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(model_input.present, dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(model_input.grid.affine, dtype=np.float64).tobytes())
    digest.update(np.asarray(model_input.grid.shape, dtype=np.int64).tobytes())
    for channel in np.flatnonzero(model_input.present):
        values = np.ascontiguousarray(model_input.image[channel], dtype=np.float32)
        digest.update(values.data)
    return digest.hexdigest()


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    exp = np.exp(shifted)
    return exp / exp.sum()


def infer(model: ServedModel, model_input: ModelInput) -> dict[str, np.ndarray]:
    outputs = model.run(model_input.image[None], model_input.present[None])
    return {key: value[0] for key, value in outputs.items()}


def links(prediction_id: str) -> dict[str, str]:
    base = f"/v1/explain/{prediction_id}"
    return {
        "self": f"/v1/predictions/{prediction_id}",
        "explanations": base,
        "attention": f"{base}/attention?format=png",
        "attention_nifti": f"{base}/attention?format=nifti",
        "attention_dicom": f"{base}/attention?format=dicom",
        "gradcam": f"{base}/attribution?method=gradcam",
        "integrated_gradients": f"{base}/attribution?method=integrated_gradients",
        "occlusion": f"{base}/attribution?method=occlusion",
        "graph": f"{base}/graph",
    }


@dataclass
class Outcome:
    response: Prediction
    files: dict[str, bytes]


def build_outcome(
    prediction_id: str,
    task: TaskSpec,
    model: ServedModel,
    study: Study,
    model_input: ModelInput,
    outputs: dict[str, np.ndarray],
    uploads: dict[str, list[Upload]],
    checks: list[str] | None = None,
) -> Outcome:
    """The response and the files to keep; `checks` are `input_warnings` if already computed."""
    if checks is None:
        checks = input_warnings(study.volumes, task)
    probabilities = softmax(outputs["logits"].astype(np.float64))
    label = task.classes[int(np.argmax(probabilities))]
    response = Prediction(
        id=prediction_id,
        task=task.name,
        label=label,
        probabilities={c: float(p) for c, p in zip(task.classes, probabilities, strict=True)},
        modalities=Modalities(used=list(model_input.used), missing=list(model_input.missing)),
        model=ModelRef(name=model.name, version=model.version, sha256=model.sha256),
        warnings=[*study.warnings, *checks],
        study=StudyInfo(
            study_uid=study.study_uid,
            series_uids=study.series_uids,
            assignments=[
                SeriesAssignment(
                    modality=s.modality,
                    kind=s.kind,
                    reason=s.reason,
                    series_uid=s.series_uid,
                    instances=s.instances,
                    filename=s.filename,
                )
                for s in study.all_sources
            ],
            ignored=study.ignored,
        ),
        links=links(prediction_id),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return Outcome(response, _files(task, study, model_input, outputs, probabilities, uploads))


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name.rsplit("/", 1)[-1])[:100] or "upload"


def _files(
    task: TaskSpec,
    study: Study,
    model_input: ModelInput,
    outputs: dict[str, np.ndarray],
    probabilities: np.ndarray,
    uploads: dict[str, list[Upload]],
) -> dict[str, bytes]:
    reference = reference_modality(task, set(study.volumes))
    volume = study.volumes[reference]
    files = {
        # Float maps barely compress: stored as they are (compressing cost more than writing).
        "outputs.npz": npz_bytes(compress=False, probabilities=probabilities, **outputs),
        # Only the geometry: maps go back onto the sent image's voxels; its values are in uploads/.
        "reference.npz": npz_bytes(shape=np.asarray(volume.array.shape), affine=volume.affine),
        "meta.json": json.dumps(
            {
                "reference": reference,
                "reference_kind": study.sources[reference].kind,
                "classes": list(task.classes),
                "grid": task.grid,
                "used": list(model_input.used),
                "input_digest": input_digest(model_input),
            }
        ).encode(),
    }
    if not uploads:
        # A study fetched from the PACS leaves no upload to rebuild the model input from.
        files["input.npz"] = npz_bytes(
            image=model_input.image,
            present=model_input.present,
            grid_affine=model_input.grid.affine,
            grid_shape=np.asarray(model_input.grid.shape),
        )
    headers = study.sources[reference].headers
    if headers and not uploads:  # else rebuilt from the stored DICOM files when needed
        files["headers.json"] = json.dumps([h.to_json_dict() for h in headers]).encode()
    if study.mask is not None and not uploads:
        files["mask.npz"] = npz_bytes(array=study.mask.array, affine=study.mask.affine)
    for field_name, items in uploads.items():
        for index, upload in enumerate(items):
            files[f"uploads/{_safe_name(field_name)}/{index:05d}-{_safe_name(upload.filename)}"] = upload.data
    return files
