"""DICOM outputs a PACS viewer can open beside the source study.

Every object here is derived from the reference series' headers, so it lands in the same
study and Frame of Reference with its own new series and instance UIDs, and names the
model (ManufacturerModelName, SoftwareVersions, algorithm identification) and says
"research use only" in its series description:

- `structured_report`: Comprehensive 3D SR, an Imaging Measurement Report (TID 1500). Each
  lesion of the mask (largest first, a few) is a TID 1410 group: a closed POLYLINE SCOORD
  outlining it on its largest slice of the source series (what OHIF draws and lists), its
  volume (SCT Volume, UCUM ml, by DCM "Sum of segmented voxel method") and longest axial
  diameter (SCT Long axis, mm), finding SCT Neoplasm in SCT Liver or Brain. The largest
  also holds the grade (SCT Histologic grade valued by the SNOMED CT Edmondson-Steiner
  grades) or "not gradable", and each class probability (NUM, unit "1"); the attention
  peak is a group of its own placed by a SCOORD3D point. Without a mask, one TID 1501
  group holds the grade, the probabilities and the peak.
  Private `99REACTKD` codes remain where DICOM and SNOMED CT have no concept: the per-class
  probabilities (`P-<CLASS>`: DCM "Probability" names no class, and a report needs one
  concept per class), a glioma's class names and its "predicted class" concept (LGG/HGG
  are no SNOMED CT grades), the peak of a model's attention (`PEAK-ATTENTION`), and "not
  gradable" (`NOT-GRADABLE`: SNOMED CT's "cannot be assessed" grades are per tumour site,
  none for the liver that we could verify here).
- `parametric_map`: float attention per voxel on the reference series' own frames
  (OHIF shows Parametric Maps as overlays).
- `segmentation`: a binary SEG on those frames: one segment per region-graph region, or
  the liver and the lesion of the mask the grade used (`LIVER`, `LESION`); a glioma's
  sub-regions (`NECROTIC_CORE`, `EDEMA`, `ENHANCING_TUMOR`).
- `rgb_capture`: a Secondary Capture of the PNG overlay (burned in) for viewers that show
  nothing else.
- `secondary_capture`: the same for inputs without DICOM headers (NIfTI): no source to
  reference, so a new study unless one is given.

`dciodvfy` (dicom3tools) finds no error in any of them (`tests/app/test_structured_report.py`).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian

from app.explain.lesions import Lesion
from app.identity import MANUFACTURER, RESEARCH_ONLY
from models.contract import Volume

# Private coding scheme for concepts no standard terminology has (class names, probabilities).
SCHEME = "99REACTKD"
CODING_SCHEME = CodingSchemeIdentificationItem(
    designator=SCHEME, name="REACT-KD Serve concepts", responsible_organization="REACT-KD"
)

# Edmondson-Steiner grades have SNOMED CT codes; other classes get private codes.
_STANDARD_CLASS_CODES: dict[str, Code] = {
    "well": codes.SCT.Grade1WellDifferentiated,
    "moderate": codes.SCT.Grade2ModeratelyDifferentiated,
    "poor": codes.SCT.Grade3PoorlyDifferentiated,
}
_PROCEDURES = {"CT": codes.LN.CTUnspecifiedBodyRegion, "MR": codes.LN.MRIUnspecifiedBodyRegion}
# Where each task's lesions lie (the finding site of the SR's lesion groups).
_SITES = {"hcc": codes.SCT.Liver, "brats": codes.SCT.Brain}
MILLILITER = Code("ml", "UCUM", "milliliter")

# Type 2 attributes highdicom copies from the source; empty when the source lacks them.
PATIENT_STUDY_TYPE2 = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


@dataclass(frozen=True)
class Provenance:
    """Which model made a result object, and where the object goes in its study."""

    model_name: str
    model_version: str
    series_number: int = 9900

    def description(self, what: str) -> str:
        """A series description that always keeps "research use only" (LO: 64 chars)."""
        head = f"{what} ({RESEARCH_ONLY}) "
        return head + f"{self.model_name} v{self.model_version}"[: 64 - len(head)]

    @property
    def software_versions(self) -> str:
        return f"{self.model_name} {self.model_version}"[:64]


def _complete(ds: Dataset) -> Dataset:
    for keyword in PATIENT_STUDY_TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


_D = TypeVar("_D", bound=Dataset)


def _with_laterality(ds: _D, source: Dataset | None) -> _D:
    """General Series' Laterality (Type 2C), which highdicom leaves out of Parametric Maps and
    Secondary Captures: the source's, else empty (unpaired or unknown body part)."""
    ds.Laterality = source.get("Laterality", "") if source is not None else ""
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _frames(volume_xyz: np.ndarray) -> np.ndarray:
    """``[x, y, z]`` = ``[column, row, slice]`` -> ``[frame, row, column]`` in slice order."""
    return np.ascontiguousarray(np.transpose(volume_xyz, (2, 1, 0)))


