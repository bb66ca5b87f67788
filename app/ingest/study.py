"""Uploads -> `Study`: one `Volume` per modality, where each came from and why.

Per-modality fields hold a NIfTI file, a zip of one DICOM series, or DICOM Part-10 files;
the `study` field holds a zip (or files) of a whole study whose series are assigned to
modalities from their tags (see `app.ingest.assign`); `mask` is an optional label map
(integer labels 0 to 255) on any grid, a NIfTI or a DICOM SEG, which places a lesion-grid
model and gives region-graph explanations their regions. A SEG inside the `study` is its
mask when no `mask` is sent (`app.ingest.seg`).
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from app.errors import (
    InvalidStudyError,
    MissingFieldError,
    MissingModalityError,
    ModalityMismatchError,
    NonFiniteVoxelsError,
    NotDicomError,
    ProblemError,
    SeveralSeriesError,
    TooLargeError,
    UnknownModalityError,
    UnsupportedMediaError,
    contract_problem,
)
from app.ingest.archive import ZipLimits, iter_members
from app.ingest.assign import (
    DICOM_MODALITY,
    attenuation_corrected,
    ct_phase_rank,
    guess_modality,
    tracer_from_tags,
)
from app.ingest.nifti import volume_from_nifti
from app.ingest.pet import to_suv
from app.ingest.seg import describe, is_segmentation, label_map_from_seg, study_seg_candidates
from app.ingest.sniff import SNIFF_BYTES, sniff
from models.contract import FOREGROUND_THRESHOLD, Volume, reference_modality
from models.dicom import DicomGeometryError, volume_from_series
from models.tasks import ModalityKind, TaskSpec

STUDY_FIELD = "study"
MASK_FIELD = "mask"
MIN_SHARED_VOLUME = 0.5  # of the smaller image's box, for two modalities of one study
MAX_MASK_LABEL = 255  # label maps are uint8 in practice; each label is a region-graph node
MAX_AIR_HU = -900.0  # a CT whose densest voxel is this thin holds no tissue (air is -1000)
MAX_MATRIX = 4096  # pixels along a slice side: CT is 512-1024, MR and PET smaller
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_DEFER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Upload:
    """One uploaded file of a multipart field, spooled to disk as it arrived: a study is
    never held whole in memory, only the slice being parsed (see `app.ingest.uploads`)."""

    field: str
    filename: str
    content_type: str
    path: Path

    def head(self) -> bytes:
        """The first bytes, enough to tell what the file is (`sniff`)."""
        with self.path.open("rb") as file:
            return file.read(SNIFF_BYTES)

    def read(self) -> bytes:
        return self.path.read_bytes()


@dataclass
class SeriesSource:
    """Where a modality's volume came from, and why that series was chosen."""

    modality: str
    kind: Literal["dicom", "nifti"]
    reason: str
    filename: str | None = None
    series_uid: str | None = None
    study_uid: str | None = None
    frame_of_reference_uid: str | None = None
    patient_id: str | None = None
    instances: int = 0
    # Headers without pixel data, in the volume's slice (k) order: for DICOM outputs.
    headers: list[Dataset] = field(default_factory=list)

    @classmethod
    def of_dicom(
        cls, modality: str, reason: str, first: Dataset, instances: int, headers: list[Dataset] | None = None
    ) -> SeriesSource:
        """A DICOM series' source, its identifiers read from one of its instances (`first`)."""

        def uid(keyword: str) -> str | None:
            return str(first.get(keyword, "") or "") or None

        return cls(
            modality=modality,
            kind="dicom",
            reason=reason,
            series_uid=uid("SeriesInstanceUID"),
            study_uid=uid("StudyInstanceUID"),
            frame_of_reference_uid=uid("FrameOfReferenceUID"),
            patient_id=_patient_id(first),
            instances=instances,
            headers=headers or [],
        )


@dataclass
class Study:
    volumes: dict[str, Volume]
    sources: dict[str, SeriesSource]
    warnings: list[str] = field(default_factory=list)
    ignored: list[dict[str, str]] = field(default_factory=list)
    mask: Volume | None = None
    mask_source: SeriesSource | None = None

    @property
    def study_uid(self) -> str | None:
        return next((s.study_uid for s in self.sources.values() if s.study_uid), None)

    @property
    def all_sources(self) -> list[SeriesSource]:
        """Where every input came from: the modalities', then the mask's."""
        return [*self.sources.values(), *([self.mask_source] if self.mask_source else [])]

    @property
    def series_uids(self) -> dict[str, str]:
        return {m: s.series_uid for m, s in self.sources.items() if s.series_uid}


