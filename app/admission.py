"""Admission: how many requests work at once, and how much memory they may take.

A prediction is admitted before its body is read (`InferenceGate.admit`): it takes one of
`limit` slots and reserves memory against the budget by its declared size (Content-Length;
a study to pull from the PACS declares nothing, and reserves what the largest series the
limits allow would take), and holds both until it is answered. The stages of its work run
in threads under that slot (`Admission.run`), so an admitted request is never refused
half-way. A request finding no slot free, or no room left in the budget, is answered 503
with Retry-After at once, before a byte of its body is read: refused, it costs the server
nothing, where a queue would hold each waiting client's upload only to time it out later.
One that would need more than the whole budget is answered 413: waiting would not help.

Explanations take a slot for each piece of work (`InferenceGate.run`), refused alike.

When no request is at work, the memory the last one freed is handed back to the operating
system (`app.memory.release_freed_memory`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from app.errors import BusyError, TimeoutProblem, TooLargeError
from app.memory import release_freed_memory
from app.settings import Settings

T = TypeVar("T")

PEAK_PER_BODY_BYTE = 8
"""A prediction's peak memory over the server's ready level per byte of its body (measured in
bench.realsize; a zip of DICOM inflates about 2.6x before it is decoded)."""
MIN_PREDICTION_BYTES = 256 * 2**20
"""What the smallest prediction takes (the segmenter's grids and sessions' buffers)."""
UNDECLARED_BODY_BYTES = 320 * 10**6
"""The body size assumed where none is declared (a study pulled from the PACS, a chunked
upload): a 512 x 512 x 600 DICOM series."""


def prediction_memory(headers: Mapping[str, str], settings: Settings) -> int:
    """Bytes a prediction is expected to take at its peak, from the body its client declares."""
    length = headers.get("content-length", "")
    uploads = headers.get("content-type", "").startswith("multipart/")
    # A study named for a pull, or a chunked upload, declares nothing of the series' size.
    declared = int(length) if uploads and length.isdigit() else UNDECLARED_BODY_BYTES
    return max(MIN_PREDICTION_BYTES, PEAK_PER_BODY_BYTE * min(declared, settings.max_upload_bytes))


def default_memory_budget() -> int | None:
    """70 % of the memory this process may use: its cgroup's limit (a container's), else the
    machine's; None where neither can be read (no budget)."""
    for path, scale in (("/sys/fs/cgroup/memory.max", 1), ("/proc/meminfo", 1024)):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        if scale == 1 and text.strip().isdigit():
            return int(0.7 * int(text.strip()))
        for line in text.splitlines():
            if line.startswith("MemTotal:"):
                return int(0.7 * int(line.split()[1]) * scale)
    return None


class Admission:
    """One admitted request: its slot and its memory reservation, until `close`."""

    def __init__(self, gate: InferenceGate, reserved: int) -> None:
        self._gate = gate
        self.reserved = reserved
        self._open = True

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float) -> T:
        """`fn(*args)` in a thread, within `timeout` seconds (the slot is already held)."""
        task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            # The thread cannot be stopped: the slot stays taken until it ends.
            self._gate._hold_until(task)
            raise TimeoutProblem(f"the work did not finish within {timeout:.0f} s; retry later") from None

    def close(self) -> None:
        if self._open:
            self._open = False
            self._gate._release(self.reserved)

    async def __aenter__(self) -> Admission:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class InferenceGate:
    """At most `limit` requests at work at once within `memory_budget` bytes (None: no
    budget); each job off the event loop, within a timeout."""

    def __init__(self, limit: int, retry_after_s: int = 5, memory_budget: int | None = None) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.memory_budget = memory_budget
        self.busy = 0
        self.reserved = 0
        self._lingering = 0  # slots held by work that timed out and still runs

    def _refuse(self, why: str) -> BusyError:
        return BusyError(f"{why}; retry shortly", headers={"Retry-After": str(self.retry_after_s)})

    def admit(self, need_bytes: int) -> Admission:
        """A slot and `need_bytes` of the budget, or a 503 (`BusyError`) at once."""
        if self.memory_budget is not None and need_bytes > self.memory_budget:
            # Never admitted, however long it waits: 413, not a 503 inviting a retry.
            raise TooLargeError(
                f"this request would need about {need_bytes / 2**20:.0f} MiB at its peak, more than "
                f"the whole memory budget of {self.memory_budget / 2**20:.0f} MiB "
                "(REACTKD_MEMORY_BUDGET_MB); send a smaller study",
                field="body",
            )
        if self.busy + self._lingering >= self.limit:
            raise self._refuse(f"{self.limit} request(s) already at work")
        if self.memory_budget is not None and self.reserved + need_bytes > self.memory_budget:
            raise self._refuse(
                f"this request needs about {need_bytes / 2**20:.0f} MiB and "
                f"{self.reserved / 2**20:.0f} of the {self.memory_budget / 2**20:.0f} MiB memory budget "
                "are taken by requests at work"
            )
        self.busy += 1
        self.reserved += need_bytes
        return Admission(self, need_bytes)

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float) -> T:
        """`fn(*args)` in a thread under a slot of its own (a 503 when none is free)."""
        async with self.admit(0) as admission:
            return await admission.run(fn, *args, timeout=timeout)

    def _hold_until(self, task: asyncio.Future) -> None:
        self._lingering += 1
        task.add_done_callback(lambda _: self._end_lingering())

    def _end_lingering(self) -> None:
        self._lingering -= 1
        self._idle_check()

    def _release(self, reserved: int) -> None:
        self.busy -= 1
        self.reserved -= reserved
        self._idle_check()

    def _idle_check(self) -> None:
        if self.busy == 0 and self._lingering == 0:
            # Off the event loop: a full collection takes tens of ms with torch loaded.
            asyncio.get_running_loop().run_in_executor(None, release_freed_memory)
