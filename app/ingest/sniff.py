"""What an uploaded blob is, from its first bytes (never trust names or content types)."""

from __future__ import annotations

from typing import Literal

Kind = Literal["zip", "gzip", "nifti", "dicom", "unknown"]
SNIFF_BYTES = 348  # the furthest marker: NIfTI-1's magic at offset 344


def sniff(data: bytes) -> Kind:
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if data[:2] == b"\x1f\x8b":
        return "gzip"
    if data[344:348] in (b"n+1\x00", b"ni1\x00") or data[4:8] == b"n+2\x00":
        return "nifti"
    if data[128:132] == b"DICM":
        return "dicom"
    return "unknown"
