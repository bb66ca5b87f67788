"""Label maps, then images (issue #34): the torso generator paints the anatomy as labels, warps
them, and draws each label's HU for the case's contrast phase. Cases here are tiny (the stored
grid is capped at a few hundred thousand voxels), so every field of view is cheap to draw."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from training.data import synth_torso
from training.data.phantom import centered_grid
from training.data.synth_torso import (
    _LESION_DELTA,
    _TEXTURE_HU,
    FIELDS,
    LABELS,
    PHASES,
    SHIFT_HU,
    _label_means,
    draw_image,
    generate_torso_case,
    label_hu_ranges,
    paint_labels,
    smooth_deformation,
    write_torso_cohort,
)

LESIONS = [LABELS[name] for name in ("lesion_1", "lesion_2", "lesion_3", "lesion_4", "lesion_5")]
TUMOR = [*LESIONS, LABELS["necrosis"], LABELS["lesion_rim"]]
LIVER = [LABELS["liver"], LABELS["liver_vessel"], *TUMOR]
SPACING = (4.5, 4.5, 6.0)


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cap the stored grid: coarse voxels, same anatomy and draws."""
    monkeypatch.setattr(synth_torso, "MAX_VOXELS", 250_000)


def _abdomen_labels(seed: int) -> np.ndarray:
    """An abdomen's label map on a grid of ~300k voxels of 4.5 x 4.5 x 6 mm."""
    grid = centered_grid((96, 72, 48), SPACING, (0.0, 10.0, -90.0))
    return paint_labels(grid, np.zeros(3), np.random.default_rng(seed), "abdomen")


def _interior(mask: np.ndarray, voxels: int = 2) -> np.ndarray:
    """Voxels at least `voxels` inside `mask`: out of reach of the partial-volume blur."""
    return ndimage.binary_erosion(mask, structure=np.ones((3, 3, 3), dtype=bool), iterations=voxels)


@pytest.mark.usefixtures("tiny")
@pytest.mark.parametrize("field_of_view", [name for name, _ in FIELDS])
def test_every_field_of_view_gives_a_valid_label_map_whose_masks_are_its_labels(field_of_view: str) -> None:
    case = generate_torso_case(0, 4, field_of_view)
    assert case.params["field"] == field_of_view
    assert case.labels.dtype == np.uint8 and case.labels.shape == case.ct.shape
    assert set(np.unique(case.labels)) <= set(LABELS.values())
    assert np.array_equal(case.liver, np.isin(case.labels, LIVER).astype(np.uint8))
    assert np.array_equal(case.tumor, np.isin(case.labels, TUMOR).astype(np.uint8))
    assert np.all(case.liver[case.tumor > 0] == 1)  # every lesion lies in the liver
    if field_of_view == "head":
        assert not np.isin(case.labels, LIVER).any() and LABELS["brain"] in case.labels
    if field_of_view in ("abdomen", "liver_cut_top", "liver_cut_bottom", "chest_abdomen_pelvis"):
        assert LABELS["liver"] in case.labels


@pytest.mark.usefixtures("tiny")
def test_lesions_are_labels_inside_the_liver_and_the_grade_names_the_dominant_one() -> None:
    cases = (generate_torso_case(1, index, "abdomen") for index in range(8))
    case = next(c for c in cases if c.tumor.any())  # three torsos in four hold lesions
    assert case.grade in ("well", "moderate", "poor") and case.params["lesions"] >= 1
    assert LABELS["lesion_1"] in case.labels or LABELS["necrosis"] in case.labels
    assert np.array_equal(case.tumor > 0, np.isin(case.labels, TUMOR))
    assert np.all(case.liver[case.tumor > 0] == 1)


@pytest.mark.usefixtures("tiny")
def test_the_same_seed_draws_the_same_case() -> None:
    first, again = generate_torso_case(5, 2), generate_torso_case(5, 2)
    for name in ("ct", "labels", "liver", "tumor", "affine"):
        assert np.array_equal(getattr(first, name), getattr(again, name)), name
    assert first.params == again.params and first.grade == again.grade
    other = generate_torso_case(5, 3)
    assert other.ct.shape != first.ct.shape or not np.array_equal(other.ct, first.ct)


