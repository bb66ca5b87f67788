"""Uploads are spooled to disk as they stream in: a body far larger than the memory a
request is allowed is answered cleanly, kept whole with its prediction, and a refused one
leaves nothing behind."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from app_helpers import ct_volume, dicom_files

from app.errors import StorageError
from app.store import Store
from bench.server import start_server, stop

MiB = 2**20
JUNK_BYTES = 400 * MiB  # a body this large, held in memory, would raise the peak by as much
# What one small prediction raises the warm server's peak by, with room to spare; the junk
# member must not add to it.
PEAK_LIMIT_BYTES = 160 * MiB


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


def _peak_rise(pid: int, post) -> tuple[httpx.Response, int]:  # type: ignore[no-untyped-def]
    """The response of `post()` and how far the server's resident memory peaked above its
    level before (VmHWM, reset through /proc/PID/clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = _status_kib(pid, "VmRSS")
    response = post()
    return response, (_status_kib(pid, "VmHWM") - before) * 1024


def _zip_with_junk(folder: Path, junk_bytes: int) -> Path:
    """A zip of a small CT series and one big member that is no DICOM (a viewer shipped
    with the study, say), stored uncompressed, written to disk without holding it."""
    path = folder / "study-with-viewer.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for index, data in enumerate(dicom_files(ct_volume())):
            archive.writestr(f"ct/{index:04d}.dcm", data)
        with archive.open("viewer/viewer.bin", "w", force_zip64=True) as member:
            chunk = b"\x00" * MiB
            for _ in range(junk_bytes // MiB):
                member.write(chunk)
    return path


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str, Path]]:
    store = tmp_path_factory.mktemp("spool-store")
    process, base = start_server(
        model_dir,
        store,
        None,
        REACTKD_MEMORY_BUDGET_MB="8000",  # admission reserves by the declared size
        REACTKD_WARMUP="true",
    )
    try:
        yield process.pid, base, store
    finally:
        stop(process)


def _post(base: str, path: Path) -> httpx.Response:
    with path.open("rb") as body:  # streamed by the client too
        files = {"ct": (path.name, body, "application/zip")}
        return httpx.post(f"{base}/v1/predict", data={"task": "hcc"}, files=files, timeout=300)


@pytest.mark.timeout(300)
def test_an_upload_far_larger_than_a_requests_memory_is_answered_and_kept(
    server: tuple[int, str, Path], tmp_path: Path
) -> None:
    pid, base, store = server
    small = _zip_with_junk(tmp_path, 0)
    big = _zip_with_junk(tmp_path, JUNK_BYTES)
    _post(base, small)  # warm: the first prediction sizes the runtime's arenas
    baseline, baseline_rise = _peak_rise(pid, lambda: _post(base, small))
    response, rise = _peak_rise(pid, lambda: _post(base, big))
    assert baseline.status_code == 200 and response.status_code == 200, response.text
    body = response.json()
    assert body["gradable"] and body["label"], body
    assert body["probabilities"] == baseline.json()["probabilities"], "the viewer member changed the read"
    # 400 MiB received, spooled, kept: the peak rose no more than for the small study alone.
    assert baseline_rise < PEAK_LIMIT_BYTES, baseline_rise / MiB
    sent = big.stat().st_size
    assert rise < PEAK_LIMIT_BYTES, f"the peak rose {rise / MiB:.0f} MiB for a {sent / MiB:.0f} MiB body"
    # Nothing accepted is lost: the upload lies whole in its prediction's folder.
    kept = list((store / "files" / body["id"] / "uploads" / "ct").iterdir())
    assert [p.stat().st_size for p in kept] == [sent], kept


def test_a_refused_upload_leaves_no_spooled_file(server: tuple[int, str, Path], tmp_path: Path) -> None:
    _, base, store = server
    junk = tmp_path / "notes.txt"
    junk.write_bytes(b"not an image " * 10000)
    with junk.open("rb") as body:
        response = httpx.post(
            f"{base}/v1/predict", data={"task": "hcc"}, files={"ct": ("notes.txt", body)}, timeout=60
        )
    assert response.status_code == 415, response.text
    assert not list((store / "files").glob(".spool-*"))


def test_the_spool_refuses_an_upload_the_disk_cannot_hold(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(StorageError, match="MiB free, too little to receive"), store.spool(1 << 60):
        pass
    with store.spool(1000) as folder:
        (folder / "ct").mkdir()
        assert folder.is_dir()
    assert not folder.exists()  # not kept by a save: removed
    store.close()
