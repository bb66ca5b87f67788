"""The latency work of issue #7 changed how things are computed, not what: each fast path
is checked here against the implementation it replaced.

- Trilinear resampling of grid-aligned volumes is separable (`models.contract`); the demo
  models were trained on `ndimage.affine_transform`, so the two must agree on a realistic CT.
- The CT noise estimate (`app.quality`) builds its 3x3 mean and erosion from shifted views.
- The model input is no longer stored with a prediction made from uploads: explanations
  rebuild it from the stored upload and check it against the sha256 recorded at prediction.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from app_helpers import assert_problem, ct_volume, nifti_bytes, series_zip
from scipy import ndimage

from app.quality import (
    INTERIOR,
    MIN_LIVER_ML,
    NOISE_WARN_HU,
    coverage_warning,
    ct_noise_hu,
    eroded_interior,
    in_plane_residual,
    input_warnings,
    liver_ml,
)
from app.store import Store
from models.contract import (
    BACKGROUND,
    Grid,
    Volume,
    foreground_center,
    model_grid,
    normalize,
    prepare_input,
    resample,
    to_tensor_layout,
)
from models.tasks import get_task
from training.data.lowdose import reduce_dose
from training.data.synth_hcc import generate_hcc_case


def _affine_transform(
    array: np.ndarray, affine: np.ndarray, grid: Grid, cval: float, order: int = 1, mode: str = "constant"
) -> np.ndarray:
    """The resampling `prepare_input` used before the separable path (and still uses for oblique scans)."""
    grid_to_source = np.linalg.inv(affine) @ grid.affine
    out = ndimage.affine_transform(
        array,
        grid_to_source[:3, :3],
        offset=grid_to_source[:3, 3],
        output_shape=grid.shape,
        order=order,
        mode=mode,
        cval=cval,
        prefilter=False,
    )
    return out.astype(np.float32)


@pytest.fixture(scope="module")
def hcc_case():  # type: ignore[no-untyped-def]
    """The generated 128 x 128 x 64 CT (and PET) the latency bench posts."""
    return generate_hcc_case(0, 0)


def _flipped(volume: Volume, axis: int) -> Volume:
    """The same image stored with one axis reversed (the affine follows)."""
    n = volume.array.shape[axis]
    flip = np.eye(4)
    flip[axis, axis] = -1.0
    flip[axis, 3] = n - 1
    return Volume(np.flip(volume.array, axis=axis).copy(), volume.affine @ flip)


@pytest.mark.parametrize("layout", ["C", "F", "flipped", "permuted"])
def test_resample_matches_affine_transform_on_a_realistic_ct(hcc_case, layout) -> None:  # type: ignore[no-untyped-def]
    volume = Volume(hcc_case.volumes["ct"], hcc_case.affines["ct"])
    if layout == "F":
        volume = Volume(np.asfortranarray(volume.array), volume.affine)
    elif layout == "flipped":
        volume = _flipped(_flipped(volume, 0), 2)
    elif layout == "permuted":
        swap = np.eye(4)[[1, 0, 2, 3]]
        volume = Volume(np.ascontiguousarray(np.transpose(volume.array, (1, 0, 2))), volume.affine @ swap)
    task = get_task("hcc")
    grid = model_grid(task, foreground_center(volume, "ct"))
    new = resample(volume.array, volume.affine, grid, cval=-1024.0)
    old = _affine_transform(volume.array, volume.affine, grid, cval=-1024.0)
    assert new.shape == old.shape and new.dtype == np.float32 and new.flags.c_contiguous
    # float32 rounding of values up to ~1000 HU; the same voxels fall outside the field of view.
    np.testing.assert_allclose(new, old, rtol=0, atol=2e-3)
    np.testing.assert_array_equal(new == -1024.0, old == -1024.0)


def test_prepare_input_matches_the_old_resampling_with_pet(hcc_case) -> None:  # type: ignore[no-untyped-def]
    """The tensor the shipped models see, CT and both PET channels, within 1e-5 of the old one."""
    task = get_task("hcc")
    volumes = {name: Volume(hcc_case.volumes[name], hcc_case.affines[name]) for name in task.modalities}
    new = prepare_input(volumes, task)
    grid = new.grid
    for channel, name in enumerate(task.modalities):
        kind = task.kind_of(name)
        old = _affine_transform(volumes[name].array, volumes[name].affine, grid, cval=BACKGROUND[kind])
        expected = to_tensor_layout(normalize(old, kind, task))
        np.testing.assert_allclose(new.image[channel], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("seed", range(40))
def test_resample_matches_affine_transform_on_scaled_permutations(seed) -> None:  # type: ignore[no-untyped-def]
    """Flips, axis orders, up- and downsampling, partial overlap, one-voxel axes."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(1, 12, 3))
    array = rng.normal(size=shape).astype(np.float32)
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for grid_axis, source_axis in enumerate(rng.permutation(3)):
        affine[source_axis, grid_axis] = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 3.0)
    affine[:3, 3] = rng.uniform(-10, 10, 3)
    grid_affine = np.diag([*rng.uniform(0.5, 3.0, 3), 1.0])
    grid_affine[:3, 3] = rng.uniform(-10, 10, 3)
    grid = Grid(shape=tuple(int(n) for n in rng.integers(1, 10, 3)), affine=grid_affine)  # type: ignore[arg-type]
    new = resample(array, affine, grid, cval=-5.0)
    old = _affine_transform(array, affine, grid, cval=-5.0)
    np.testing.assert_allclose(new, old, rtol=0, atol=1e-5)
    # The edge extended (the segmenter's sampling up to the scan's faces), and integer
    # sources (DICOM's stored values) read as float plane by plane, agree as well.
    edged = resample(array, affine, grid, mode="nearest")
    np.testing.assert_allclose(edged, _affine_transform(array, affine, grid, 0.0, mode="nearest"), atol=1e-5)
    stored = np.rint(array * 1000).astype(np.int16)
    np.testing.assert_allclose(
        resample(stored, affine, grid),
        _affine_transform(stored.astype(np.float32), affine, grid, 0.0),
        atol=1e-2,
    )


