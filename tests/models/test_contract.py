"""The input contract: geometry, intensity scaling, missing modalities, errors."""

from __future__ import annotations

import numpy as np
import pytest

from models.contract import (
    ContractError,
    Grid,
    Volume,
    foreground_center,
    grid_of,
    lesion_center,
    map_to_grid,
    model_grid,
    prepare_input,
    resample,
    to_tensor_layout,
)
from models.tasks import BRATS, HCC, get_task, task_of_card


def ct_volume(shape=(40, 40, 20), spacing=(8.0, 8.0, 8.0), value=50.0) -> Volume:
    array = np.full(shape, -1024.0, dtype=np.float32)
    array[5:-5, 5:-5, 3:-3] = value
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-100.0, -120.0, -60.0]
    return Volume(array, affine)


def test_allowed_subsets_follow_required_modalities():
    assert all("ct" in subset for subset in HCC.allowed_subsets())
    assert len(HCC.allowed_subsets()) == 4  # ct with any of two PETs
    assert len(BRATS.allowed_subsets()) == 15  # any non-empty subset of four
    assert not HCC.is_allowed({"pet_fdg"})


def test_unknown_task_names_the_known_ones():
    with pytest.raises(ValueError, match="known tasks"):
        get_task("lung")


def test_prepare_input_shapes_and_missing_channels():
    prepared = prepare_input({"ct": ct_volume()}, HCC)
    assert prepared.image.shape == (3, *HCC.shape)
    assert prepared.present.tolist() == [1.0, 0.0, 0.0]
    assert prepared.missing == ("pet_fdg", "pet_act")
    assert np.all(prepared.image[1:] == 0)
    # CT window [-160, 240] HU: 50 HU maps to 0.525, air to 0.
    assert prepared.image[0].max() == pytest.approx((50 + 160) / 400, abs=1e-5)
    assert prepared.image[0].min() == 0.0


def test_required_modality_missing_is_refused():
    pet = Volume(np.ones((10, 10, 10), np.float32), np.eye(4))
    with pytest.raises(ContractError, match="needs 'ct'") as err:
        prepare_input({"pet_fdg": pet}, HCC)
    assert err.value.field == "ct"


def test_unknown_modality_and_non_finite_values_are_refused():
    with pytest.raises(ContractError, match="not a modality"):
        prepare_input({"ct": ct_volume(), "mri": ct_volume()}, HCC)
    bad = ct_volume()
    bad.array[0, 0, 0] = np.nan
    with pytest.raises(ContractError, match="NaN"):
        prepare_input({"ct": bad}, HCC)


@pytest.mark.parametrize("spacing", [(1e6, 1e6, 1e6), (8.0, 8.0, 1e-4), (0.8, 0.8, 60.0)])
def test_a_voxel_size_no_scan_has_is_refused(spacing):
    with pytest.raises(ContractError, match="not a scan's") as err:
        prepare_input({"ct": ct_volume(spacing=spacing)}, HCC)
    assert err.value.field == "ct"
    mask = ct_volume(spacing=spacing)
    with pytest.raises(ContractError, match="not a scan's") as err:
        prepare_input({"ct": ct_volume()}, get_task("hcc", grid="lesion"), lesion=mask)
    assert err.value.field == "mask"


def test_grid_is_centred_on_the_foreground():
    volume = ct_volume()
    center = foreground_center(volume, "ct")
    grid = model_grid(HCC, center)
    middle = (np.array(grid.shape) - 1) / 2.0
    assert np.allclose((grid.affine @ np.append(middle, 1))[:3], center)


def test_resample_is_identity_on_the_same_grid():
    volume = ct_volume()
    grid = Grid(shape=volume.array.shape, affine=volume.affine)
    assert np.allclose(resample(volume.array, volume.affine, grid), volume.array)


def test_flipped_axes_give_the_same_tensor():
    """An LPS-stored copy of the same image (axes flipped, affine adjusted) is the same input."""
    volume = ct_volume()
    volume.array[10:14, 12:20, 5:9] = 200.0  # an asymmetric feature
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = np.array(volume.array.shape[:2]) - 1
    flipped = Volume(volume.array[::-1, ::-1, :].copy(), volume.affine @ flip)
    a = prepare_input({"ct": volume}, HCC).image
    b = prepare_input({"ct": flipped}, HCC).image
    assert np.allclose(a, b, atol=1e-5)


def test_map_to_grid_returns_to_the_input_grid():
    volume = ct_volume()
    prepared = prepare_input({"ct": volume}, HCC)
    coarse = np.ones((6, 12, 12), np.float32)
    back = map_to_grid(coarse, prepared.grid, grid_of(volume))
    assert back.array.shape == volume.array.shape
    assert np.allclose(back.affine, volume.affine)
    assert np.allclose(back.array[volume.array > -1024], 1.0)


def test_mri_is_z_scored_inside_the_foreground():
    array = np.zeros((30, 30, 30), np.float32)
    rng = np.random.default_rng(0)
    array[5:25, 5:25, 5:25] = rng.normal(300, 40, (20, 20, 20)).clip(1)
    prepared = prepare_input({"flair": Volume(array, np.diag([4.0, 4.0, 4.0, 1.0]))}, BRATS)
    flair = prepared.image[3]
    inside = flair[flair != 0]
    assert abs(inside.mean()) < 0.1 and abs(inside.std() - 1) < 0.1
    assert to_tensor_layout(array).shape == (30, 30, 30)


