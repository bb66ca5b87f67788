"""Handing memory a prediction freed back to the operating system.

A real-size study passes through arrays of hundreds of MB and thousands of blocks of about
0.5 to 1 MB: the DICOM slices' bytes, their decoded planes. glibc's allocator serves blocks
under its mmap threshold from heaps it keeps after they are freed, one heap per thread, and
raises that threshold (up to 32 MB) each time a larger mapped block is freed: after the
first slice, every slice came from the heaps. A server that graded one 512 x 512 x 300
study stayed 3 GB above its ready level, and its peak held every freed slice too
(bench.realsize). `malloc_trim(0)` returns the free pages of every heap, a few ms:

- `trim_heaps` after ingestion, whose slices' bytes are freed as they are decoded, before
  the segmenter's grids are allocated;
- `release_freed_memory` once no request is at work.

Fixing the mmap threshold low instead (`mallopt`) kept the peak as low but mapped every
sliding window and plane afresh: 0.6-0.9 s slower per study. Elsewhere than glibc (musl,
macOS) both do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc


def _libc_malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """glibc's `malloc_trim`, or None where the C library is another."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def trim_heaps() -> None:
    """Return the heaps' free pages to the OS (a few ms): after a stage that freed much."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def release_freed_memory() -> None:
    """Collect cycles (arrays held only by them), then return free heap pages to the OS."""
    gc.collect()
    trim_heaps()
