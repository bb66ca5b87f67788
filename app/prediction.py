"""The prediction pipeline: study -> localized mask -> model input -> ONNX outputs -> response + files.

Localize, then grade (DESIGN.md). A study comes as volumes and, perhaps, a mask (the
client's, or a SEG kept with the study). Where the task has a segmenter and no mask came,
the segmenter makes one (`models.segmenter.segment`). The mask is judged before any grade:
no liver, a liver cut off by the scan, no lesion or a lesion the scan cuts make the study
not gradable, answered 200 with the reasons and the segmentation, and no grade at all.
A gradable study is graded on the crop and regions that mask gives.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

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
from app.schemas import MaskInfo, Modalities, ModelRef, NotGradable, Prediction, SeriesAssignment, StudyInfo
from app.settings import Settings
from app.store import npz_bytes
from models.contract import (
    ContractError,
    ModelInput,
    NotAVolumeError,
    Volume,
    check_volume,
    grid_of,
    prepare_input,
    reference_modality,
    to_tensor_layout,
)
from models.segmenter import (
    MaskSummary,
    Segmentation,
    SegmenterInput,
    SegmenterSpec,
    get_segmenter_spec,
    segment,
    segmenter_input,
    summarize,
)
from models.tasks import TaskSpec

MaskSource = Literal["upload", "pacs", "model"]


def check_volumes(study: Study, task: TaskSpec) -> None:
    """422 `not-a-volume` for a slice, a handful of slices or too short a scan (any modality)."""
    for name, volume in study.volumes.items():
        try:
            check_volume(name, volume, task)
        except NotAVolumeError as exc:
            raise NotAVolumeProblem(exc.reason, field=exc.field) from None
        except ContractError as exc:  # a voxel size no scan has: the header is wrong
            raise InvalidStudyError(exc.reason, field=exc.field) from None


@dataclass
class Localization:
    """Where the lesion is, and whether the study can be graded.

    source: whose mask it is (None: the task has no segmenter and none was sent).
    mask: the label map the grade uses, on its own grid; summary: what it says.
    overview: the reference image on the segmenter's grid (for the views explanations draw).
    segmentation: the segmenter's output, when it made the mask.
    reasons: why the study is not gradable (empty: gradable).
    """

    source: MaskSource | None
    mask: Volume | None
    summary: MaskSummary | None
    overview: SegmenterInput | None
    segmentation: Segmentation | None = None
    reasons: list[NotGradable] = field(default_factory=list)

    @property
    def gradable(self) -> bool:
        return not self.reasons


def localize(
    study: Study, task: TaskSpec, segmenter: ServedModel | None, fetched: bool, settings: Settings
) -> Localization:
    """The study's mask (the client's or a SEG of the study first, else the segmenter's),
    what it says, and whether it allows a grade (`gradability`)."""
    reference = study.volumes[reference_modality(task, set(study.volumes))]
    spec = segmenter.segmenter_spec if segmenter is not None else _spec_of(task)
    if study.mask is not None:
        source: MaskSource = "pacs" if fetched else "upload"
        if spec is None:  # a task that localizes nothing: the mask only gives regions
            return Localization(source, study.mask, None, None)
        overview = segmenter_input(reference, spec)
        labels = to_tensor_layout(np.rint(study.mask.array).astype(np.int64))
        mask_grid = grid_of(study.mask)
        summary = summarize(labels, mask_grid, reference)
        localization = Localization(source, study.mask, summary, overview)
    elif segmenter is not None:
        segmentation = segment(segmenter.predictors, reference, segmenter.segmenter_spec)
        localization = Localization(
            "model", segmentation.as_volume(), segmentation.summary, segmentation.overview, segmentation
        )
    else:
        return Localization(None, None, None, None)
    localization.reasons = gradability(localization.summary, settings, localization.source == "model")
    return localization


def _spec_of(task: TaskSpec) -> SegmenterSpec | None:
    try:
        return get_segmenter_spec(task.name)
    except ValueError:
        return None


def gradability(summary: MaskSummary | None, settings: Settings, segmented: bool = True) -> list[NotGradable]:
    """Why a mask does not allow a grade, by the thresholds of `settings` (README: *Not gradable*).

    The liver's volume is judged only in the segmenter's masks (`segmented`): its thresholds
    were chosen from what the segmenter calls liver in scans without one, and a liver a
    client drew is the client's to judge. A binary mask (the lesion alone) says nothing of
    the liver either. The lesion is judged in every mask.
    """
    if summary is None:
        return []
    reasons = []
    liver = summary.organ_ml if segmented else None
    if liver is not None and liver < settings.min_liver_ml:
        return [
            NotGradable(
                code="no-liver",
                detail=f"{liver:.0f} ml of liver found (under {settings.min_liver_ml:.0f} ml): the scan "
                "does not hold the liver; nothing is graded",
            )
        ]
    cut = [edge for edge in summary.organ_cut if edge in ("top", "bottom")]
    if liver is not None and cut and liver < settings.min_cut_liver_ml:
        reasons.append(
            NotGradable(
                code="liver-cut",
                detail=f"the scan cuts the liver at its {' and '.join(cut)} and holds {liver:.0f} ml of it "
                f"(under {settings.min_cut_liver_ml:.0f} ml): too little to judge the lesion; send a scan "
                "covering the whole liver",
            )
        )
    if summary.lesion_ml < settings.min_lesion_ml:
        reasons.append(
            NotGradable(
                code="no-lesion",
                detail=f"no lesion found (lesions total {summary.lesion_ml:.2f} ml, under "
                f"{settings.min_lesion_ml} ml): there is nothing to grade",
            )
        )
    elif summary.lesion_cut:
        reasons.append(
            NotGradable(
                code="lesion-cut",
                detail="the edge of the scan cuts the largest lesion: part of it was not imaged; send a "
                "scan covering the whole lesion",
            )
        )
    return reasons


def preprocess(study: Study, task: TaskSpec, mask: Volume | None = None) -> ModelInput:
    """`prepare_input` on the study (its lesion located by `mask`, else the study's own),
    with its contract errors turned into typed problems."""
    try:
        return prepare_input(study.volumes, task, lesion=mask if mask is not None else study.mask)
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


def links(prediction_id: str, graded: bool = True) -> dict[str, str]:
    base = f"/v1/explain/{prediction_id}"
    out = {"self": f"/v1/predictions/{prediction_id}", "explanations": base}
    if graded:
        out.update(
            attention=f"{base}/attention?format=png",
            attention_nifti=f"{base}/attention?format=nifti",
            attention_dicom=f"{base}/attention?format=dicom",
            gradcam=f"{base}/attribution?method=gradcam",
            integrated_gradients=f"{base}/attribution?method=integrated_gradients",
            occlusion=f"{base}/attribution?method=occlusion",
            graph=f"{base}/graph",
        )
    return out


def segmentation_links(prediction_id: str) -> dict[str, str]:
    base = f"/v1/explain/{prediction_id}/segmentation"
    return {"segmentation": f"{base}?format=nifti", "segmentation_dicom": f"{base}?format=dicom"}


@dataclass
class Outcome:
    response: Prediction
    files: dict[str, bytes]


@dataclass
class Graded:
    """What the grader saw and said (None for a study that is not gradable)."""

    model_input: ModelInput
    outputs: dict[str, np.ndarray]


def mask_info(localization: Localization, segmenter: ServedModel | None) -> MaskInfo | None:
    summary = localization.summary
    if summary is None or localization.source is None:
        return None
    return MaskInfo(
        source=localization.source,
        liver_ml=None if summary.organ_ml is None else round(summary.organ_ml, 1),
        lesion_ml=round(summary.lesion_ml, 2),
        lesions=summary.lesions,
        lesions_ml=[round(v, 2) for v in summary.lesions_ml],
        lesion_center_mm=None
        if summary.lesion_center_mm is None
        else [round(v, 1) for v in summary.lesion_center_mm],
        cut=list(summary.organ_cut),
        model=ModelRef(name=segmenter.name, version=segmenter.version, sha256=segmenter.sha256)
        if localization.source == "model" and segmenter is not None
        else None,
    )


def build_outcome(
    prediction_id: str,
    task: TaskSpec,
    model: ServedModel,
    study: Study,
    localization: Localization,
    graded: Graded | None,
    uploads: dict[str, list[Upload]],
    checks: list[str] | None = None,
    segmenter: ServedModel | None = None,
) -> Outcome:
    """The response and the files to keep; `checks` are `input_warnings` if already computed."""
    if checks is None:
        checks = input_warnings(study.volumes, task)
    probabilities = softmax(graded.outputs["logits"].astype(np.float64)) if graded is not None else None
    used = list(graded.model_input.used) if graded else [m for m in task.modalities if m in study.volumes]
    response = Prediction(
        id=prediction_id,
        task=task.name,
        gradable=graded is not None,
        label=task.classes[int(np.argmax(probabilities))] if probabilities is not None else None,
        probabilities=(
            {c: float(p) for c, p in zip(task.classes, probabilities, strict=True)}
            if probabilities is not None
            else None
        ),
        not_gradable=localization.reasons,
        mask=mask_info(localization, segmenter),
        modalities=Modalities(used=used, missing=[m for m in task.modalities if m not in used]),
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
        links={
            **links(prediction_id, graded is not None),
            **(segmentation_links(prediction_id) if localization.mask is not None else {}),
        },
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    files = _files(task, study, localization, graded, probabilities, uploads)
    return Outcome(response, files)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name.rsplit("/", 1)[-1])[:100] or "upload"


def _files(
    task: TaskSpec,
    study: Study,
    localization: Localization,
    graded: Graded | None,
    probabilities: np.ndarray | None,
    uploads: dict[str, list[Upload]],
) -> dict[str, bytes]:
    """Everything explanations need, kept once: they never ingest the upload again."""
    reference = reference_modality(task, set(study.volumes))
    volume = study.volumes[reference]
    meta = {
        "reference": reference,
        "reference_kind": study.sources[reference].kind,
        "classes": list(task.classes),
        "grid": task.grid,
        "gradable": graded is not None,
        "mask_source": localization.source,
    }
    files = {
        # Only the geometry: maps go back onto the sent image's voxels; its values are in uploads/.
        "reference.npz": npz_bytes(shape=np.asarray(volume.array.shape), affine=volume.affine),
    }
    if graded is not None:
        model_input = graded.model_input
        meta.update(used=list(model_input.used), input_digest=input_digest(model_input))
        # Float maps barely compress: stored as they are (compressing cost more than writing).
        files["outputs.npz"] = npz_bytes(compress=False, probabilities=probabilities, **graded.outputs)  # type: ignore[arg-type]
        files["input.npz"] = npz_bytes(
            image=model_input.image,
            present=model_input.present,
            grid_affine=model_input.grid.affine,
            grid_shape=np.asarray(model_input.grid.shape),
        )
    files["meta.json"] = json.dumps(meta).encode()
    headers = study.sources[reference].headers
    if headers:
        files["headers.json"] = json.dumps([h.to_json_dict() for h in headers]).encode()
    if localization.mask is not None:
        files["mask.npz"] = npz_bytes(array=localization.mask.array, affine=localization.mask.affine)
    if localization.overview is not None:
        overview = localization.overview
        # The overview is for pictures: 8 bits of the segmenter's [0, 1] intensities suffice.
        files["overview.npz"] = npz_bytes(
            image=np.rint(overview.image[0] * 255).astype(np.uint8), affine=overview.grid.affine
        )
    if localization.segmentation is not None:
        seg = localization.segmentation
        files["segmentation.npz"] = npz_bytes(
            labels=seg.labels,
            probabilities=np.rint(seg.probabilities * 255).astype(np.uint8),
            affine=seg.grid.affine,
        )
    for field_name, items in uploads.items():
        for index, upload in enumerate(items):
            files[f"uploads/{_safe_name(field_name)}/{index:05d}-{_safe_name(upload.filename)}"] = upload.data
    return files
