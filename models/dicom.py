"""DICOM geometry: a series of slices (or one enhanced multi-frame image) as a `Volume`.

Shared by the service's ingestion and by training's DICOM readers, so it imports nothing
from either. The rules (DICOM PS3.3 C.7.6.2, "Image Plane Module"):

- A pixel at row ``r`` and column ``c`` of a slice lies at
  ``ImagePositionPatient + X * c * dc + Y * r * dr`` in LPS millimetres, where ``X`` and
  ``Y`` are the row and column direction cosines of ``ImageOrientationPatient`` and
  ``PixelSpacing = [dr, dc]``.
- Slices are ordered by their position projected on the slice normal ``X x Y``, never by
  InstanceNumber or file order (both are unreliable in the wild).
- Stored values become modality units (HU for CT) with RescaleSlope/RescaleIntercept,
  per slice since they may differ.
- The returned affine maps ``[i, j, k] = [column, row, slice]`` to RAS+ (LPS with x and y
  negated), the convention of `models.contract.Volume`.

Inputs that would silently yield a wrong geometry are refused with a `DicomGeometryError`
(a `ContractError`) whose message says what to do: gantry tilt, mixed orientations or
matrix sizes, missing slices, non-uniform slice spacing, several series mixed together.
Enhanced (multi-frame) images are read through their per-frame functional groups.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pixel_array
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from models.contract import GeometryError, Volume

# LPS (DICOM) -> RAS (NIfTI): negate x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Direction cosines closer than this (per component) count as the same orientation.
ORIENTATION_TOLERANCE = 1e-4
# Largest angle (degrees) between the slice normal and the slice stacking direction
# accepted as "no tilt"; beyond it the volume would be sheared.
MAX_TILT_DEGREES = 0.5
# Relative deviation of a slice gap from the median gap tolerated as rounding.
SPACING_TOLERANCE = 0.05

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
# The storage SOP class of each modality a series can be written as (`series_from_volume`).
IMAGE_STORAGE = {
    "CT": CT_IMAGE_STORAGE,
    "MR": UID("1.2.840.10008.5.1.4.1.1.4"),
    "PT": UID("1.2.840.10008.5.1.4.1.1.128"),
}


class DicomGeometryError(GeometryError):
    """A DICOM series whose slices do not form one regular 3D volume."""


class PixelDataError(DicomGeometryError):
    """Pixel data missing, inconsistent with the header, or impossible to decode."""


@dataclass(frozen=True)
class _Frame:
    """One 2D slice: where it lies and how to read its pixels in modality units."""

    position: np.ndarray  # LPS mm of the centre of the first pixel
    row_cosine: np.ndarray  # direction of increasing column index
    col_cosine: np.ndarray  # direction of increasing row index
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    shape: tuple[int, int]  # (rows, columns)
    slope: float
    intercept: float
    source: int  # index into the datasets (or frame number of a multi-frame image)
    thickness: float | None


def volume_from_series(
    datasets: Sequence[Dataset],
    *,
    max_tilt_degrees: float = MAX_TILT_DEGREES,
    spacing_tolerance: float = SPACING_TOLERANCE,
    release_pixels: bool = False,
) -> Volume:
    """Stack the slices of one series into a `Volume` in modality units, RAS+ affine.

    Args:
        datasets: the instances of one series (any order), or one enhanced multi-frame
            instance.
        max_tilt_degrees: largest tolerated gantry tilt.
        spacing_tolerance: largest tolerated relative deviation of a slice gap.
        release_pixels: delete each classic instance's pixel data from its dataset once it
            is decoded into the volume, so a real-size series is never held twice (the
            caller keeps the headers).

    Raises:
        DicomGeometryError: the slices do not form one regular volume (the message says
            why and what to do).
    """
    if not datasets:
        raise DicomGeometryError("series", "no DICOM instances were given")
    _check_single_series(datasets)
    if len(datasets) == 1 and int(datasets[0].get("NumberOfFrames", 1) or 1) > 1:
        return _volume_from_multiframe(datasets[0], max_tilt_degrees, spacing_tolerance)
    if any("PerFrameFunctionalGroupsSequence" in ds for ds in datasets):
        raise DicomGeometryError(
            "series",
            "several enhanced multi-frame instances in one series; send them one at a time",
        )
    uids = [str(ds.get("SOPInstanceUID", "")) for ds in datasets]
    if len(set(uids) - {""}) < len([u for u in uids if u]):
        raise DicomGeometryError(
            "SOPInstanceUID",
            "several instances share one SOPInstanceUID (a file sent twice, or an export that "
            "reused identifiers); send each slice once, with its own UID",
        )
    frames = [_frame_from_classic(ds, index) for index, ds in enumerate(datasets)]
    ordered, slice_vector = _order_frames(frames, max_tilt_degrees, spacing_tolerance)

    def plane(frame: _Frame) -> np.ndarray:
        ds = datasets[frame.source]
        values = _stored_pixels(ds, frame)
        if release_pixels:
            for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
                if keyword in ds:
                    delattr(ds, keyword)
        return values

    return _assemble(ordered, plane, slice_vector)


def _check_single_series(datasets: Sequence[Dataset]) -> None:
    uids = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets} - {""}
    if len(uids) > 1:
        raise DicomGeometryError(
            "series",
            f"the instances belong to {len(uids)} different series; send one series per "
            "modality, or a whole study as `study`",
        )


def _require(ds: Dataset | None, keyword: str, what: str) -> Any:
    value = ds.get(keyword) if ds is not None else None
    if value is None or value == "":
        raise DicomGeometryError(
            keyword, f"missing from {what}; the series cannot be placed in patient space"
        )
    return value


def _cosines(value: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    iop = np.asarray([float(v) for v in value], dtype=np.float64)
    if iop.shape != (6,):
        raise DicomGeometryError("ImageOrientationPatient", f"expected 6 values, got {len(iop)}")
    row, col = iop[:3], iop[3:]
    if not (np.isclose(np.linalg.norm(row), 1, atol=1e-3) and np.isclose(np.linalg.norm(col), 1, atol=1e-3)):
        raise DicomGeometryError("ImageOrientationPatient", "direction cosines are not unit vectors")
    return row / np.linalg.norm(row), col / np.linalg.norm(col)


def _check_pixel_format(ds: Dataset) -> None:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise PixelDataError("PixelData", "an instance has no pixel data (is it an image?)")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if samples != 1 or not photometric.startswith("MONOCHROME"):
        raise DicomGeometryError(
            "PhotometricInterpretation",
            f"{photometric} with {samples} samples per pixel is not a greyscale image; "
            "send the original CT/PET/MR series, not a screenshot",
        )


def _check_native_length(ds: Dataset, frames: int) -> None:
    """Uncompressed pixel data must hold the frames the header counts, no fewer and no more
    (extra frames would be dropped without a word). Compressed data is checked as decoded."""
    meta = getattr(ds, "file_meta", None) or Dataset()
    if "PixelData" not in ds or UID(str(meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))).is_compressed:
        return
    expected = frames * int(ds.Rows) * int(ds.Columns) * int(ds.get("BitsAllocated", 16) or 16) // 8
    actual = len(ds.PixelData)
    if actual not in (expected, expected + 1):  # an odd length is padded to even
        raise PixelDataError(
            "PixelData",
            f"the pixel data holds {actual} bytes, the header's {frames} frame(s) of "
            f"{ds.Rows} x {ds.Columns} pixels make {expected}; the file is inconsistent: re-export it",
        )


def _frame_from_classic(ds: Dataset, index: int) -> _Frame:
    what = f"instance {index + 1}"
    _check_pixel_format(ds)
    row, col = _cosines(_require(ds, "ImageOrientationPatient", what))
    position = np.asarray([float(v) for v in _require(ds, "ImagePositionPatient", what)], dtype=np.float64)
    spacing = [float(v) for v in _require(ds, "PixelSpacing", what)]
    thickness = ds.get("SliceThickness")
    return _Frame(
        position=position,
        row_cosine=row,
        col_cosine=col,
        pixel_spacing=(spacing[0], spacing[1]),
        shape=(int(_require(ds, "Rows", what)), int(_require(ds, "Columns", what))),
        slope=_number(ds, "RescaleSlope", 1.0),
        intercept=_number(ds, "RescaleIntercept", 0.0),
        source=index,
        thickness=float(thickness) if thickness not in (None, "") else None,
    )


def _number(ds: Dataset, keyword: str, default: float) -> float:
    """A numeric tag's value, or `default` when the tag is absent or empty (type 1C/3 tags
    are often written empty); a value that is there, 0 included, is taken as written."""
    value = ds.get(keyword)
    return default if value is None or value == "" else float(value)


def _check_frame_values(frame: _Frame) -> None:
    """Refuse header numbers no scanner writes: a NaN position would sort anywhere, and a
    negative pixel spacing would mirror the image without a word."""
    if not np.all(np.isfinite(frame.position)):
        raise DicomGeometryError("ImagePositionPatient", "a slice position is not a finite number")
    if not all(np.isfinite(v) and v > 0 for v in frame.pixel_spacing):
        raise DicomGeometryError(
            "PixelSpacing", f"pixel spacing must be positive, got {list(frame.pixel_spacing)}"
        )
    if not (np.isfinite(frame.slope) and np.isfinite(frame.intercept)):
        raise DicomGeometryError("RescaleSlope", "the rescale slope or intercept is not a finite number")
    if frame.slope == 0:
        raise DicomGeometryError("RescaleSlope", "a rescale slope of 0 would make every pixel the intercept")


def _order_frames(
    frames: list[_Frame], max_tilt_degrees: float, spacing_tolerance: float
) -> tuple[list[_Frame], np.ndarray]:
    """Frames sorted along the slice normal, and the LPS vector from one slice to the next."""
    for frame in frames:
        _check_frame_values(frame)
    first = frames[0]
    for frame in frames[1:]:
        if not (
            np.allclose(frame.row_cosine, first.row_cosine, atol=ORIENTATION_TOLERANCE)
            and np.allclose(frame.col_cosine, first.col_cosine, atol=ORIENTATION_TOLERANCE)
        ):
            raise DicomGeometryError(
                "ImageOrientationPatient",
                "slices have different orientations (mixed localiser or reformatted slices?); "
                "send only the axial series",
            )
        if frame.shape != first.shape:
            raise DicomGeometryError(
                "Rows",
                f"slices have different matrix sizes {first.shape} and {frame.shape}; "
                "send one series with one matrix size",
            )
        if not np.allclose(frame.pixel_spacing, first.pixel_spacing, rtol=1e-3):
            raise DicomGeometryError("PixelSpacing", "slices have different pixel spacings")

    normal = np.cross(first.row_cosine, first.col_cosine)
    if len(frames) == 1:
        thickness = first.thickness if first.thickness and first.thickness > 0 else 1.0
        return frames, normal * thickness

    ordered = sorted(frames, key=lambda f: float(f.position @ normal))
    offsets = np.array([float(f.position @ normal) for f in ordered])
    gaps = np.diff(offsets)
    if np.any(gaps < 1e-3):
        raise DicomGeometryError(
            "ImagePositionPatient",
            "two slices share one position (duplicate instances, or several stacks or time "
            "points in one series); send one stack",
        )
    span = ordered[-1].position - ordered[0].position
    cos_tilt = abs(float(span @ normal)) / float(np.linalg.norm(span))
    tilt = float(np.degrees(np.arccos(min(1.0, cos_tilt))))
    if tilt > max_tilt_degrees:
        raise DicomGeometryError(
            "GantryDetectorTilt",
            f"slices are stacked {tilt:.1f} degrees off their normal (gantry tilt); "
            "resample the series to an untilted grid before sending it",
        )
    median = float(np.median(gaps))
    deviation = np.abs(gaps - median) / median
    if np.any(deviation > spacing_tolerance):
        worst = int(np.argmax(deviation))
        ratio = gaps[worst] / median
        if ratio > 1.5 and abs(ratio - round(ratio)) < spacing_tolerance * round(ratio):
            raise DicomGeometryError(
                "ImagePositionPatient",
                f"about {round(ratio) - 1} slice(s) missing after position {offsets[worst]:.1f} mm "
                "along the slice normal; send the complete series",
            )
        raise DicomGeometryError(
            "ImagePositionPatient",
            f"slice spacing is not uniform ({gaps.min():.2f} to {gaps.max():.2f} mm); "
            "send a series reconstructed with one slice spacing",
        )
    return ordered, span / (len(ordered) - 1)


def _stored_pixels(ds: Dataset, frame: _Frame, frame_index: int | None = None) -> np.ndarray:
    """The plane's stored values, ``[row, column]``, before the rescale.

    Decoded by `pydicom.pixels.pixel_array`, which keeps no copy on the dataset (the
    `Dataset.pixel_array` property would: a second series in memory), one frame at a time.
    """
    try:
        array = pixel_array(ds, index=frame_index)
    except Exception as exc:  # pydicom raises many kinds for broken or unsupported data
        raise PixelDataError(
            "PixelData",
            f"pixel data cannot be decoded ({type(exc).__name__}: {exc}); re-export the "
            "series uncompressed or with a standard transfer syntax",
        ) from None
    if array.shape != frame.shape:
        raise PixelDataError(
            "PixelData", f"decoded pixels have shape {array.shape}, header says {frame.shape}"
        )
    return array


_INT16 = np.iinfo(np.int16)


def _rescales_into_int16(stored: np.ndarray, frame: _Frame) -> bool:
    """Whether the plane's values in modality units are integers that int16 holds exactly."""
    if not (
        np.issubdtype(stored.dtype, np.integer)
        and float(frame.slope).is_integer()
        and float(frame.intercept).is_integer()
    ):
        return False
    slope, intercept = int(frame.slope), int(frame.intercept)
    ends = (int(stored.min()) * slope + intercept, int(stored.max()) * slope + intercept)
    return min(ends) >= _INT16.min and max(ends) <= _INT16.max