def class_code(name: str) -> Code:
    return _STANDARD_CLASS_CODES.get(name, Code(name.upper()[:16], SCHEME, name))


def probability_code(name: str) -> Code:
    return Code(f"P-{name.upper()}"[:16], SCHEME, f"Probability of {name}")


def predicted_class_code(task: str) -> Code:
    if task == "hcc":
        return codes.SCT.HistologicGrade
    return Code("PREDICTED-CLASS", SCHEME, f"Predicted {task} class")


# -- structured report -------------------------------------------------------------------

PEAK_ATTENTION = Code("PEAK-ATTENTION", SCHEME, "Peak attention")
# A study the service did not grade (no liver, no lesion, ...): said as such, never a grade.
NOT_GRADABLE = Code("NOT-GRADABLE", SCHEME, "Not gradable")


@dataclass(frozen=True)
class AttentionPeak:
    """The largest attention value and where it lies (RAS+ mm, converted to LPS for DICOM)."""

    value: float
    position_ras: tuple[float, float, float]

    @property
    def position_lps(self) -> tuple[float, float, float]:
        x, y, z = self.position_ras
        return (-x, -y, z)


def _peak_measurements(
    peak: AttentionPeak | None, frame_of_reference: str | None, algorithm: hd.sr.AlgorithmIdentification
) -> list[hd.sr.Measurement]:
    if peak is None or not frame_of_reference:
        return []
    point = hd.sr.CoordinatesForMeasurement3D(
        graphic_type=hd.sr.GraphicTypeValues3D.POINT,
        graphic_data=np.asarray([peak.position_lps], dtype=np.float64),
        frame_of_reference_uid=frame_of_reference,
    )
    return [
        hd.sr.Measurement(
            name=PEAK_ATTENTION,
            value=float(peak.value),
            unit=codes.UCUM.NoUnits,
            algorithm_id=algorithm,
            referenced_coordinates=[point],
        )
    ]


def _grade_items(
    task: str, label: str | None, probabilities: Mapping[str, float], algorithm: hd.sr.AlgorithmIdentification
) -> tuple[list[hd.sr.QualitativeEvaluation], list[hd.sr.Measurement]]:
    """The grade (or "not gradable") and each class probability."""
    evaluation = hd.sr.QualitativeEvaluation(
        name=predicted_class_code(task), value=class_code(label) if label is not None else NOT_GRADABLE
    )
    measurements = [
        hd.sr.Measurement(
            name=probability_code(name), value=float(value), unit=codes.UCUM.NoUnits, algorithm_id=algorithm
        )
        for name, value in probabilities.items()
    ]
    return [evaluation], measurements


def _peak_group(
    peak: AttentionPeak | None, frame_of_reference: str | None, algorithm: hd.sr.AlgorithmIdentification
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """The attention peak as a group of its own, placed by a SCOORD3D point (TID 1410 takes
    no coordinates on its measurements)."""
    if peak is None or not frame_of_reference:
        return []
    point = hd.sr.ImageRegion3D(
        graphic_type=hd.sr.GraphicTypeValues3D.POINT,
        graphic_data=np.asarray([peak.position_lps], dtype=np.float64),
        frame_of_reference_uid=frame_of_reference,
    )
    value = hd.sr.Measurement(
        name=PEAK_ATTENTION, value=float(peak.value), unit=codes.UCUM.NoUnits, algorithm_id=algorithm
    )
    return [
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Attention peak"),
            referenced_region=point,
            algorithm_id=algorithm,
            measurements=[value],
        )
    ]


def _lesion_measurements(lesion: Lesion, algorithm: hd.sr.AlgorithmIdentification) -> list[hd.sr.Measurement]:
    return [
        hd.sr.Measurement(
            name=codes.SCT.Volume,
            value=round(lesion.volume_ml, 3),
            unit=MILLILITER,
            method=codes.DCM.SumOfSegmentedVoxelMethodForVolume,
            algorithm_id=algorithm,
        ),
        hd.sr.Measurement(
            name=codes.SCT.LongAxis,
            value=round(lesion.diameter_mm, 2),
            unit=codes.UCUM.Millimeter,
            algorithm_id=algorithm,
        ),
    ]


