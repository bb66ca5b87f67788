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

Python's cycle collector walks every tracked object on a full collection: with torch,
MONAI and the models loaded, 430 000 of them and 170 ms holding the GIL, a pause that fell
on whichever request was running (and on each answer being sent, when the gate went idle).
`freeze_startup_objects` moves what lives as long as the process out of its sight once the
models are loaded; a full collection then takes well under a millisecond.

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


def freeze_startup_objects() -> None:
    """Collect once, then exempt every object alive now (modules, models: the process's
    lifetime) from later collections (`gc.freeze`)."""
    gc.collect()
    gc.freeze()


def release_freed_memory() -> None:
    """Collect cycles (arrays held only by them), then return free heap pages to the OS."""
    gc.collect()
    trim_heaps()