@pytest.mark.parametrize("phase", PHASES)
def test_each_label_mean_is_drawn_from_its_range_for_the_phase(phase: str) -> None:
    ranges = label_hu_ranges(phase)
    assert set(ranges) == {name for name, value in LABELS.items() if value not in TUMOR}
    for seed in range(200):
        means = _label_means(np.random.default_rng(seed), phase)
        for name, (low, high) in ranges.items():
            assert low - SHIFT_HU - 1e-3 <= means[LABELS[name]] <= high + SHIFT_HU + 1e-3, (name, seed)
        # Lesions: against the liver as `_LESION_DELTA` says; hyper-attenuating only when arterial.
        brighter, (low, high) = _LESION_DELTA[phase]
        for label in LESIONS:
            delta = float(means[label] - means[LABELS["liver"]])
            assert low - 1e-3 <= abs(delta) <= high + 1e-3, (phase, seed, delta)
            assert brighter > 0 or delta < 0
        assert 10 <= means[LABELS["necrosis"]] <= 30


@pytest.mark.parametrize("phase", PHASES)
def test_the_noise_free_image_holds_each_label_at_its_drawn_range(phase: str) -> None:
    """A block of 12^3 voxels per label: its interior mean is its range, give or take the
    case-wide shift and what smooth texture leaves in a 36 mm cube."""
    names = list(label_hu_ranges(phase))
    labels = np.zeros((12 * len(names), 12, 12), dtype=np.uint8)
    for k, name in enumerate(names):
        labels[12 * k : 12 * (k + 1)] = LABELS[name]
    for seed in range(3):
        hu = draw_image(labels, np.random.default_rng(seed), phase, spacing=(3.0, 3.0, 3.0))
        assert hu.dtype == np.float32 and hu.shape == labels.shape
        for name, (low, high) in label_hu_ranges(phase).items():
            k = names.index(name)
            mean = float(hu[12 * k + 3 : 12 * (k + 1) - 3, 3:-3, 3:-3].mean())
            margin = SHIFT_HU + 0.5 * _TEXTURE_HU.get(name, 2.0) + 2.0
            assert low - margin <= mean <= high + margin, (name, seed, mean, (low, high))


@pytest.mark.parametrize("phase", PHASES)
def test_large_organs_of_a_painted_abdomen_lie_in_their_phase_range(phase: str) -> None:
    labels = _abdomen_labels(0)
    hu = draw_image(labels, np.random.default_rng(1), phase, spacing=SPACING)
    ranges = label_hu_ranges(phase)
    measured = []
    for name in ("fat", "muscle", "visceral_fat", "lung", "liver", "spleen", "kidney_cortex", "bowel_wall"):
        inside = _interior(labels == LABELS[name])
        if inside.sum() < 30:
            continue
        low, high = ranges[name]
        margin = SHIFT_HU + 5.0
        assert low - margin <= hu[inside].mean() <= high + margin, (name, float(hu[inside].mean()))
        measured.append(name)
    assert {"visceral_fat", "lung", "liver"} <= set(measured), measured  # the thin layers may erode away
    assert np.allclose(hu[_interior(labels == LABELS["background"])], -1000, atol=0.5)  # air stays air


def test_smooth_deformation_moves_boundaries_within_its_bound_and_keeps_every_label() -> None:
    labels = _abdomen_labels(2)
    bound = 9.0  # two voxels in plane
    warped = smooth_deformation(labels, np.random.default_rng(3), spacing=SPACING, max_mm=bound)
    assert warped.dtype == np.uint8 and warped.shape == labels.shape
    assert set(np.unique(warped)) == set(np.unique(labels))
    assert (warped != labels).mean() > 0.005  # it did move something
    # Every warped voxel finds its label in the original within the bound (plus the half
    # voxel of nearest-neighbour rounding on each axis).
    slack = bound + 0.5 * float(np.linalg.norm(SPACING))
    for value in np.unique(warped):
        distance = ndimage.distance_transform_edt(labels != value, sampling=SPACING)
        assert distance[warped == value].max() <= slack, value
    again = smooth_deformation(labels, np.random.default_rng(3), spacing=SPACING, max_mm=bound)
    assert np.array_equal(warped, again)