def test_world_bounds_hold_every_voxel_edge_in_any_orientation():
    """A 4 x 2 x 3 volume of 2 x 3 x 5 mm voxels with its first two axes swapped and the
    third flipped: the box spans 8 mm along y, 6 along x and 15 along z."""
    affine = np.array([[0.0, 3.0, 0.0, 10.0], [2.0, 0.0, 0.0, 20.0], [0.0, 0.0, -5.0, 30.0], [0, 0, 0, 1]])
    low, high = Volume(np.zeros((4, 2, 3), np.float32), affine).world_bounds()
    np.testing.assert_allclose(high - low, [6.0, 8.0, 15.0])
    # voxel (0, 0, 0) is centred at (10, 20, 30): its edges reach half a voxel out
    np.testing.assert_allclose(low, [10.0 - 1.5, 20.0 - 1.0, 30.0 - 12.5])


# -- the lesion grid ---------------------------------------------------------------------


def _lesion_case() -> tuple[Volume, Volume, np.ndarray]:
    """An oblique-free CT (2 x 2 x 3 mm, off-origin) with a bright cube lesion, its liver 1 /
    lesion 2 mask with a small satellite, and the lesion's centre in RAS mm."""
    shape = (80, 70, 40)
    affine = np.diag([-2.0, 2.0, 3.0, 1.0])  # x flipped: the centre must still come out in RAS
    affine[:3, 3] = [100.0, -60.0, 20.0]
    ct = np.full(shape, 40.0, np.float32)
    mask = np.zeros(shape, np.float32)
    mask[10:70, 10:60, 5:35] = 1  # liver
    mask[50:60, 20:30, 10:20] = 2  # the dominant lesion
    ct[50:60, 20:30, 10:20] = 200.0
    mask[15:17, 50:52, 30:32] = 2  # a satellite, far off: must not pull the centre
    centre = (affine @ [54.5, 24.5, 14.5, 1.0])[:3]
    return Volume(ct, affine), Volume(mask, affine), centre


def test_lesion_center_is_the_largest_lesion_of_the_highest_label() -> None:
    _, mask, centre = _lesion_case()
    np.testing.assert_allclose(lesion_center(mask), centre)
    # "nonzero" takes every label: here the liver, whose box is centred elsewhere.
    assert not np.allclose(lesion_center(mask, "nonzero"), centre)
    binary = Volume((mask.array == 2).astype(np.uint8), mask.affine)
    np.testing.assert_allclose(lesion_center(binary), centre)


def test_the_lesion_grid_is_a_fine_cube_centred_on_the_lesion() -> None:
    ct, mask, centre = _lesion_case()
    task = get_task("hcc", "lesion")
    assert task.grid == "lesion" and task.shape == (48, 48, 48) and task.spacing_mm == (2.0, 2.0, 2.0)
    prepared = prepare_input({"ct": ct}, task, lesion=mask)
    grid_centre = prepared.grid.affine @ np.append((np.array(prepared.grid.shape) - 1) / 2, 1.0)
    np.testing.assert_allclose(grid_centre[:3], centre)
    # The lesion (200 HU: 0.9 in the CT window) fills the middle of the tensor.
    assert prepared.image.shape == (3, 48, 48, 48)
    assert prepared.image[0, 24, 24, 24] == pytest.approx(0.9)
    # The whole grid ignores the mask.
    whole = prepare_input({"ct": ct}, get_task("hcc"), lesion=mask)
    np.testing.assert_array_equal(whole.image, prepare_input({"ct": ct}, get_task("hcc")).image)


def test_the_lesion_grid_needs_a_lesion_inside_the_image() -> None:
    ct, mask, _ = _lesion_case()
    task = get_task("hcc", "lesion")
    with pytest.raises(ContractError, match="needs the lesion's mask") as missing:
        prepare_input({"ct": ct}, task)
    assert missing.value.field == "mask"
    empty = Volume(np.zeros_like(mask.array), mask.affine)
    with pytest.raises(ContractError, match="no lesion voxel"):
        prepare_input({"ct": ct}, task, lesion=empty)
    moved = mask.affine.copy()
    moved[:3, 3] += [0.0, 0.0, 500.0]
    with pytest.raises(ContractError, match="outside the ct image") as outside:
        prepare_input({"ct": ct}, task, lesion=Volume(mask.array, moved))
    assert outside.value.field == "mask"


def test_cards_name_their_grid_and_older_ones_mean_the_whole_grid() -> None:
    assert task_of_card({"task": "hcc"}) == HCC
    assert task_of_card({"task": "hcc", "input": {"grid": "lesion"}}) == get_task("hcc", "lesion")
    assert task_of_card({"task": "brats", "grid": "lesion"}).lesion_labels == "nonzero"
    with pytest.raises(ValueError, match="unknown grid"):
        get_task("hcc", "liver")