@dataclass(frozen=True)
class IngestLimits:
    zip: ZipLimits
    max_image_bytes: int


def header_only(ds: Dataset) -> Dataset:
    """A copy of `ds` without pixel data (what explanations keep of a source image)."""
    header = Dataset()
    for element in ds:
        if element.tag not in _PIXEL_TAGS:
            header.add(element)
    if hasattr(ds, "file_meta"):
        header.file_meta = ds.file_meta
    return header


def _read_dicom(name: str, source: bytes | Path, field_name: str) -> Dataset:
    """A file already sniffed as DICOM Part-10, parsed. From a spooled file, values over
    `_DEFER_BYTES` (the pixel data) are read only when decoded, one slice at a time: a
    series' pixel bytes are never all in memory beside its volume."""
    try:
        if isinstance(source, bytes):
            return pydicom.dcmread(io.BytesIO(source))
        return pydicom.dcmread(source, defer_size=_DEFER_BYTES)
    except Exception as exc:  # pydicom raises many kinds on truncated or malformed files
        raise NotDicomError(f"{name!r} cannot be parsed as DICOM ({exc})", field=field_name) from None


def _is_dicom(head: bytes) -> bool:
    return sniff(head) == "dicom"


def _dicom_from_uploads(uploads: Sequence[Upload], limits: IngestLimits, field_name: str) -> list[Dataset]:
    """Every DICOM instance in the uploads (files and zips of files) of one field."""
    datasets: list[Dataset] = []
    for upload in uploads:
        kind = sniff(upload.head())
        if kind == "zip":
            # One member at a time: each is parsed, and its bytes let go, before the next;
            # members that are not DICOM (a viewer, a report) are passed over unread.
            before = len(datasets)
            for name, data in iter_members(upload.path, limits.zip, field_name, wanted=_is_dicom):
                datasets.append(_read_dicom(name, data, field_name))
            if len(datasets) == before:
                raise NotDicomError(
                    f"the zip {upload.filename!r} holds no DICOM Part-10 files", field=field_name
                )
        elif kind == "dicom":
            datasets.append(_read_dicom(upload.filename, upload.path, field_name))
        elif upload.filename.lower().endswith((".dcm", ".dicom")) or "dicom" in upload.content_type:
            raise NotDicomError(
                f"{upload.filename!r} is not a DICOM Part-10 file (no 'DICM' marker)", field=field_name
            )
        else:
            raise UnsupportedMediaError(
                f"{upload.filename!r} is neither DICOM, a zip of DICOM, nor NIfTI", field=field_name
            )
    return _with_pixels(datasets)


