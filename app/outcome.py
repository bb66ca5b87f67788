"""What a prediction answers and keeps: the response, and the files its explanations read.

`build_outcome` turns a localized, perhaps graded study (`app.prediction`) into the
`Prediction` the client gets and the files the store keeps once, so that explanations never
ingest the upload again (`app.explain.case`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from app.ingest.study import SeriesSource, Study
from app.localization import Localization
from app.pacs.references import missing_reference
from app.runtime import ServedModel
from app.schemas import Decision, MaskInfo, Modalities, ModelRef, Prediction, SeriesAssignment, StudyInfo
from app.store import npz_bytes
from models.contract import ModelInput, reference_modality
from models.tasks import TaskSpec


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
        subregions_ml=None
        if localization.labels_ml is None
        else {name: round(ml, 2) for name, ml in localization.labels_ml.items()},
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
    checks: list[str],
    segmenter: ServedModel | None = None,
) -> Outcome:
    """The response and the files to keep; `checks`: the study's warnings (`app.prediction`)."""
    probabilities = softmax(graded.outputs["logits"].astype(np.float64)) if graded is not None else None
    used = list(graded.model_input.used) if graded else [m for m in task.modalities if m in study.volumes]
    decision = model.decision(used) if probabilities is not None else None
    response = Prediction(
        id=prediction_id,
        task=task.name,
        gradable=graded is not None,
        label=task.classes[model.label_of(probabilities, used)] if probabilities is not None else None,
        probabilities=(
            {c: float(p) for c, p in zip(task.classes, probabilities, strict=True)}
            if probabilities is not None
            else None
        ),
        decision=Decision.model_validate(decision) if decision else None,
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
    files = _files(task, study, localization, graded, probabilities)
    return Outcome(response, files)


def _files(
    task: TaskSpec,
    study: Study,
    localization: Localization,
    graded: Graded | None,
    probabilities: np.ndarray | None,
) -> dict[str, bytes]:
    """Everything explanations need, kept once: they never ingest the upload again (the
    uploaded files themselves are moved in beside these by `Store.save`)."""
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
        # Labels 0 to 255 (checked at ingestion, or the segmenter's): a quarter of float32.
        # Rounded straight into uint8 (buffered by the ufunc): no float copy of a full-size mask.
        labels = np.empty(localization.mask.array.shape, dtype=np.uint8)
        np.rint(localization.mask.array, out=labels, casting="unsafe")
        files["mask.npz"] = npz_bytes(array=labels, affine=localization.mask.affine)
    if localization.overview is not None:
        overview = localization.overview
        # The overview is for pictures: 8 bits of the segmenter's [0, 1] intensities suffice.
        files["overview.npz"] = npz_bytes(
            image=np.rint(overview.picture() * 255).astype(np.uint8), affine=overview.grid.affine
        )
    if localization.segmentation is not None:
        seg = localization.segmentation
        files["segmentation.npz"] = npz_bytes(
            labels=seg.labels,
            probabilities=np.rint(seg.probabilities * 255).astype(np.uint8),
            affine=seg.grid.affine,
        )
    return files


def link_dicom_outputs(links: dict[str, str], prediction_id: str, reference: SeriesSource) -> None:
    """Link the DICOM results of a DICOM source; unlink DICOM attention that cannot be made.

    A series lacking a UID the results reference is graded, but its DICOM outputs answer 409.
    """
    if reference.kind != "dicom":
        # NIfTI: no results, and DICOM attention is a capture in a study of its own; a SEG
        # needs source images to lie on.
        links.pop("segmentation_dicom", None)
        return
    if missing_reference(reference.headers) is not None:
        links.pop("attention_dicom", None)
        links.pop("segmentation_dicom", None)
        return
    base = f"/v1/explain/{prediction_id}"
    links.update({"dicom_results": f"{base}/dicom", "store": f"{base}/store"})
