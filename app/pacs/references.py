"""Whether results can reference their source series: the UIDs every result object names."""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset
from pydicom.uid import UID

# What the results copy from, or reference in, every source instance. A series lacking one is
# still graded (pixels and geometry are all the model needs) but can have no DICOM results.
REFERENCED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID")


def missing_reference(headers: Sequence[Dataset]) -> str | None:
    """The first attribute of `REFERENCED` that some source header lacks, leaves empty or
    holds as no valid UID (a PACS refuses results that reference one)."""
    for keyword in REFERENCED:
        if any(not UID(str(header.get(keyword, "") or "").strip()).is_valid for header in headers):
            return keyword
    return None
