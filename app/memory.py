"""Handing memory a prediction freed back to the operating system.

A real-size study passes through arrays of hundreds of MB: the DICOM slices (about 1 MB
each), the volume, the model grids. glibc's allocator serves allocations under its mmap
threshold (which grows to 32 MB as large blocks are freed) from heaps it keeps after they
are freed, one heap per thread that allocated, so a server that graded one 512 x 512 x 300
study stayed 3 GB above its ready level (bench.realsize). `malloc_trim(0)` returns the free
pages of every heap; called once a prediction's arrays are gone, a few ms.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger("app.memory")


def _libc_malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def release_freed_memory() -> None:
    """Collect cycles (arrays held only by them), then return free heap pages to the OS."""
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
