"""Zip archives, checked BEFORE anything is decompressed: names, counts, sizes, ratios.

A zip's central directory declares every member's name and sizes, so bombs and path
tricks are refused from the directory alone; reading is still bounded in case a member
lies about its size.
"""

from __future__ import annotations

import lzma
import re
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from app.errors import TooManyFilesError, UnsafeArchiveError, UnsupportedMediaError, ZipBombError
from app.ingest.sniff import SNIFF_BYTES

_DRIVE = re.compile(r"^[A-Za-z]:")
# Ratios are only judged on members big enough for a ratio to mean something.
_RATIO_MIN_BYTES = 1 << 20
# What reading a damaged member raises: zipfile's own errors, and the decompressors' (a corrupt
# deflate stream raises zlib.error, a short one EOFError, a corrupt LZMA one LZMAError).
_READ_ERRORS = (
    zipfile.BadZipFile,
    NotImplementedError,
    RuntimeError,
    OSError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
)


@dataclass(frozen=True)
class ZipLimits:
    max_members: int
    max_total_bytes: int
    max_ratio: float


def _check_name(info: zipfile.ZipInfo, field: str) -> None:
    name = info.filename
    parts = re.split(r"[\\/]", name)
    if name.startswith(("/", "\\")) or _DRIVE.match(name) or ".." in parts:
        raise UnsafeArchiveError(
            f"archive member {name!r} has an absolute or parent-relative path; "
            "zip the files with relative names",
            field=field,
        )
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UnsafeArchiveError(
            f"archive member {name!r} is a symbolic link; zip the files themselves", field=field
        )


def check_archive(zf: zipfile.ZipFile, limits: ZipLimits, field: str) -> list[zipfile.ZipInfo]:
    """The regular-file members of `zf`, after refusing unsafe names, bombs and too many files."""
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise TooManyFilesError(
            f"the archive holds {len(infos)} members, more than the limit of {limits.max_members}",
            field=field,
        )
    total = 0
    files = []
    for info in infos:
        _check_name(info, field)
        if info.is_dir():
            continue
        total += info.file_size
        if total > limits.max_total_bytes:
            raise ZipBombError(
                f"the archive expands to more than {limits.max_total_bytes} bytes", field=field
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > _RATIO_MIN_BYTES and ratio > limits.max_ratio:
            raise ZipBombError(
                f"member {info.filename!r} expands {ratio:.0f}-fold (limit {limits.max_ratio:.0f}); "
                "this looks like a zip bomb",
                field=field,
            )
        files.append(info)
    return files


def iter_members(
    source: Path, limits: ZipLimits, field: str, wanted: Callable[[bytes], bool]
) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each file in the zip at `source` whose first bytes are `wanted`;
    the others are passed over unread (only their first bytes are decompressed). Nested
    archives are refused."""
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsupportedMediaError(f"the zip archive cannot be read ({exc})", field=field) from None
    with zf:
        budget = limits.max_total_bytes
        for info in check_archive(zf, limits, field):
            try:
                with zf.open(info) as member:
                    head = member.read(SNIFF_BYTES)
                    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
                        raise UnsupportedMediaError(
                            f"member {info.filename!r} is itself a zip; nested archives are not "
                            "accepted, zip the DICOM files directly",
                            field=field,
                        )
                    if not wanted(head):
                        continue
                    # Bounded read: a member may lie about its size in the directory.
                    content = head + member.read(max(0, min(info.file_size, budget) + 1 - len(head)))
            except _READ_ERRORS as exc:
                raise UnsupportedMediaError(
                    f"archive member {info.filename!r} cannot be read ({exc}); re-create the zip "
                    "from the original files",
                    field=field,
                ) from None
            if len(content) > info.file_size:
                raise ZipBombError(f"member {info.filename!r} expands beyond its declared size", field=field)
            budget -= len(content)
            yield info.filename, content
