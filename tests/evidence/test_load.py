"""Short load evidence (8 clients for 10 s; the full 32 x 60 s run is `python -m tests.evidence.load`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .load import run_load, summary

CONCURRENCY, SECONDS = 8, 10.0


@pytest.mark.slow
def test_short_load_gives_no_unexpected_5xx_and_every_id_is_fetchable(tmp_path: Path) -> None:
    result = run_load(tmp_path / "store", CONCURRENCY, SECONDS, max_inferences=2)
    print("\nload:", summary(result, SECONDS))
    assert result.statuses[200] > 0
    assert result.bad_5xx == []
    assert set(result.statuses) <= {200, 503}
    assert result.transport_errors == 0
    assert result.unfetchable == []
