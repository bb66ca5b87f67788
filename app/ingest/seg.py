"""DICOM SEG -> a label-map `Volume`: the lesion drawn in a viewer and stored with the study.

A SEG holds one binary (or fractional) mask per segment. Each segment becomes the label of
its segment number, so a liver (1) and its tumour (2) read as the label map a NIfTI mask
would be; where segments overlap (a tumour drawn inside the liver) the higher number wins,
which keeps the lesion the highest label (`models.contract.lesion_center`). Fractional
segments are read as present from 0.5.

Within a `study`, a SEG is the mask only if no `mask` field was sent: SEGs this service wrote
(its own region results, pushed back to the PACS) and SEGs of another frame of reference than
the image the model is placed on are ignored, with the reason; of several others the newest
that reads as a label map is used.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from app.errors import InvalidStudyError, TooLargeError
from app.identity import MANUFACTURER
from models.contract import Volume
from models.dicom import LPS_TO_RAS

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
FRACTIONAL_PRESENT = 0.5


def is_segmentation(ds: Dataset) -> bool:
    return str(ds.get("SOPClassUID", "")) == SEGMENTATION_STORAGE


def made_here(ds: Dataset) -> bool:
    """Whether this service wrote the SEG (its region results, perhaps stored in the PACS)."""
    return str(ds.get("Manufacturer", "")) == MANUFACTURER


def describe(ds: Dataset) -> str:
    """'segments 1 Liver, 2 Tumour' from the Segment Sequence (labels may be absent)."""
    segments = [
        f"{item.get('SegmentNumber', '?')} {item.get('SegmentLabel', '')}".strip()
        for item in ds.get("SegmentSequence", [])
    ]
    return f"segments {', '.join(segments)}" if segments else "no segment described"


def label_map_from_seg(ds: Dataset, field: str, max_bytes: int) -> Volume:
    """The SEG's segments as one label map on the SEG's own frames (RAS+ affine).

    Raises:
        TooLargeError: the frames would decode into more than `max_bytes`.
        InvalidStudyError: frames that do not form a volume, or a SEG highdicom cannot read.
    """
    try:
        pixels = int(ds.get("NumberOfFrames") or 1) * int(ds.get("Rows") or 0) * int(ds.get("Columns") or 0)
    except (TypeError, ValueError):
        raise InvalidStudyError("the DICOM SEG's frame counts are malformed", field=field) from None
    if pixels * np.dtype(np.float32).itemsize > max_bytes:
        raise TooLargeError(f"the SEG's frames decode to more than {max_bytes} bytes", field=field)
    try:
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
        numbers = sorted(seg.get_segment_numbers())
        volume = seg.get_volume(segment_numbers=numbers, dtype=np.float32)  # (slices, rows, cols, segments)
    except Exception as exc:  # highdicom raises several kinds for SEGs it cannot place in space
        raise InvalidStudyError(
            f"the DICOM SEG cannot be read as a volume ({exc}); send a SEG of parallel, evenly "
            "spaced frames, or a NIfTI label map",
            field=field,
        ) from None
    labels = np.zeros(volume.array.shape[:3], dtype=np.float32)
    for index, number in enumerate(numbers):  # ascending: the higher segment number wins
        labels[volume.array[..., index] >= FRACTIONAL_PRESENT] = number
    return Volume(labels, LPS_TO_RAS @ volume.affine)


def study_seg_candidates(
    segs: Sequence[Dataset], frame_of_reference: str | None
) -> tuple[list[Dataset], list[dict[str, str]]]:
    """The study's SEGs that may be its mask, newest first, and the others with why not."""
    ignored: list[dict[str, str]] = []
    candidates: list[Dataset] = []
    for ds in segs:
        uid = str(ds.get("SeriesInstanceUID", "unknown"))
        seg_frame = str(ds.get("FrameOfReferenceUID", "")) or None
        if made_here(ds):
            ignored.append({"series_uid": uid, "reason": "a SEG of regions this service made, not a mask"})
        elif frame_of_reference and seg_frame and seg_frame != frame_of_reference:
            reason = "a SEG of another frame of reference than the image the model reads"
            ignored.append({"series_uid": uid, "reason": reason})
        else:
            candidates.append(ds)
    candidates.sort(key=_written, reverse=True)
    return candidates, ignored


def _written(ds: Dataset) -> tuple[str, str]:
    """(date, time) the SEG was made, as DICOM writes them (YYYYMMDD, HHMMSS.ffffff): sortable."""
    date = str(ds.get("ContentDate", "") or ds.get("SeriesDate", ""))
    time = str(ds.get("ContentTime", "") or ds.get("SeriesTime", ""))
    return date, time
