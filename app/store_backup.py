"""A consistent copy of the prediction store while the service runs.

    python -m app.store_backup DEST [--store DIR]

The database is copied with SQLite's online backup API (a snapshot, safe beside the
service's writes under WAL; copying `store.sqlite3` by hand could miss what is still in
`store.sqlite3-wal`), then the folder of every prediction in that snapshot. A prediction is
committed only after its folder is complete (`app.store`), so every copied row has all its
files; one saved after the snapshot is left for the next backup. Restore: stop the service,
put DEST in place of the store folder (owned by the service's user), start it.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sqlite3
from pathlib import Path

log = logging.getLogger("app.store_backup")


def backup(store: Path, dest: Path) -> int:
    """Copy the store at `store` into the new folder `dest`; returns the predictions copied."""
    store, dest = Path(store), Path(dest)
    if not (store / "store.sqlite3").is_file():
        raise FileNotFoundError(f"no prediction store in {store} (no store.sqlite3)")
    (dest / "files").mkdir(mode=0o750, parents=True)  # refuses an existing backup
    dest.chmod(0o750)
    source = sqlite3.connect(store / "store.sqlite3", timeout=10.0)
    target = sqlite3.connect(dest / "store.sqlite3")
    try:
        source.backup(target)
        ids = [row[0] for row in target.execute("SELECT id FROM predictions")]
        expired = []
        for prediction_id in ids:
            try:
                # Dot files are a cached explanation being written (renamed into place).
                shutil.copytree(
                    store / "files" / prediction_id,
                    dest / "files" / prediction_id,
                    ignore=shutil.ignore_patterns(".*"),
                )
            except FileNotFoundError:
                expired.append(prediction_id)  # purged by retention since the snapshot
        with target:
            target.executemany("DELETE FROM predictions WHERE id = ?", [(i,) for i in expired])
    finally:
        source.close()
        target.close()
    return len(ids) - len(expired)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.store_backup", description=__doc__.split("\n")[0])
    parser.add_argument("dest", type=Path, help="a new folder for the copy")
    parser.add_argument("--store", type=Path, help="the store folder (default: REACTKD_STORE_DIR)")
    args = parser.parse_args(argv)
    if args.store is None:
        from app.settings import Settings

        args.store = Settings().store_dir
    copied = backup(args.store, args.dest)
    print(f"copied {copied} predictions from {args.store} to {args.dest}")


if __name__ == "__main__":
    main()
