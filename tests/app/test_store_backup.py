"""The store's permissions, and its backup while predictions are being saved."""

from __future__ import annotations

import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from app.store import Store, new_id
from app.store_backup import backup, main


def _save(store: Store) -> str:
    pid = new_id()
    store.save(pid, task="hcc", model="m", response={"id": pid}, files={"input.npz": pid.encode()})
    return pid


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_patient_data_is_not_world_readable(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    saved = store.save(new_id(), task="hcc", model="m", response={}, files={"views/a.png": b"x"})
    store.write_cache(saved, "attention/0.png", b"y")
    with store.spool() as spool:
        assert _mode(spool) == 0o750
    assert _mode(store.root) == _mode(store.files) == _mode(saved.folder) == 0o750
    assert _mode(saved.folder / "views" / "a.png") == _mode(saved.folder / "cache/attention/0.png") == 0o640


def test_backup_while_saving_restores_every_id(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    before = [_save(store) for _ in range(20)]
    stop = threading.Event()
    during: list[str] = []

    def keep_saving() -> None:
        while not stop.is_set():
            during.append(_save(store))

    writer = threading.Thread(target=keep_saving)
    writer.start()
    try:
        copied = backup(store.root, tmp_path / "backup")
    finally:
        stop.set()
        writer.join()
    store.close()
    # Restored: the backup folder opened as the store, as the service would.
    restored = Store(tmp_path / "backup")
    with sqlite3.connect(restored.db_path) as db:
        ids = [row[0] for row in db.execute("SELECT id FROM predictions")]
    assert len(ids) == copied and set(before) <= set(ids) <= set(before) | set(during)
    for pid in ids:
        prediction = restored.get(pid)
        assert prediction.response == {"id": pid} and restored.read(prediction, "input.npz") == pid.encode()
    assert _mode(restored.files / before[0] / "input.npz") == 0o640


def test_backup_refuses_an_existing_folder_and_a_missing_store(tmp_path: Path) -> None:
    Store(tmp_path / "store").close()
    main([str(tmp_path / "copy"), "--store", str(tmp_path / "store")])
    with pytest.raises(FileExistsError):
        backup(tmp_path / "store", tmp_path / "copy")
    with pytest.raises(FileNotFoundError, match="no prediction store"):
        backup(tmp_path / "nowhere", tmp_path / "copy2")
