"""Several workers on one host: one store written by several processes at once loses
nothing, and `/metrics` adds up every worker's counts."""

from __future__ import annotations

import multiprocessing
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from app_helpers import ct_volume, nifti_bytes

from app.store import Store, new_id
from bench.server import start_server, stop

PER_WRITER = 40


def _write_predictions(folder: str, writer: int) -> list[str]:
    store = Store(Path(folder))
    ids = []
    try:
        for index in range(PER_WRITER):
            prediction_id = new_id()
            store.save(
                prediction_id,
                task="hcc",
                model=f"writer-{writer}",
                response={"id": prediction_id, "index": index},
                files={"outputs.npz": bytes(64 * 1024), "meta.json": b"{}"},
            )
            ids.append(prediction_id)
    finally:
        store.close()
    return ids


def test_two_processes_writing_one_store_at_once_lose_nothing(tmp_path: Path) -> None:
    Store(tmp_path).close()  # the schema, as the first worker to start makes it
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        written = pool.starmap(_write_predictions, [(str(tmp_path), 0), (str(tmp_path), 1)])
    store = Store(tmp_path)
    try:
        for writer, ids in enumerate(written):
            assert len(ids) == PER_WRITER
            for prediction_id in ids:
                saved = store.get(prediction_id)
                assert saved.model == f"writer-{writer}"
                assert store.read(saved, "outputs.npz") == bytes(64 * 1024)
    finally:
        store.close()


@pytest.fixture(scope="module")
def two_workers(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    metrics = tmp_path_factory.mktemp("metrics")
    process, base = start_server(
        model_dir,
        tmp_path_factory.mktemp("store"),
        None,
        REACTKD_WORKERS="2",
        PROMETHEUS_MULTIPROC_DIR=str(metrics),
    )
    try:
        yield base, metrics
    finally:
        stop(process)


def _counted(text: str, route: str) -> int:
    pattern = re.compile(
        r'^reactkd_requests_total\{[^}]*route="' + re.escape(route) + r'"[^}]*\} (\S+)$', re.M
    )
    return int(sum(float(v) for v in pattern.findall(text)))


@pytest.mark.timeout(300)
def test_metrics_add_up_across_two_workers(two_workers: tuple[str, Path]) -> None:
    """Predictions from two clients, each on a fresh connection, until both worker processes
    have served (at most 40): every one is counted once in `/metrics`, whichever worker
    answers the scrape."""
    base, metrics = two_workers
    body = nifti_bytes(ct_volume())
    statuses: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(4):
            with httpx.Client(base_url=base, timeout=120) as http:  # a new connection each time
                response = http.post("/v1/predict", data={"task": "hcc"}, files=[("ct", ("ct.nii.gz", body))])
            with lock:
                statuses.append(response.status_code)

    def workers_that_counted() -> set[str]:
        return {path.name for path in metrics.glob("counter_*.db")}

    while len(statuses) < 40 and (len(statuses) < 8 or len(workers_that_counted()) < 2):
        threads = [threading.Thread(target=client) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    # Two clients, two slots per worker: none is refused.
    assert set(statuses) == {200}, statuses
    assert len(workers_that_counted()) >= 2, workers_that_counted()
    with httpx.Client(base_url=base, timeout=30) as http:
        for _ in range(4):  # several scrapes, answered by either worker: the same sums
            assert _counted(http.get("/metrics").text, "/v1/predict") == len(statuses)
