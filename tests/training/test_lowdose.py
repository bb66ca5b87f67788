"""Low-dose CT: dose validation, 1/sqrt(dose) noise, unbiased mean, dose reduction of a full-dose CT,
and the scan's own slab it is simulated on."""

from __future__ import annotations

import numpy as np
import pytest

from models.contract import Grid, Volume
from training.data.lowdose import MAX_SLAB_PIXELS, acquisition_slab, reduce_dose, simulate_low_dose

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


def test_the_slab_is_the_scans_own_pixels_in_the_slices_the_grid_reaches() -> None:
    # A CT stored slice-first (k, i, j): its slice axis (world S) is found and put last.
    ct = np.arange(20 * 40 * 30, dtype=np.float32).reshape(20, 40, 30)
    affine = np.zeros((4, 4))
    affine[0, 1], affine[1, 2], affine[2, 0], affine[3, 3] = 0.8, 0.8, 5.0, 1.0
    affine[:3, 3] = [-16.0, -12.0, -50.0]  # slices at z = -50, -45, ..., 45
    grid_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    grid_affine[:3, 3] = [-10.0, -10.0, -8.0]  # z from -8 to 6 mm
    slab = acquisition_slab(Volume(ct, affine), Grid((8, 8, 8), grid_affine))
    # Every pixel of each slice, the slices from z = -10 to 10 (those around the grid's ends).
    assert slab.array.shape == (40, 30, 5)
    np.testing.assert_array_equal(slab.array, ct[8:13].transpose(1, 2, 0))
    np.testing.assert_allclose(slab.affine @ [0, 0, 0, 1], affine @ [8, 0, 0, 1])
    np.testing.assert_allclose(slab.spacing, (0.8, 0.8, 5.0))


def test_a_wide_field_is_averaged_over_blocks_of_pixels() -> None:
    n = MAX_SLAB_PIXELS + 10  # two pixels per block side
    ct = np.zeros((n, n, 3), dtype=np.float32)
    ct[0::2] = 100.0
    affine = np.diag([0.7, 0.7, 3.0, 1.0])
    slab = acquisition_slab(Volume(ct, affine), Grid((4, 4, 1), np.diag([2.0, 2.0, 2.0, 1.0])))
    assert slab.array.shape == (n // 2, n // 2, 2)
    np.testing.assert_allclose(slab.array, 50.0)
    np.testing.assert_allclose(slab.spacing, (1.4, 1.4, 3.0))
    # The first block's centre lies halfway between the pixels it averages.
    np.testing.assert_allclose((slab.affine @ [0, 0, 0, 1])[:3], [0.35, 0.35, 0.0])


def test_noise_simulated_on_the_whole_body_is_the_noise_a_crop_of_it_gets() -> None:
    """A 96 mm crop of an abdomen-sized phantom alone would get a fraction of the noise."""
    phantom = water_phantom(n=128, slices=4)  # 4 mm voxels, 512 mm field
    rng = np.random.default_rng(0)
    body = roi(reduce_dose(phantom, SPACING, 0.1, rng))
    crop = phantom[52:76, 52:76]  # 96 mm of water in the middle: rays cross 96 mm only
    alone = reduce_dose(crop, SPACING, 0.1, rng)[4:20, 4:20]
    assert alone.std() < 0.6 * body.std()
