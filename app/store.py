"""Where predictions live: SQLite (WAL) rows plus one folder of files per prediction.

Uploads are spooled to disk as they arrive (`Store.spool`, beside the predictions so that
keeping them is a rename). Files are written first into a temporary folder that is renamed
into place, and only then is the row committed, so a prediction is either complete or
invisible; a crash leaves at most an orphan folder that the next purge removes. A
prediction's folder keeps what later explanations need (model input and raw outputs, mask,
views, the reference image's geometry, DICOM source headers: `app.outcome`) and the
uploaded files themselves (nothing accepted is lost); only predictions stored before the
model input was kept have it rebuilt from those uploads (see `app.explain.case`).

One connection is kept open for the store's life (behind a lock, so any thread may use
it): opening and closing one per operation made every close checkpoint and delete the
WAL, an fsync-heavy ~10 ms per prediction. Commits use `synchronous=NORMAL`, which in WAL
mode is durable against a crash of the process (a SIGKILL loses nothing committed); a
power cut may roll back the last commits, never corrupt the database.

The store holds patient data: its folders are 0750 and the files it writes 0640, so only the
service's user (and its group, say a backup job) reads them. `app.store_backup` copies it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import StorageError, UnknownIdError

_ID = re.compile(r"^[0-9a-f]{32}$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    created REAL NOT NULL,
    model TEXT NOT NULL,
    response TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS predictions_created ON predictions (created);
"""
# Folders without a row are only purged once this old (a save may be in progress).
_ORPHAN_GRACE_S = 3600.0
# Room left on the store's disk beyond an upload: the prediction's own files, the database.
_SPOOL_RESERVE_BYTES = 256 << 20


@dataclass(frozen=True)
class StoredPrediction:
    id: str
    task: str
    created: float
    model: str
    response: dict[str, Any]
    folder: Path


def _unwritable(exc: Exception) -> StorageError:
    """A full or unwritable disk is the server's state, not a bug: a 507 problem."""
    return StorageError(
        f"the prediction store could not be written ({type(exc).__name__}); "
        "check the store folder's space and permissions"
    )


def check_writable(root: Path) -> None:
    """Raise `StorageError` unless the store folder can be written, with what to do: found at
    start-up in one line, rather than as a traceback or the first prediction's 507."""
    root = Path(root)
    try:
        (root / "files").mkdir(parents=True, exist_ok=True)
        for folder in (root, root / "files"):
            with tempfile.TemporaryFile(dir=folder):
                pass
        database = root / "store.sqlite3"
        if database.exists() and not os.access(database, os.W_OK):
            raise PermissionError(f"{database} is read-only")
    except OSError as exc:
        raise StorageError(
            f"the store folder {str(root)!r} is not writable by uid {os.getuid()} "
            f"({type(exc).__name__}); a host folder mounted there must belong to that user "
            f"(`chown -R {os.getuid()}:{os.getgid()} HOST_FOLDER`, or mount it with `:U` under "
            "podman), or set REACTKD_STORE_DIR to a writable folder"
        ) from None


def _write_private(path: Path, data: bytes) -> None:
    """Write a new file readable by the service's user and group only (patient data)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with open(fd, "wb") as file:
        file.write(data)


def new_id() -> str:
    return uuid.uuid4().hex


def npz_bytes(*, compress: bool = True, **arrays: np.ndarray) -> bytes:
    """An `.npz` archive of `arrays` (read by `np.load`); `compress=False` for float maps
    that barely compress. Deflate level 1: on a prediction's input, view and mask, half the
    time of `np.savez_compressed`'s level 6 for 5 % more bytes."""
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", method, compresslevel=1 if compress else None) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
    return buffer.getvalue()


