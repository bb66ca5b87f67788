"""Low-dose CT: dose validation, 1/sqrt(dose) noise, unbiased mean, dose reduction of a full-dose CT."""

from __future__ import annotations

import numpy as np
import pytest

from models.contract import Grid
from training.data.lowdose import acquisition_grid, reduce_dose, simulate_low_dose

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


def test_a_crop_is_widened_to_the_body_and_found_again_inside() -> None:
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    crop = Grid((48, 48, 48), affine)
    low, high = np.array([-150.0, -130.0, -500.0]), np.array([150.0, 110.0, 500.0])
    wide, inside = acquisition_grid(crop, low, high)
    assert wide.shape[0] % 32 == 0 and wide.shape[1] % 32 == 0 and wide.shape[2] == 48
    # The widened field holds the body, and the crop's voxels are exactly its own.
    first, last = wide.affine[:3, 3], wide.affine[:3, 3] + 2.0 * (np.array(wide.shape) - 1)
    assert np.all(first[:2] - 1.0 <= low[:2]) and np.all(last[:2] + 1.0 >= high[:2])
    corner = wide.affine @ np.array([inside[0].start, inside[1].start, inside[2].start, 1.0])
    np.testing.assert_allclose(corner[:3], affine[:3, 3])
    assert [s.stop - s.start for s in inside] == [48, 48, 48]
    # A grid holding the body already is left as it is.
    same, everything = acquisition_grid(wide, low, high)
    assert same.shape == wide.shape and np.array_equal(same.affine, wide.affine)
    assert everything == (slice(0, wide.shape[0]), slice(0, wide.shape[1]), slice(0, 48))


def test_noise_simulated_on_the_whole_body_is_the_noise_a_crop_of_it_gets() -> None:
    """A 96 mm crop of an abdomen-sized phantom alone would get a fraction of the noise."""
    phantom = water_phantom(n=128, slices=4)  # 4 mm voxels, 512 mm field
    rng = np.random.default_rng(0)
    body = roi(reduce_dose(phantom, SPACING, 0.1, rng))
    crop = phantom[52:76, 52:76]  # 96 mm of water in the middle: rays cross 96 mm only
    alone = reduce_dose(crop, SPACING, 0.1, rng)[4:20, 4:20]
    assert alone.std() < 0.6 * body.std()
