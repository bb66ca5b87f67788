"""Prometheus metrics, one registry per app (so several apps, as in tests, never collide).

Served by several worker processes (`reactkd serve --workers N`), each counts into files of
the folder `PROMETHEUS_MULTIPROC_DIR` names (prometheus-client's multiprocess mode, chosen
when the variable is set before the library is imported), and `/metrics`, whichever worker
answers it, adds up every worker's files: the numbers are the service's.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

_STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "reactkd_requests_total",
            "HTTP requests by route and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "reactkd_request_seconds",
            "HTTP request latency by route",
            ["route"],
            registry=self.registry,
            buckets=_STAGE_BUCKETS,
        )
        self.stages = Histogram(
            "reactkd_stage_seconds",
            "Time per processing stage "
            "(receive, ingest, localize, preprocess, checks, inference, outcome, save, explain, store)",
            ["stage"],
            registry=self.registry,
            buckets=_STAGE_BUCKETS,
        )
        self.predictions = Counter(
            "reactkd_predictions_total",
            "Predictions by task and label",
            ["task", "label"],
            registry=self.registry,
        )

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stages.labels(stage=name).observe(time.perf_counter() - start)

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            every_worker = CollectorRegistry()
            multiprocess.MultiProcessCollector(every_worker)
            return generate_latest(every_worker)
        return generate_latest(self.registry)