def test_oblique_volumes_and_nearest_still_use_affine_transform() -> None:
    rng = np.random.default_rng(0)
    array = rng.normal(size=(9, 8, 7)).astype(np.float32)
    angle = np.deg2rad(20)
    affine = np.eye(4)
    affine[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    grid = Grid(shape=(6, 6, 6), affine=np.diag([1.2, 1.2, 1.2, 1.0]))
    np.testing.assert_array_equal(resample(array, affine, grid), _affine_transform(array, affine, grid, 0.0))
    straight = np.eye(4)
    np.testing.assert_array_equal(
        resample(array, straight, grid, order=0), _affine_transform(array, straight, grid, 0.0, order=0)
    )


@pytest.mark.parametrize("fortran", [False, True])
def test_noise_estimate_matches_scipy_filters(hcc_case, fortran) -> None:  # type: ignore[no-untyped-def]
    array = hcc_case.volumes["ct"]
    array = np.asfortranarray(array) if fortran else array
    soft = (array > -100) & (array < 200)
    np.testing.assert_array_equal(eroded_interior(soft), ndimage.binary_erosion(soft)[INTERIOR])
    residual = array - ndimage.uniform_filter(array, size=(3, 3, 1))
    np.testing.assert_allclose(in_plane_residual(array), residual[INTERIOR], rtol=0, atol=1e-3)
    values = residual[ndimage.binary_erosion(soft, iterations=1)]
    old = 1.4826 * float(np.median(np.abs(values - np.median(values)))) / np.sqrt(1 - 1 / 9)
    new = ct_noise_hu(Volume(array, hcc_case.affines["ct"]), max_slices=array.shape[2])  # every slice
    assert new == pytest.approx(old, abs=1e-3)


def test_checks_on_a_sample_agree_with_the_whole_real_size_volume(hcc_case) -> None:  # type: ignore[no-untyped-def]
    """A 384 x 384 x 180 CT (routine noise of 15 HU drawn on its own voxels): the noise read
    on 32 slices and the liver counted on a 192-voxel lattice agree with the whole volume
    within their own noise (the noise estimate of two disjoint halves of the slices differs
    by about 1 %)."""
    ct = hcc_case.volumes["ct"]
    factors = (384 / ct.shape[0], 384 / ct.shape[1], 180 / ct.shape[2])
    smooth = ndimage.zoom(ndimage.gaussian_filter(ct, 1.0), factors, order=1)
    array = smooth + np.random.default_rng(0).normal(0.0, 15.0, smooth.shape).astype(np.float32)
    affine = hcc_case.affines["ct"].copy()
    affine[:3, :3] = affine[:3, :3] / np.array(factors)
    volume = Volume(array, affine)
    whole = ct_noise_hu(volume, max_slices=array.shape[2])
    sampled = ct_noise_hu(volume)
    halves = [ct_noise_hu(Volume(array[:, :, k::2], affine)) for k in (0, 1)]
    assert whole is not None and sampled is not None and None not in halves
    own_noise = abs(halves[0] - halves[1])  # type: ignore[operator]
    assert abs(sampled - whole) <= max(3 * own_noise, 0.02 * whole), (sampled, whole, halves)
    assert 12.0 < whole < 18.0
    full_liver = liver_ml(volume, max_side=array.shape[0])
    assert full_liver > MIN_LIVER_ML
    assert liver_ml(volume) == pytest.approx(full_liver, rel=0.01)


def test_erosion_of_thin_masks() -> None:
    for shape in [(3, 3, 3), (5, 4, 3), (3, 7, 5)]:
        mask = np.ones(shape, dtype=bool)
        np.testing.assert_array_equal(eroded_interior(mask), ndimage.binary_erosion(mask)[INTERIOR])
    assert ct_noise_hu(Volume(np.zeros((2, 40, 40), np.float32), np.eye(4))) is None


# -- the model input, rebuilt for explanations -------------------------------------------------


def _folder(client, prediction_id: str) -> Path:  # type: ignore[no-untyped-def]
    return Path(client.app.state.settings.store_dir) / "files" / prediction_id


def _as_stored_before_inputs_were_kept(folder: Path) -> None:
    """A prediction as older versions stored it: the upload, not the model input."""
    for name in ("input.npz", "headers.json", "mask.npz"):
        (folder / name).unlink(missing_ok=True)


@pytest.mark.parametrize("kind", ["nifti", "dicom"])
def test_explanations_read_the_exact_model_input(client, kind) -> None:  # type: ignore[no-untyped-def]
    """The model input is kept with the prediction; one stored before it was kept is rebuilt
    from the upload, verified and cached, and explains the same."""
    volume = ct_volume()
    upload = ("ct.nii.gz", nifti_bytes(volume)) if kind == "nifti" else ("ct.zip", series_zip(volume))
    response = client.post("/v1/predict", data={"task": "hcc"}, files={"ct": upload})
    assert response.status_code == 200, response.text
    prediction_id = response.json()["id"]
    folder = _folder(client, prediction_id)
    with np.load(folder / "input.npz") as npz:
        kept = npz["image"]
    if kind == "nifti":
        np.testing.assert_array_equal(kept, prepare_input({"ct": volume}, get_task("hcc")).image)
    attention = client.get(f"/v1/explain/{prediction_id}/attention", params={"format": "png"})
    assert attention.status_code == 200, attention.text

    _as_stored_before_inputs_were_kept(folder)
    rebuilt = client.get(f"/v1/explain/{prediction_id}/attention", params={"format": "png"})
    assert rebuilt.status_code == 200 and rebuilt.content == attention.content
    with np.load(folder / "cache" / "input.npz") as npz:
        np.testing.assert_array_equal(npz["image"], kept)
    # A second explanation reads the cache (same answer).
    again = client.get(f"/v1/explain/{prediction_id}/attention", params={"format": "png"})
    assert again.content == attention.content


def test_a_changed_preprocessing_is_refused_not_explained(client) -> None:  # type: ignore[no-untyped-def]
    files = {"ct": ("ct.nii.gz", nifti_bytes(ct_volume()))}
    prediction_id = client.post("/v1/predict", data={"task": "hcc"}, files=files).json()["id"]
    _as_stored_before_inputs_were_kept(_folder(client, prediction_id))
    meta_path = _folder(client, prediction_id) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["input_digest"] = "0" * 64  # as if the model had seen another tensor
    meta_path.write_text(json.dumps(meta))
    response = client.get(f"/v1/explain/{prediction_id}/attention")
    assert response.status_code == 409
    assert "preprocessing has changed" in response.json()["detail"]


def test_an_upload_the_checks_now_refuse_is_not_explained(client) -> None:  # type: ignore[no-untyped-def]
    """Accepted under older input checks, refused by today's: 409 about the stored upload."""
    ct = ct_volume()
    files = {"ct": ("ct.nii.gz", nifti_bytes(ct))}
    prediction_id = client.post("/v1/predict", data={"task": "hcc"}, files=files).json()["id"]
    _as_stored_before_inputs_were_kept(_folder(client, prediction_id))
    stored = next((_folder(client, prediction_id) / "uploads" / "ct").iterdir())
    stored.write_bytes(nifti_bytes(Volume(ct.array, np.diag([0.008, 0.008, 0.008, 1.0]))))
    body = assert_problem(client.get(f"/v1/explain/{prediction_id}/attention"), 409, "not-available", "id")
    assert "current input checks" in body["detail"] and "voxel size" in body["detail"]


def test_prediction_is_committed_before_the_answer(client) -> None:  # type: ignore[no-untyped-def]
    """Another connection (as after a crash and restart) sees the row as soon as the 200 is out."""
    files = {"ct": ("ct.nii.gz", nifti_bytes(ct_volume()))}
    prediction_id = client.post("/v1/predict", data={"task": "hcc"}, files=files).json()["id"]
    other = Store(Path(client.app.state.settings.store_dir))
    try:
        assert other.get(prediction_id).response["id"] == prediction_id
    finally:
        other.close()


def test_ct_warnings_flag_low_dose_and_a_missing_liver(hcc_case) -> None:  # type: ignore[no-untyped-def]
    """The noise estimate tells a routine-dose CT from a 5 % dose one, and a CT without liver
    (every voxel of the liver range shifted out of it) is flagged as such."""
    ct = Volume(hcc_case.volumes["ct"], hcc_case.affines["ct"])
    task = get_task("hcc")
    low = reduce_dose(ct.array, ct.spacing, 0.05, np.random.default_rng(0))
    no_liver = np.where((ct.array > 60) & (ct.array < 160), ct.array - 120.0, ct.array)
    full_noise, low_noise = ct_noise_hu(ct), ct_noise_hu(Volume(low, ct.affine))
    assert full_noise is not None and low_noise is not None
    assert full_noise < NOISE_WARN_HU < low_noise
    quiet = input_warnings({"ct": ct, "pet_fdg": ct, "pet_act": ct}, task)
    assert not [w for w in quiet if w.startswith("ct:")]
    flagged = input_warnings({"ct": Volume(low, ct.affine)}, task)
    assert any("low-dose" in w for w in flagged)
    # Missing PET is the model's concern, not the image's: `app.prediction.modality_warnings`.
    assert not [w for w in flagged if w.startswith("pet_")]
    assert any("liver" in w for w in input_warnings({"ct": Volume(no_liver, ct.affine)}, task))


def test_ct_warnings_flag_values_that_are_not_hounsfield_units(hcc_case) -> None:  # type: ignore[no-untyped-def]
    """Stored values without the -1024 intercept (air at 0, soft tissue near 1050), values
    beyond any CT range and values spanning a few units are flagged; the same scan in HU is not."""
    ct = Volume(hcc_case.volumes["ct"], hcc_case.affines["ct"])
    task = get_task("hcc")

    def units(array: np.ndarray) -> list[str]:
        return [
            w
            for w in input_warnings({"ct": Volume(array, ct.affine)}, task)
            if "Hounsfield" in w or "intercept" in w
        ]

    assert units(ct.array) == []
    assert any("rescale intercept" in w for w in units(ct.array + 1024.0))
    assert any("beyond any CT range" in w for w in units(np.where(ct.array > 500, 1e6, ct.array)))
    # A binary mask or a z-scored image sent as the CT: its values span a few units at most.
    assert any("not Hounsfield units" in w for w in units((ct.array > 0).astype(np.float32)))
    z_scored = (ct.array - ct.array.mean()) / ct.array.std()
    assert any("not Hounsfield units" in w for w in units(z_scored.astype(np.float32)))


def test_pet_warnings_flag_values_far_above_any_suv() -> None:
    """PET in SUV passes; the same PET in Bq/ml (thousands) is flagged, naming the field."""
    task = get_task("hcc")
    ct = ct_volume()
    suv = Volume(np.clip((ct.array + 1000) / 300, 0, None).astype(np.float32), ct.affine)
    assert not [w for w in input_warnings({"ct": ct, "pet_fdg": suv}, task) if "SUV" in w]
    becquerel = Volume(suv.array * 5000.0, suv.affine)
    flagged = input_warnings({"ct": ct, "pet_fdg": becquerel}, task)
    assert any(w.startswith("pet_fdg: the 99.9th percentile") and "Bq/ml" in w for w in flagged)


def test_mr_warnings_flag_an_image_normalised_already() -> None:
    """Raw MR intensities pass; the same image z-scored (its negative half read as
    background by the model's own normalisation) is flagged."""
    task = get_task("brats")
    rng = np.random.default_rng(0)
    raw = np.where(rng.random((40, 40, 30)) < 0.6, rng.normal(400, 80, (40, 40, 30)), 0.0).astype(np.float32)
    volume = Volume(raw, np.diag([4.0, 4.0, 4.0, 1.0]))
    assert not [w for w in input_warnings({"t1": volume}, task) if "negative" in w]
    zscored = Volume((raw - raw.mean()) / raw.std(), volume.affine)
    assert any(
        w.startswith("t1: ") and "normalised already" in w for w in input_warnings({"t1": zscored}, task)
    )


def test_coverage_warning_follows_the_world_axes() -> None:
    """A volume spanning under a quarter of the model's field of view along a world axis is
    flagged, whichever of its voxel axes that is."""
    task = get_task("hcc")  # 384 x 384 x 192 mm
    thick = Volume(np.zeros((100, 100, 20), np.float32), np.diag([4.0, 4.0, 4.0, 1.0]))
    assert coverage_warning(thick, task) is None
    thin_z = Volume(np.zeros((100, 100, 2), np.float32), np.diag([4.0, 4.0, 4.0, 1.0]))
    assert "400 x 400 x 8 mm" in (coverage_warning(thin_z, task) or "")
    # voxel axis 0 along z: 2 voxels thick in z once rotated into the world
    rotated = np.array([[0, 0, 4.0, 0], [0, 4.0, 0, 0], [4.0, 0, 0, 0], [0, 0, 0, 1]])
    assert "400 x 400 x 8 mm" in (
        coverage_warning(Volume(np.zeros((2, 100, 100), np.float32), rotated), task) or ""
    )


def test_routine_spacing_is_not_unusual_on_the_fine_lesion_grid() -> None:
    """A 5 mm PET and 5 mm CT slices are routine even for the 2 mm lesion grid; 8 mm are not."""
    task = get_task("hcc", "lesion")

    def spacing_warnings(spacing: float) -> list[str]:
        volume = ct_volume((16, 16, 8), spacing=spacing)
        return [w for w in input_warnings({"ct": volume, "pet_fdg": volume}, task) if "spacing" in w]

    assert spacing_warnings(5.0) == []
    assert len(spacing_warnings(8.0)) == 2
