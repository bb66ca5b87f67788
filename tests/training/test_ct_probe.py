"""`bench.ct_probe` runs end to end on a generated cohort (its findings: docs/benchmark.md)."""

from __future__ import annotations

import math
from pathlib import Path

from bench.ct_probe import probe


def test_the_ct_probe_scores_each_epoch_on_held_out_cases(hcc_manifest: Path) -> None:
    correlations = probe(str(hcc_manifest), epochs=2, seed=0, width=4)
    assert len(correlations) == 2
    assert all(math.isfinite(c) and -1.0 <= c <= 1.0 for c in correlations)
