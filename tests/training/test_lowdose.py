"""Low-dose CT: dose validation, 1/sqrt(dose) noise, unbiased mean, dose reduction of a full-dose CT."""

from __future__ import annotations

import numpy as np
import pytest

from training.data.lowdose import reduce_dose, simulate_low_dose

SPACING = (4.0, 4.0, 4.0)
# The noise std must follow 1/sqrt(dose) within this relative tolerance ...
STD_TOLERANCE = 0.15
# ... and the mean HU of a uniform region hold within this many HU.
MEAN_TOLERANCE_HU = 3.0


def water_phantom(n: int = 64, slices: int = 8) -> np.ndarray:
    """A water ellipse (0 HU, about an abdomen's size) in air."""
    x = (np.arange(n) - (n - 1) / 2) * SPACING[0]
    xx, yy = np.meshgrid(x, x, indexing="ij")
    inside = (xx / 110) ** 2 + (yy / 85) ** 2 < 1
    return np.repeat(np.where(inside, 0.0, -1000.0)[:, :, None], slices, axis=2).astype(np.float32)


def roi(volume: np.ndarray) -> np.ndarray:
    c = volume.shape[0] // 2
    return volume[c - 8 : c + 8, c - 8 : c + 8, :]


@pytest.mark.parametrize("dose", [0.0, -0.1, 1.5, float("nan")])
def test_dose_outside_unit_interval_is_refused(dose: float) -> None:
    with pytest.raises(ValueError, match="dose must be a fraction of the full dose in \\(0, 1\\]"):
        simulate_low_dose(water_phantom(), SPACING, dose, np.random.default_rng(0))


def test_noise_grows_as_inverse_sqrt_dose_and_mean_holds() -> None:
    phantom = water_phantom()
    rng = np.random.default_rng(0)
    stats = {}
    for dose in (1.0, 0.25, 0.05):
        region = roi(simulate_low_dose(phantom, SPACING, dose, rng))
        stats[dose] = (float(region.mean()), float(region.std()))
    full_std = stats[1.0][1]
    assert 3.0 < full_std < 40.0  # a plausible CT noise level, not zero nor huge
    for dose, (mean, std) in stats.items():
        assert abs(mean) < MEAN_TOLERANCE_HU, (dose, mean)
        expected = full_std / np.sqrt(dose)
        assert abs(std / expected - 1) < STD_TOLERANCE, (dose, std, expected)


def test_reduce_dose_of_full_dose_ct_matches_direct_acquisition() -> None:
    phantom = water_phantom()
    full = simulate_low_dose(phantom, SPACING, 1.0, np.random.default_rng(1))
    direct = roi(simulate_low_dose(phantom, SPACING, 0.1, np.random.default_rng(2))).std()
    reduced = roi(reduce_dose(full, SPACING, 0.1, np.random.default_rng(3))).std()
    assert abs(reduced / direct - 1) < STD_TOLERANCE
    np.testing.assert_array_equal(reduce_dose(full, SPACING, 1.0, np.random.default_rng(4)), full)


def test_same_rng_seed_gives_same_noise() -> None:
    phantom = water_phantom(32, 2)
    a = simulate_low_dose(phantom, SPACING, 0.5, np.random.default_rng(5))
    b = simulate_low_dose(phantom, SPACING, 0.5, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == phantom.shape
