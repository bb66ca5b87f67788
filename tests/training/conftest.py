"""Small generated cohorts shared by the data tests (generated once per session, seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cohort_shapes import BRATS_SHAPE, HCC_SHAPE


@pytest.fixture(scope="session")
def hcc_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.data.synth_hcc import write_hcc_cohort

    out = tmp_path_factory.mktemp("hcc")
    return write_hcc_cohort(out, 24, seed=7, workers=1, progress=False, shape=HCC_SHAPE)


@pytest.fixture(scope="session")
def brats_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.data.synth_brats import write_brats_cohort

    out = tmp_path_factory.mktemp("brats")
    return write_brats_cohort(out, 12, seed=3, workers=1, progress=False, shape=BRATS_SHAPE, spacing=4.0)