def _with_pixels(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Images and SEGs; a report or a presentation state has nothing to read."""
    return [ds for ds in datasets if "PixelData" in ds or "FloatPixelData" in ds]


def _group_series(datasets: Sequence[Dataset]) -> dict[str, list[Dataset]]:
    series: dict[str, list[Dataset]] = defaultdict(list)
    for ds in datasets:
        series[str(ds.get("SeriesInstanceUID", "unknown"))].append(ds)
    return dict(series)


def _sorted_headers(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Headers in the order `volume_from_series` stacks slices (along the slice normal)."""
    headers = [header_only(ds) for ds in datasets]
    try:
        iop = np.asarray([float(v) for v in headers[0].ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        return sorted(headers, key=lambda h: float(np.asarray(h.ImagePositionPatient, dtype=float) @ normal))
    except (AttributeError, TypeError, ValueError):
        return headers  # enhanced multi-frame: one instance, nothing to order


def _check_decoded_size(datasets: Sequence[Dataset], modality: str, max_bytes: int) -> None:
    """Refuse, from the headers alone, pixel data that would decode into more memory than
    allowed: a compressed slice of a few kB can claim 65535 x 65535 pixels."""
    try:
        shapes = [
            (int(ds.get("Rows") or 0), int(ds.get("Columns") or 0), int(ds.get("NumberOfFrames") or 1))
            for ds in datasets
        ]
    except (TypeError, ValueError):
        return  # malformed numbers are refused, with their reason, when the series is read
    largest = max(max(rows, cols) for rows, cols, _ in shapes)
    if largest > MAX_MATRIX:
        raise TooLargeError(
            f"{modality}: a {largest}-pixel matrix side is larger than any CT, PET or MR slice "
            f"(at most {MAX_MATRIX})",
            field=modality,
        )
    decoded = sum(rows * cols * frames for rows, cols, frames in shapes) * np.dtype(np.float32).itemsize
    if decoded > max_bytes:
        raise TooLargeError(
            f"{modality}: the series decodes to {decoded} bytes, over {max_bytes}", field=modality
        )


def _volume_from_dicom(
    datasets: Sequence[Dataset], modality: str, kind: str, reason: str, study: Study, limits: IngestLimits
) -> None:
    _check_decoded_size(datasets, modality, limits.max_image_bytes)
    try:
        volume = volume_from_series(datasets, release_pixels=True)
    except DicomGeometryError as exc:
        raise contract_problem(exc, f"{modality}: {exc.reason}", field=modality) from None
    except (ValueError, TypeError, AttributeError, KeyError, IndexError):
        # A malformed header value (NumberOfFrames '1A', say) is the client's input, not a 500;
        # the value itself is not echoed, it may carry identifiers.
        raise InvalidStudyError(
            f"{modality}: a DICOM header value is malformed; check the series with a DICOM validator",
            field=modality,
        ) from None
    first = datasets[0]
    if kind == "pet":
        if attenuation_corrected(first) is False:
            study.warnings.append(
                f"{modality}: not attenuation-corrected (CorrectedImage lacks ATTN): its values are "
                "not quantitative and the prediction is unreliable; send the corrected series"
            )
        volume, warning, note = to_suv(volume, first)
        reason = f"{reason}; {note}"
        if warning:
            study.warnings.append(f"{modality}: {warning}")
    study.volumes[modality] = volume
    study.sources[modality] = SeriesSource.of_dicom(
        modality, reason, first, len(datasets), _sorted_headers(datasets)
    )


def _ingest_field(
    modality: str, uploads: Sequence[Upload], task: TaskSpec, limits: IngestLimits, study: Study
) -> None:
    kinds = {sniff(u.head()) for u in uploads}
    if kinds & {"nifti", "gzip"}:
        if len(uploads) > 1:
            raise SeveralSeriesError(
                f"{len(uploads)} files sent as {modality!r}; send one NIfTI volume per modality",
                field=modality,
            )
        upload = uploads[0]
        study.volumes[modality] = volume_from_nifti(upload.read(), modality, limits.max_image_bytes)
        study.sources[modality] = SeriesSource(
            modality=modality, kind="nifti", reason=f"sent as field {modality!r}", filename=upload.filename
        )
        return
    datasets = _dicom_from_uploads(uploads, limits, modality)
    if not datasets:
        raise NotDicomError(f"no DICOM image instances were sent as {modality!r}", field=modality)
    series = _group_series(datasets)
    if len(series) > 1:
        raise SeveralSeriesError(
            f"{len(series)} series were sent as {modality!r}; send one series per modality field, "
            "or the whole study as `study` to have series assigned from their tags",
            field=modality,
        )
    _check_dicom_modality(datasets, modality, task)
    _volume_from_dicom(
        datasets, modality, task.kind_of(modality), f"sent as field {modality!r}", study, limits
    )


def _check_dicom_modality(datasets: Sequence[Dataset], field_name: str, task: TaskSpec) -> None:
    """Refuse a series whose Modality tags contradict the field it was sent as (an MR sent as
    `ct` would be graded on MR values read as HU); instances without the tag are taken as sent."""
    expected = DICOM_MODALITY[task.kind_of(field_name)]
    found = sorted({str(ds.get("Modality", "") or "").upper() for ds in datasets} - {"", expected})
    if found:
        raise ModalityMismatchError(
            f"the series sent as {field_name!r} holds DICOM Modality {found[0]!r}, not {expected!r}; "
            f"send a {expected} series as {field_name!r}, or the whole study as {STUDY_FIELD!r}",
            field=field_name,
        )
    if task.kind_of(field_name) == "pet":  # an FDG PET sent as the acetate one, say
        tracer = tracer_from_tags(datasets[0])
        if tracer.modality is not None and tracer.modality != field_name:
            raise ModalityMismatchError(
                f"the series sent as {field_name!r} is {tracer.modality!r} ({tracer.reason}); send it "
                f"as {tracer.modality!r}",
                field=field_name,
            )


def _ingest_study(
    everything: Sequence[Dataset], task: TaskSpec, limits: IngestLimits, study: Study
) -> list[Dataset]:
    """Assign the study's image series to modalities; return its SEGs (mask candidates)."""
    patients = {_patient_id(ds) for ds in everything} - {None}
    if len(patients) > 1:
        raise InvalidStudyError(
            f"the study holds images of {len(patients)} patients (PatientID differs); send one "
            "patient's study",
            field=STUDY_FIELD,
        )
    segs = [ds for ds in everything if is_segmentation(ds)]
    datasets = [ds for ds in everything if not is_segmentation(ds)]
    if not datasets:
        raise NotDicomError("the study holds no DICOM image instances", field=STUDY_FIELD)
    candidates: dict[str, list[tuple[str, list[Dataset], str]]] = defaultdict(list)
    for uid, members in _group_series(datasets).items():
        guess = guess_modality(members[0])
        if guess.modality is None or guess.modality not in task.modalities:
            why = guess.reason if guess.modality is None else f"{guess.reason}, not an input of {task.name!r}"
            study.ignored.append({"series_uid": uid, "reason": why})
            continue
        candidates[guess.modality].append((uid, members, guess.reason))
    for modality, options in candidates.items():
        if modality in study.volumes:
            for uid, _, _ in options:
                study.ignored.append({"series_uid": uid, "reason": f"{modality!r} was sent as its own field"})
            continue
        kind = task.kind_of(modality)
        options.sort(key=lambda o: _preference(kind, o[1]), reverse=True)
        uid, members, reason = options[0]
        if len(options) > 1:
            why = "portal-venous phase first, then the most slices" if kind == "ct" else "the most slices"
            if kind == "ct":
                reason += f", {ct_phase_rank(members[0])[1]}"
            reason += f"; chosen over {len(options) - 1} other candidate(s): {why}"
            for other, _, _ in options[1:]:
                study.ignored.append(
                    {"series_uid": other, "reason": f"another {modality!r} series was preferred ({why})"}
                )
        _volume_from_dicom(members, modality, kind, reason, study, limits)
    return segs


def _preference(kind: str, members: Sequence[Dataset]) -> tuple[int, int]:
    """Sort key among candidate series for one modality: CT phase rank, then slice count."""
    phase = ct_phase_rank(members[0])[0] if kind == "ct" else 0
    return phase, len(members)


def build_study(
    uploads: Mapping[str, Sequence[Upload]],
    task: TaskSpec,
    limits: IngestLimits,
    fetched: Sequence[Dataset] = (),
) -> Study:
    """Read every uploaded field into a `Study` for `task`; `fetched` are the instances of a
    study pulled from the PACS, read as if sent as the `study` field.

    Raises:
        ProblemError subclasses naming the field at fault.
    """
    allowed = {*task.modalities, STUDY_FIELD, MASK_FIELD}
    for name in uploads:
        if name not in allowed:
            raise UnknownModalityError(
                f"field {name!r} is not a modality of task {task.name!r}; "
                f"send {', '.join(task.modalities)}, {STUDY_FIELD} or {MASK_FIELD}",
                field=name,
            )
    if not fetched and not any(uploads.get(m) for m in (*task.modalities, STUDY_FIELD)):
        raise MissingFieldError(
            f"no image was sent; send one of {', '.join(task.modalities)} or a whole {STUDY_FIELD!r} zip",
            field=task.required[0] if task.required else task.modalities[0],
        )
    study = Study(volumes={}, sources={})
    for modality in task.modalities:
        if uploads.get(modality):
            _ingest_field(modality, uploads[modality], task, limits, study)
    segs: list[Dataset] = []
    if fetched or uploads.get(STUDY_FIELD):
        everything = (
            _with_pixels(fetched)
            if fetched
            else _dicom_from_uploads(uploads[STUDY_FIELD], limits, STUDY_FIELD)
        )
        segs = _ingest_study(everything, task, limits, study)
    if uploads.get(MASK_FIELD):
        study.mask, study.mask_source = _read_mask(uploads[MASK_FIELD], limits)
    _check_complete(study, task)
    if study.mask is not None and not _overlaps_reference(study.mask, study, task):
        raise InvalidStudyError(
            "no labelled voxel of the mask lies inside the image the model reads: it belongs to "
            "another image or its affine is wrong",
            field=MASK_FIELD,
        )
    if study.mask is None and segs:
        _mask_from_study(segs, study, task, limits)
    elif segs:
        study.ignored.extend(
            {"series_uid": str(ds.get("SeriesInstanceUID", "unknown")), "reason": f"{MASK_FIELD!r} was sent"}
            for ds in segs
        )
    return study


def _mask_from_study(segs: Sequence[Dataset], study: Study, task: TaskSpec, limits: IngestLimits) -> None:
    """The study's own SEG as its mask, when one is of the frame the model is placed on."""
    reference = study.sources[reference_modality(task, set(study.volumes))]
    candidates, ignored = study_seg_candidates(segs, reference.frame_of_reference_uid)
    study.ignored.extend(ignored)
    for ds in candidates:
        uid = str(ds.get("SeriesInstanceUID", "unknown"))
        if study.mask is not None:
            study.ignored.append({"series_uid": uid, "reason": "a newer SEG of the study is the mask"})
            continue
        try:  # the mask was not asked for: a SEG that cannot be one is passed over, not fatal
            mask = _checked_labels(label_map_from_seg(ds, STUDY_FIELD, limits.max_image_bytes), STUDY_FIELD)
        except ProblemError as exc:
            study.ignored.append({"series_uid": uid, "reason": f"a SEG that is no mask: {exc.detail}"})
            continue
        if not _overlaps_reference(mask, study, task):
            study.ignored.append({"series_uid": uid, "reason": "a SEG whose segments lie outside the image"})
            continue
        study.mask, study.mask_source = (
            mask,
            SeriesSource.of_dicom(MASK_FIELD, f"the study's DICOM SEG, {describe(ds)}", ds, 1),
        )


def _read_mask(uploads: Sequence[Upload], limits: IngestLimits) -> tuple[Volume, SeriesSource]:
    """The label map: one NIfTI of integer labels 0 (background) to `MAX_MASK_LABEL`, or one
    DICOM SEG (a file, or a zip holding it) whose segment numbers are the labels."""
    if len(uploads) > 1:
        raise SeveralSeriesError(
            f"{len(uploads)} files sent as {MASK_FIELD!r}; send one label map", field=MASK_FIELD
        )
    upload = uploads[0]
    if sniff(upload.head()) in ("nifti", "gzip"):
        mask = volume_from_nifti(upload.read(), MASK_FIELD, limits.max_image_bytes)
        source = SeriesSource(MASK_FIELD, "nifti", f"sent as field {MASK_FIELD!r}", filename=upload.filename)
        return _checked_labels(mask, MASK_FIELD), source
    segs = [ds for ds in _dicom_from_uploads(uploads, limits, MASK_FIELD) if is_segmentation(ds)]
    if len(segs) != 1:
        raise InvalidStudyError(
            f"the {MASK_FIELD!r} holds {len(segs)} DICOM SEG instances; send one SEG or a NIfTI "
            "label map (RT structure sets are not read)",
            field=MASK_FIELD,
        )
    mask = label_map_from_seg(segs[0], MASK_FIELD, limits.max_image_bytes)
    reason = f"sent as field {MASK_FIELD!r}, DICOM SEG, {describe(segs[0])}"
    source = SeriesSource.of_dicom(MASK_FIELD, reason, segs[0], 1)
    return _checked_labels(mask, MASK_FIELD), source


def _checked_labels(mask: Volume, field_name: str) -> Volume:
    """Each label becomes a region-graph node, so a probability map or an image sent by
    mistake (thousands of "labels") is refused rather than explained as nonsense."""
    values = mask.array
    if np.any(np.abs(values - np.rint(values)) > 1e-3):
        raise InvalidStudyError(
            "the mask holds non-integer values; send a label map (0 background, 1, 2... regions), "
            "not probabilities or an image",
            field=field_name,
        )
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > MAX_MASK_LABEL:
        raise InvalidStudyError(
            f"mask labels run from {low:.0f} to {high:.0f}; labels must be 0 (background) to "
            f"{MAX_MASK_LABEL}",
            field=field_name,
        )
    if high == 0:
        raise InvalidStudyError(
            "the mask is empty (all background); send it with labelled regions", field=field_name
        )
    return mask


def _check_complete(study: Study, task: TaskSpec) -> None:
    given = set(study.volumes)
    if not given:
        raise MissingModalityError(
            f"no series of the study could be assigned to {list(task.modalities)}; "
            f"ignored: {[i['reason'] for i in study.ignored]}",
            field=STUDY_FIELD,
        )
    missing = [m for m in task.required if m not in given]
    if missing:
        raise MissingModalityError(
            f"task {task.name!r} needs {missing[0]!r}; got {sorted(given)}. Send it as field "
            f"{missing[0]!r} or inside {STUDY_FIELD!r}",
            field=missing[0],
        )
    for name, volume in study.volumes.items():
        _check_values(name, volume, task.kind_of(name))
    _check_one_patient(study)
    _check_alignment(study, task)


def _overlaps_reference(mask: Volume, study: Study, task: TaskSpec) -> bool:
    """Whether the mask's labelled box meets the reference image's box (else its regions
    would all fall outside what the model reads, and explanations would drop it silently)."""
    low, high = mask.world_bounds(mask.array > 0)
    ref_low, ref_high = study.volumes[reference_modality(task, set(study.volumes))].world_bounds()
    return bool(np.all(np.minimum(high, ref_high) > np.maximum(low, ref_low)))


def _patient_id(ds: Dataset) -> str | None:
    return str(ds.get("PatientID", "") or "").strip() or None


def _check_one_patient(study: Study) -> None:
    """Refuse images of two patients graded as one (the IDs are not echoed: they identify);
    warn about images of two examinations of one patient (another day, another disease)."""
    first = next((s for s in study.all_sources if s.patient_id), None)
    if first is None:
        return
    for source in study.all_sources:
        if source.patient_id and source.patient_id != first.patient_id:
            raise InvalidStudyError(
                f"{source.modality} is of another patient than {first.modality} (PatientID differs); "
                "send images of one patient",
                field=source.modality,
            )
        if source.study_uid and first.study_uid and source.study_uid != first.study_uid:
            study.warnings.append(
                f"{source.modality}: from another study than {first.modality} (StudyInstanceUID "
                "differs); make sure both are of the same examination"
            )


def _check_alignment(study: Study, task: TaskSpec) -> None:
    """Every modality must lie where the reference one does: the network reads them voxel by
    voxel on one grid placed on the reference, so a PET elsewhere in space would enter as
    background while counted as given. Different DICOM frames of reference are allowed
    (a PET/CT registered offline) but said in a warning."""
    reference = reference_modality(task, set(study.volumes))
    ref_low, ref_high = study.volumes[reference].world_bounds()
    ref_frame = study.sources[reference].frame_of_reference_uid
    for name, volume in study.volumes.items():
        if name == reference:
            continue
        low, high = volume.world_bounds()
        shared = np.prod(np.clip(np.minimum(high, ref_high) - np.maximum(low, ref_low), 0.0, None))
        smaller = min(np.prod(high - low), np.prod(ref_high - ref_low))
        if shared < MIN_SHARED_VOLUME * smaller:
            raise InvalidStudyError(
                f"{name} lies elsewhere in space than {reference} ({shared / smaller:.0%} of the smaller "
                "one's box is shared): they cannot be read on one grid; send images of one patient "
                "position, or leave it out",
                field=name,
            )
        frame = study.sources[name].frame_of_reference_uid
        if frame and ref_frame and frame != ref_frame:
            study.warnings.append(
                f"{name}: another DICOM frame of reference than {reference}; it is read where its "
                "coordinates place it, so it must have been registered to it"
            )


def _check_values(name: str, volume: Volume, kind: ModalityKind) -> None:
    """Refuse voxels that are not numbers, and images that carry nothing to grade: a constant
    image (a placeholder for a missing modality, which should be left out instead) or an MR
    with no voxel above background, which the network would see as all zeros."""
    low, high = float(volume.array.min()), float(volume.array.max())  # NaN and inf propagate
    if not (np.isfinite(low) and np.isfinite(high)):
        raise NonFiniteVoxelsError(f"{name} contains NaN or infinite voxel values", field=name)
    if low == high:
        raise InvalidStudyError(
            f"every voxel of {name} is {low:g}: the image is blank; leave a missing modality out "
            "and it is reported as missing",
            field=name,
        )
    if kind == "ct" and high <= MAX_AIR_HU:
        raise InvalidStudyError(
            f"no voxel of {name} is denser than air (the highest is {high:.0f} HU): there is no body "
            "to grade; check the rescale slope and intercept",
            field=name,
        )
    if kind == "mri" and high <= FOREGROUND_THRESHOLD["mri"]:
        raise InvalidStudyError(
            f"{name} has no voxel above background (0): MR intensities must be positive",
            field=name,
        )