class Store:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.files = self.root / "files"
        self.files.mkdir(parents=True, exist_ok=True)
        # Patient data: no one outside the service's user and group may enter (umask aside).
        for folder in (self.root, self.files):
            with contextlib.suppress(PermissionError):  # a folder owned by another user
                folder.chmod(0o750)
        self.db_path = self.root / "store.sqlite3"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.db_path, timeout=10.0, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """The store's connection, one thread at a time, inside a transaction."""
        with self._lock, self._db:
            yield self._db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def spool(self, expected_bytes: int = 0) -> Iterator[Path]:
        """A folder for one request's uploads on the store's own disk, so that keeping them
        with the prediction is a rename (`save(uploads=...)`); removed when the request ends
        unless kept. Refused up front when the disk lacks room for `expected_bytes`."""
        folder = self.files / f".spool-{new_id()}"
        try:
            free = shutil.disk_usage(self.files).free
            if expected_bytes + _SPOOL_RESERVE_BYTES <= free:
                folder.mkdir(mode=0o750)
        except OSError as exc:
            raise _unwritable(exc) from None
        if not folder.is_dir():
            raise StorageError(
                f"the prediction store's disk has {free >> 20} MiB free, too little to receive "
                f"{expected_bytes >> 20} MiB; free space in the store folder or try later"
            )
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def save(
        self,
        prediction_id: str,
        *,
        task: str,
        model: str,
        response: Mapping[str, Any],
        files: Mapping[str, bytes],
        uploads: Path | None = None,
    ) -> StoredPrediction:
        """Write `files` (relative paths -> bytes) and move the spooled `uploads` folder in
        (as `uploads/`), then commit the row."""
        temp = self.files / f".tmp-{prediction_id}"
        final = self.files / prediction_id
        for relative in files:
            if not (temp / relative).resolve().is_relative_to(temp.resolve()):
                raise ValueError(f"refusing to write outside the prediction folder: {relative!r}")
        created = time.time()
        try:
            temp.mkdir(mode=0o750)
            for relative, data in files.items():
                path = temp / relative
                path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
                _write_private(path, data)
            if uploads is not None:
                os.replace(uploads, temp / "uploads")
            os.replace(temp, final)
            with self._connect() as db:
                db.execute(
                    "INSERT INTO predictions (id, task, created, model, response) VALUES (?, ?, ?, ?, ?)",
                    (prediction_id, task, created, model, json.dumps(response)),
                )
        except (OSError, sqlite3.Error) as exc:
            # The row is never committed, so no half-written prediction is ever listed.
            raise _unwritable(exc) from None
        return StoredPrediction(prediction_id, task, created, model, dict(response), final)

    def get(self, prediction_id: str) -> StoredPrediction:
        if not _ID.match(prediction_id):
            raise UnknownIdError(f"{prediction_id!r} is not a prediction id", field="id")
        with self._connect() as db:
            row = db.execute(
                "SELECT id, task, created, model, response FROM predictions WHERE id = ?", (prediction_id,)
            ).fetchone()
        if row is None:
            raise UnknownIdError(
                f"no prediction {prediction_id!r} (it may have expired under the retention policy)",
                field="id",
            )
        return StoredPrediction(row[0], row[1], row[2], row[3], json.loads(row[4]), self.files / row[0])

    def read(self, prediction: StoredPrediction, relative: str) -> bytes | None:
        path = prediction.folder / relative
        return path.read_bytes() if path.is_file() else None

    def read_npz(self, prediction: StoredPrediction, relative: str) -> dict[str, np.ndarray] | None:
        data = self.read(prediction, relative)
        if data is None:
            return None
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}

    def write_cache(self, prediction: StoredPrediction, relative: str, data: bytes) -> None:
        """Atomically add a computed explanation to a prediction's folder."""
        path = prediction.folder / "cache" / relative
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        _write_private(temp, data)
        os.replace(temp, path)

    def read_cache(self, prediction: StoredPrediction, relative: str) -> bytes | None:
        return self.read(prediction, f"cache/{relative}")

    def purge(self, retention_days: float, now: float | None = None) -> int:
        """Delete predictions older than `retention_days` and stale orphan folders."""
        now = time.time() if now is None else now
        cutoff = now - retention_days * 86400.0
        with self._connect() as db:
            old = [r[0] for r in db.execute("SELECT id FROM predictions WHERE created < ?", (cutoff,))]
            db.execute("DELETE FROM predictions WHERE created < ?", (cutoff,))
            known = {r[0] for r in db.execute("SELECT id FROM predictions")}
        for prediction_id in old:
            shutil.rmtree(self.files / prediction_id, ignore_errors=True)
        for folder in self.files.iterdir():  # crashed saves (.tmp-) and requests (.spool-)
            name = folder.name.removeprefix(".tmp-")
            if name not in known and now - folder.stat().st_mtime > _ORPHAN_GRACE_S:
                shutil.rmtree(folder, ignore_errors=True)
        return len(old)