def _rescale_into(out: np.ndarray, stored: np.ndarray, frame: _Frame) -> None:
    """``stored * slope + intercept`` written into `out` (a plane of the volume), computed
    in int32 or float32 a block at a time by the ufuncs, without a plane-sized temporary."""
    work = np.int32 if out.dtype == np.int16 else np.float32
    slope = work(frame.slope)
    intercept = work(frame.intercept)
    if slope == 1:
        np.add(stored, intercept, out=out, dtype=work, casting="unsafe")
        return
    values = np.multiply(stored, slope, dtype=work)
    values += intercept
    out[...] = values


def _assemble(
    ordered: list[_Frame], stored_of: Callable[[_Frame], np.ndarray], slice_vector: np.ndarray
) -> Volume:
    """The frames decoded one at a time into one preallocated volume, in modality units.

    Stored as (slice, row, column) in C order, each plane a contiguous block, and handed out
    transposed: ``[column, row, slice]`` = ``[i, j, k]``, Fortran-ordered like NIfTI's arrays.
    Integer values that int16 holds (a CT in HU) are kept as int16, half the memory of
    float32 and exact; the first plane that does not fit, or is not integer, turns the
    volume float32.
    """
    first = ordered[0]
    dr, dc = first.pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = first.row_cosine * dc
    lps[:3, 1] = first.col_cosine * dr
    lps[:3, 2] = slice_vector
    lps[:3, 3] = first.position
    stack = np.empty((len(ordered), *first.shape), dtype=np.int16)
    for k, frame in enumerate(ordered):
        stored = stored_of(frame)
        if stack.dtype == np.int16 and not _rescales_into_int16(stored, frame):
            stack = stack.astype(np.float32)
        _rescale_into(stack[k], stored, frame)
    return Volume(array=stack.T, affine=LPS_TO_RAS @ lps)


