"""Who the service is in the DICOM it writes, in one place: the Manufacturer it stamps on
every object it makes (and by which it knows its own objects when a PACS sends them back),
its software version, and the research-use caveat shown with each result."""

from __future__ import annotations

MANUFACTURER = "REACT-KD"
SOFTWARE = "REACT-KD Serve 0.1 (research use only)"
RESEARCH_ONLY = "research use only"
