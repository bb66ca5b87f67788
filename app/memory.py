"""Handing memory a prediction freed back to the operating system.

A real-size study passes through arrays of hundreds of MB and thousands of blocks of about
0.5 to 1 MB: the DICOM slices' bytes, their decoded planes. glibc's allocator serves blocks
under its mmap threshold from heaps it keeps after they are freed, one heap per thread, and
raises that threshold (up to 32 MB) each time a larger mapped block is freed: after the
first slice, every slice came from the heaps. A server that graded one 512 x 512 x 300
study stayed 3 GB above its ready level, and its peak held every freed slice too
(bench.realsize). So:

- `configure_allocator` fixes the threshold at 256 KiB (`mallopt`): blocks of a slice and
  larger are mapped, and unmapped when freed;
- `release_freed_memory` returns the free pages of every heap (`malloc_trim`) once no
  request is at work.

Elsewhere than glibc (musl, macOS) both do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger("app.memory")


def _libc_malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """glibc's `malloc_trim`, or None where the C library is another."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 (glibc has both)
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _libc_malloc_trim()
M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD_BYTES = 256 * 1024


def configure_allocator() -> None:
    """Map blocks of `MMAP_THRESHOLD_BYTES` and more, for good (see the module notes)."""
    if _MALLOC_TRIM is None:
        return
    name = ctypes.util.find_library("c")
    if name is not None and not ctypes.CDLL(name).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
        log.warning("mallopt refused the mmap threshold; freed slices stay in the heaps")


def release_freed_memory() -> None:
    """Collect cycles (arrays held only by them), then return free heap pages to the OS."""
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