def _lesion_group(
    number: int,
    lesion: Lesion,
    source: Dataset,
    task: str,
    algorithm: hd.sr.AlgorithmIdentification,
    grade: tuple[list[hd.sr.QualitativeEvaluation], list[hd.sr.Measurement]] = ([], []),
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 group of one lesion: its outline on its largest slice of `source` (the
    SCOORD a viewer draws and jumps to), its volume and longest axial diameter."""
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.asarray(lesion.outline, dtype=np.float64),
        source_image=hd.sr.SourceImageForRegion.from_source_image(source),
    )
    site = _SITES.get(task)
    evaluations, measurements = grade
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"Lesion {number}"),
        referenced_region=region,
        finding_type=codes.SCT.Neoplasm,
        finding_sites=[hd.sr.FindingSite(site)] if site is not None else None,
        algorithm_id=algorithm,
        measurements=_lesion_measurements(lesion, algorithm) + measurements,
        qualitative_evaluations=evaluations or None,
    )


def _measurement_groups(
    sources: Sequence[Dataset],
    task: str,
    lesions: Sequence[Lesion],
    grade: tuple[list[hd.sr.QualitativeEvaluation], list[hd.sr.Measurement]],
    peak: tuple[AttentionPeak | None, str | None],
    algorithm: hd.sr.AlgorithmIdentification,
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations]:
    """One group per lesion, the grade with the largest (the one the grader's crop centres
    on), then the attention peak; without lesions, one image-level group (TID 1501)."""
    if not lesions:
        evaluations, measurements = grade
        return [
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=hd.UID(), identifier=f"REACT-KD {task} prediction"
                ),
                finding_type=codes.SCT.Neoplasm,
                algorithm_id=algorithm,
                qualitative_evaluations=evaluations,
                measurements=measurements + _peak_measurements(*peak, algorithm),
            )
        ]
    groups: list[
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = [
        _lesion_group(
            number, lesion, sources[lesion.slice_index], task, algorithm, grade if number == 1 else ([], [])
        )
        for number, lesion in enumerate(lesions, start=1)
    ]
    return groups + _peak_group(*peak, algorithm)


def structured_report(
    sources: Sequence[Dataset],
    *,
    task: str,
    label: str | None,
    probabilities: Mapping[str, float],
    provenance: Provenance,
    peak: AttentionPeak | None = None,
    lesions: Sequence[Lesion] = (),
) -> hd.sr.Comprehensive3DSR:
    """TID 1500 report of one prediction, with the source series as evidence; `label` None
    is a study not graded (no probabilities then).

    `lesions` (`app.explain.lesions`, on the grid of `sources`, largest first) each get a
    measurement group outlined on their largest slice; the grade goes with the first.
    With `peak`, the report also holds the peak attention value located by a SCOORD3D
    point in the sources' Frame of Reference (which the report then carries).
    """
    sources = [_complete(ds) for ds in sources]
    frame_of_reference = str(sources[0].get("FrameOfReferenceUID", "")) or None
    algorithm = hd.sr.AlgorithmIdentification(name=provenance.model_name, version=provenance.model_version)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=provenance.model_name, manufacturer_name=MANUFACTURER
        ),
    )
    grade = _grade_items(task, label, probabilities, algorithm)
    modality = str(sources[0].get("Modality", "CT"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=_PROCEDURES.get(modality, codes.LN.CTUnspecifiedBodyRegion),
        imaging_measurements=_measurement_groups(
            sources, task, lesions, grade, (peak, frame_of_reference), algorithm
        ),
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=sources,
        content=report,
        series_instance_uid=hd.UID(),
        series_number=provenance.series_number + 1,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description=provenance.description("REACT-KD report"),
        manufacturer_model_name=provenance.model_name[:64],
        software_versions=provenance.software_versions,
        device_serial_number="0",
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        coding_schemes=[CODING_SCHEME],
    )
    if peak is not None and frame_of_reference:
        # Frame of Reference module: required once SCOORD3D items are present.
        sr.FrameOfReferenceUID = frame_of_reference
        sr.PositionReferenceIndicator = ""
    return sr


# -- parametric map ----------------------------------------------------------------------


def parametric_map_dataset(
    attention: Volume, sources: Sequence[Dataset], provenance: Provenance
) -> hd.pm.ParametricMap:
    """Parametric Map of `attention` (on the grid of the reference series) referencing `sources`."""
    sources = [_complete(ds) for ds in sources]
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="ATTN",
        lut_explanation="CBAM3D spatial attention",
        unit=codes.UCUM.NoUnits,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
    )
    pm = hd.pm.ParametricMap(
        source_images=sources,
        pixel_array=_frames(attention.array).astype(np.float32),
        series_instance_uid=hd.UID(),
        series_number=provenance.series_number + 2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=provenance.model_name[:64],
        software_versions=provenance.software_versions,
        device_serial_number="0",
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        series_description=provenance.description("REACT-KD attention"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    return _with_laterality(pm, sources[0])


def parametric_map(attention: Volume, sources: list[Dataset], description: str) -> bytes:
    """Parametric Map bytes (the `attention?format=dicom` download)."""
    pm = parametric_map_dataset(attention, sources, Provenance("reactkd-serve", "0"))
    pm.SeriesDescription = description[:64]
    return to_bytes(pm)


# -- segmentation ------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """One segment of a SEG: its label, and what it is in SNOMED CT."""

    label: str
    category: Code = codes.SCT.Tissue
    kind: Code = codes.SCT.Tissue


# The mask the grade used (`segmentation?format=dicom`, and the PACS push).
LIVER = Segment("Liver", codes.SCT.AnatomicalStructure, codes.SCT.Liver)
LESION = Segment("Lesion", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm)
# A glioma's sub-regions, as BraTS labels them (1, 2, 4).
NECROTIC_CORE = Segment(
    "Necrotic and non-enhancing tumor core", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Necrosis
)
EDEMA = Segment("Peritumoral edema", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Edema)
ENHANCING_TUMOR = Segment("Enhancing tumor", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm)


def segmentation(
    labels: Volume,
    sources: Sequence[Dataset],
    segments: Sequence[Segment | str],
    provenance: Provenance,
    *,
    what: str = "REACT-KD regions",
    automatic: bool = True,
    series_offset: int = 3,
) -> hd.seg.Segmentation:
    """Binary SEG of a label map with values 1..N (on the reference series' grid), N segments.

    `automatic`: made by the model (the algorithm's name and version in every segment);
    otherwise the client's mask, passed on as given (manual, no algorithm).
    """
    sources = [_complete(ds) for ds in sources]
    frames = _frames(labels.array).astype(np.uint16)
    count = len(segments)
    if frames.max() > count or set(np.unique(frames)) - set(range(count + 1)):
        raise ValueError(f"label values must lie in 0..{count}, got {np.unique(frames).tolist()[:10]}")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=provenance.model_name[:64],
        family=codes.DCM.ArtificialIntelligence,
        version=provenance.model_version[:64],
    )
    descriptions = []
    for number, given in enumerate(segments, start=1):
        segment = given if isinstance(given, Segment) else Segment(given)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=segment.label[:64],
                segmented_property_category=segment.category,
                segmented_property_type=segment.kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
                if automatic
                else hd.seg.SegmentAlgorithmTypeValues.MANUAL,
                algorithm_identification=algorithm if automatic else None,
            )
        )
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=provenance.series_number + series_offset,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=provenance.model_name[:64],
        software_versions=provenance.software_versions,
        device_serial_number="0",
        series_description=provenance.description(what),
        # Keep every frame, so frame n of the SEG is slice n of the source in any viewer.
        omit_empty_frames=False,
    )


# -- secondary captures ------------------------------------------------------------------


def _rgb(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def rgb_capture(png: bytes, source: Dataset, provenance: Provenance) -> hd.sc.SCImage:
    """RGB Secondary Capture of a rendered overlay, in the source's patient and study."""
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=_complete(source),
        pixel_array=_rgb(png),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=hd.UID(),
        series_number=provenance.series_number + 4,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "P"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=provenance.description("REACT-KD overlay"),
        manufacturer_model_name=provenance.model_name[:64],
        software_versions=provenance.software_versions,
        content_qualification=hd.ContentQualificationValues.RESEARCH,
    )
    # The title, colour bar and overlay are drawn into the pixels.
    sc.BurnedInAnnotation = "YES"
    return _with_laterality(sc, source)


def secondary_capture(png: bytes, description: str, study_uid: str | None) -> bytes:
    sc = hd.sc.SCImage(
        pixel_array=_rgb(png),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        study_instance_uid=study_uid or hd.UID(),
        series_instance_uid=hd.UID(),
        sop_instance_uid=hd.UID(),
        series_number=9902,
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "P"),
        series_description=description[:64],
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    buffer = io.BytesIO()
    _with_laterality(sc, None).save_as(buffer)
    return buffer.getvalue()