def test_a_label_too_thin_for_the_warp_is_kept() -> None:
    labels = np.full((30, 30, 30), LABELS["muscle"], dtype=np.uint8)
    labels[15, 15, 15] = LABELS["lesion_2"]  # one voxel: may be skipped by the warp
    for seed in range(5):
        warped = smooth_deformation(labels, np.random.default_rng(seed), max_mm=3.0, scale_mm=8.0)
        assert LABELS["lesion_2"] in warped


@pytest.mark.usefixtures("tiny")
def test_the_cohort_writes_each_label_map_beside_its_ct(tmp_path: Path) -> None:
    manifest = write_torso_cohort(tmp_path, 1, seed=2, fields=["abdomen"], workers=1, progress=False)
    header = manifest.read_text().splitlines()[0].split(",")
    assert "labels" not in " ".join(header)  # the manifest is unchanged: no new column
    labels = nib.load(tmp_path / "torso0000" / "labels.nii.gz")
    liver = nib.load(tmp_path / "torso0000" / "liver.nii.gz")
    assert np.asarray(labels.dataobj).dtype == np.uint8
    assert np.allclose(labels.affine, liver.affine)
    assert np.array_equal(np.isin(np.asarray(labels.dataobj), LIVER), np.asarray(liver.dataobj) > 0)


def test_the_bowel_is_a_thin_wall_around_its_content_not_a_solid_organ() -> None:
    """A solid blob of bowel wall looks like a liver (issue #34: the segmenter called such
    blobs liver in pelvis-only scans). Loops are a wall of a few mm around fluid and gas."""
    grid = centered_grid((80, 64, 40), (3.0, 3.0, 3.0), (0.0, 10.0, -200.0))
    labels = paint_labels(grid, np.zeros(3), np.random.default_rng(3), "abdomen")
    wall = labels == LABELS["bowel_wall"]
    lumen = np.isin(labels, [LABELS[n] for n in ("bowel_fluid", "bowel_contrast", "gas")])
    assert wall.sum() > 1000 and lumen.sum() > wall.sum() / 4
    depth_mm = ndimage.distance_transform_edt(wall, sampling=(3.0, 3.0, 3.0))
    assert np.percentile(depth_mm[wall], 99) <= 9.0  # no wall deeper than three voxels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_pelvis_holds_a_bladder_a_uterus_or_prostate_and_a_walled_colon(seed: int) -> None:
    """What a pelvis-only scan is full of, beside the muscles: organs of a liver's tone in
    enhanced phases, which the segmenter must learn are not a liver (issue #34)."""
    grid = centered_grid((80, 64, 48), (3.0, 3.0, 3.0), (0.0, 10.0, -400.0))
    labels = paint_labels(grid, np.zeros(3), np.random.default_rng(seed), "pelvis")
    ml = {name: float((labels == LABELS[name]).sum()) * 27 / 1000 for name in ("bladder", "pelvic_organ")}
    assert 10 <= ml["bladder"] <= 800 and 10 <= ml["pelvic_organ"] <= 400, ml
    assert not np.isin(labels, LIVER).any()
    content = np.isin(labels, [LABELS["faeces"], LABELS["bowel_fluid"], LABELS["gas"]])
    assert content.any()
    faeces = labels == LABELS["faeces"]
    if faeces.any():  # faeces fill the colon only: a wall or gas around them, never fat
        ring = ndimage.binary_dilation(faeces) & ~faeces
        assert np.isin(labels[ring], [LABELS[n] for n in ("visceral_fat", "fat")]).mean() < 0.05