# -- enhanced multi-frame ---------------------------------------------------------------


def _group(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """Item of functional group `sequence` for `frame`: per-frame first, then shared."""
    for container in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = ds.get(container)
        if not groups:
            continue
        item = groups[frame] if container.startswith("PerFrame") and frame < len(groups) else groups[0]
        if sequence in item and len(item[sequence].value) > 0:
            return item[sequence].value[0]
    return None


def _volume_from_multiframe(ds: Dataset, max_tilt_degrees: float, spacing_tolerance: float) -> Volume:
    if "PerFrameFunctionalGroupsSequence" not in ds:
        raise DicomGeometryError(
            "NumberOfFrames",
            "multi-frame image without per-frame functional groups (not an enhanced image); "
            "its slice positions are unknown: send the classic single-frame series",
        )
    _check_pixel_format(ds)
    count = int(ds.NumberOfFrames)
    # Every frame must say where it lies; a count beyond the per-frame groups would read the
    # shared position into every extra frame (and a 1 kB file could claim 10^8 frames).
    described = len(ds.PerFrameFunctionalGroupsSequence)
    if described != count:
        raise DicomGeometryError(
            "NumberOfFrames",
            f"NumberOfFrames is {count} but {described} frames have per-frame functional groups; "
            "the file is inconsistent: re-export it",
        )
    _check_native_length(ds, count)
    frames = []
    for index in range(count):
        what = f"frame {index + 1} functional groups"
        position = _require(_group(ds, index, "PlanePositionSequence"), "ImagePositionPatient", what)
        orientation = _require(_group(ds, index, "PlaneOrientationSequence"), "ImageOrientationPatient", what)
        measures = _group(ds, index, "PixelMeasuresSequence")
        spacing = [float(v) for v in _require(measures, "PixelSpacing", what)]
        transform = _group(ds, index, "PixelValueTransformationSequence")
        rescale = transform if transform is not None else ds
        slope = _number(rescale, "RescaleSlope", 1.0)
        intercept = _number(rescale, "RescaleIntercept", 0.0)
        row, col = _cosines(orientation)
        thickness = measures.get("SliceThickness") if measures is not None else None
        frames.append(
            _Frame(
                position=np.asarray([float(v) for v in position], dtype=np.float64),
                row_cosine=row,
                col_cosine=col,
                pixel_spacing=(spacing[0], spacing[1]),
                shape=(int(ds.Rows), int(ds.Columns)),
                slope=slope,
                intercept=intercept,
                source=index,
                thickness=float(thickness) if thickness not in (None, "") else None,
            )
        )
    ordered, slice_vector = _order_frames(frames, max_tilt_degrees, spacing_tolerance)
    return _assemble(ordered, lambda f: _stored_pixels(ds, f, frame_index=f.source), slice_vector)


# -- writing (tests, demos) ---------------------------------------------------------------


def series_from_volume(
    volume: Volume,
    *,
    modality: str = "CT",
    series_description: str = "",
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    rescale_intercept: float = -1024.0,
    rescale_slope: float = 1.0,
    extra: dict[str, Any] | None = None,
) -> list[Dataset]:
    """One classic single-frame instance per slice of `volume` (the inverse of `volume_from_series`).

    Meant for tests and demos: values are stored as uint16 after the inverse rescale, so
    they round-trip to within half of `rescale_slope`. The volume's affine must have
    orthogonal axes (DICOM has no shear). `extra` sets further attributes on every instance.
    """
    if modality not in IMAGE_STORAGE:
        raise ValueError(f"modality must be one of {sorted(IMAGE_STORAGE)}, got {modality!r}")
    sop_class = IMAGE_STORAGE[modality]
    lps = np.linalg.inv(LPS_TO_RAS) @ volume.affine
    axes = lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    row_cos, col_cos, _ = (axes / spacing).T
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    stored = np.round((volume.array - rescale_intercept) / rescale_slope)
    stored = np.clip(stored, 0, 65535).astype(np.uint16)
    datasets = []
    for k in range(volume.array.shape[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.Modality = modality
        ds.SeriesDescription = series_description
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [float(v) for v in (*row_cos, *col_cos)]
        ds.ImagePositionPatient = [float(v) for v in (lps[:3, 3] + axes[:, 2] * k)]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = int(volume.array.shape[1]), int(volume.array.shape[0])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = rescale_intercept
        ds.RescaleSlope = rescale_slope
        for keyword, value in (extra or {}).items():
            setattr(ds, keyword, value)
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        datasets.append(ds)
    return datasets
