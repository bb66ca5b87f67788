"""The segmenter's contract: grids, cleaning of its argmax, what a mask says, the cascade."""

from __future__ import annotations

import numpy as np
import pytest

from models.contract import Grid, Volume, to_tensor_layout
from models.registry import model_from_checkpoint
from models.segmenter import (
    coarse_grid,
    fine_grid,
    get_segmenter_spec,
    labels_from_probabilities,
    mask_on_grid,
    normalize_intensity,
    segment,
    segmenter_input,
    sliding_window,
    spec_of_card,
    summarize,
    weigh_lesion,
)
from tests.band_segmenter import band_checkpoints
from tests.common import ct_volume

SPEC = get_segmenter_spec("hcc")


def grid(shape: tuple[int, int, int] = (20, 20, 20), spacing: float = 3.0) -> Grid:
    return Grid(shape=shape, affine=np.diag([spacing, spacing, spacing, 1.0]))


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.stack([labels == k for k in range(3)]).astype(np.float32)


def test_cleaning_keeps_one_organ_and_only_lesions_inside_it() -> None:
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:14, 2:14, 2:14] = 1  # the organ
    labels[5:9, 5:9, 5:9] = 2  # a lesion in it (1.7 ml at 3 mm)
    labels[17:19, 17:19, 17:19] = 1  # a small second blob: not the organ
    labels[0, 19, 0] = 2  # a lesion voxel outside the organ
    labels[2, 2, 2] = 2  # a speck inside it: under min_lesion_ml
    cleaned = labels_from_probabilities(one_hot(labels), SPEC, grid())
    assert not cleaned[17:, 17:, 17:].any() and cleaned[0, 19, 0] == 0 and cleaned[2, 2, 2] == 1
    assert (cleaned == 2).sum() == 64 and (cleaned > 0).sum() == 12**3


def test_a_lesion_threshold_is_a_prior_shift_every_later_rule_reads_at_one_half() -> None:
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet([1.0, 1.0, 1.0], size=(8, 8, 8)).transpose(3, 0, 1, 2).astype(np.float32)
    for threshold in (0.1, 0.3, 0.7):
        weighed = weigh_lesion(probabilities, threshold)
        assert np.allclose(weighed.sum(axis=0), 1.0, atol=1e-5)
        assert np.array_equal(weighed[2] >= 0.5, probabilities[2] >= threshold)
        # background and liver keep their ratio: only the lesion's odds moved
        assert np.allclose(weighed[0] * probabilities[1], weighed[1] * probabilities[0], atol=1e-6)
    assert weigh_lesion(probabilities, None) is probabilities
    # A faint lesion (0.35 against the liver's 0.45) is lesion at a threshold of 0.3, not by argmax.
    faint = one_hot(np.ones((20, 20, 20), np.uint8))
    faint[:, 8:12, 8:12, 8:12] = np.array([0.2, 0.45, 0.35])[:, None, None, None]
    assert not (labels_from_probabilities(faint, SPEC, grid()) == 2).any()
    cleaned = labels_from_probabilities(weigh_lesion(faint, 0.3), SPEC, grid())
    assert (cleaned == 2).sum() == 64


def test_the_card_sets_the_lesion_threshold_and_refuses_what_is_no_probability() -> None:
    assert spec_of_card({"task": "hcc"}).lesion_threshold is None
    assert spec_of_card({"task": "hcc", "lesion_threshold": 0.3}).lesion_threshold == 0.3
    for bad in (0.0, 1.5, "0.3"):
        with pytest.raises(ValueError, match="lesion_threshold"):
            spec_of_card({"task": "hcc", "lesion_threshold": bad})


def test_a_summary_says_volumes_centre_and_where_the_scan_cuts_the_organ() -> None:
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[10:20, 2:14, 2:14] = 1  # reaches the top slice (D is z, superior last)
    labels[12:16, 5:9, 5:9] = 2
    summary = summarize(labels, grid())
    assert summary.organ_ml == pytest.approx(10 * 12 * 12 * 27 / 1000)
    assert summary.lesion_ml == pytest.approx(64 * 27 / 1000) and summary.lesions == 1
    assert summary.lesion_center_mm == pytest.approx((6.5 * 3, 6.5 * 3, 13.5 * 3))
    assert summary.organ_cut == ("top",) and summary.organ_cut_area_cm2 == pytest.approx(144 * 9 / 100)
    assert not summary.lesion_cut
    # A scan that starts at x = 3 voxels: its side face runs through the organ.
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[0, 3] = 9.0
    assert "side" in summarize(labels, grid(), Volume(np.zeros((17, 20, 20), np.float32), affine)).organ_cut


def test_a_mask_on_fewer_frames_than_the_scan_is_not_cut_by_its_own_edge() -> None:
    """A SEG keeps only the frames it draws on: its first and last frame are not the scan's."""
    labels = np.zeros((4, 20, 20), np.uint8)
    labels[:, 5:9, 5:9] = 2  # a lesion on all four frames of the SEG
    frames = np.diag([3.0, 3.0, 3.0, 1.0])
    frames[2, 3] = 30.0  # the frames lie at z = 30..39 mm
    scan = Volume(np.zeros((20, 20, 40), np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))
    assert not summarize(labels, Grid((20, 20, 4), frames), scan).lesion_cut
    assert summarize(labels, Grid((20, 20, 4), frames)).lesion_cut  # no scan: the grid's faces


def test_a_binary_mask_is_the_lesion_alone() -> None:
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[5:9, 5:9, 5:9] = 1
    summary = summarize(labels, grid())
    assert summary.organ_ml is None and summary.lesion_ml == pytest.approx(64 * 27 / 1000)


def test_the_coarse_grid_covers_the_scan_at_the_stage_spacing() -> None:
    ct = ct_volume()  # 32 x 32 x 16 voxels of 8 mm
    g = coarse_grid(ct, SPEC)
    assert np.allclose(np.abs(np.diag(g.affine)[:3]), SPEC.coarse.spacing_mm)
    prepared = segmenter_input(ct, SPEC, g)
    assert (
        prepared.image.shape == (1, *g.shape[::-1]) and 0 <= prepared.image.min() <= prepared.image.max() <= 1
    )
    assert prepared.scanned.mean() > 0.5


def test_the_fine_grid_covers_the_larger_part_of_an_organ_too_long_to_be_one() -> None:
    # A 180 mm liver joined by a thin bridge to a smaller blob below: 360 mm in all, more
    # than the fine grid holds (192 voxels of 1.5 mm less its margins).
    organ = np.zeros((40, 40, 140), dtype=bool)  # (x, y, z) voxels of 3 mm
    organ[5:35, 5:35, 70:130] = True  # the liver, on top
    organ[18:22, 18:22, 40:70] = True  # the bridge
    organ[12:28, 12:28, 10:40] = True  # the neighbour
    coarse = grid((40, 40, 140))
    fine = fine_grid(to_tensor_layout(organ), coarse, SPEC)
    low, high = box_of(fine)
    assert fine.shape[2] == SPEC.fine.max_shape[2]
    assert low[2] <= 70 * 3 - 1.5 and high[2] >= 130 * 3 - 1.5  # the whole liver, to its top
    assert low[0] <= 5 * 3 - 1.5 and high[0] >= 35 * 3 - 1.5
    # An organ that fits is covered whole, centred on its box.
    liver_only = np.where(np.arange(140) >= 70, organ, False)
    low, high = box_of(fine_grid(to_tensor_layout(liver_only), coarse, SPEC))
    assert (low[2] + high[2]) / 2 == pytest.approx((70 * 3 + 130 * 3) / 2 - 1.5, abs=1.0)


def box_of(g: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest corner (mm) of an axis-aligned grid's voxels, edges included."""
    spacing = np.diag(g.affine)[:3]
    low = g.affine[:3, 3] - spacing / 2
    return low, low + np.asarray(g.shape) * spacing


def test_sliding_window_covers_a_grid_larger_than_its_window() -> None:
    def predict(x):  # type: ignore[no-untyped-def]
        import torch

        return torch.cat([torch.zeros_like(x), x, -x], dim=1)

    image = np.random.default_rng(0).random((1, 100, 40, 130)).astype(np.float32)
    probabilities = sliding_window(predict, image, SPEC.coarse)
    assert probabilities.shape == (3, 100, 40, 130)
    assert np.allclose(probabilities.sum(axis=0), 1, atol=1e-5)


def test_the_cascade_finds_the_phantoms_liver_and_lesion() -> None:
    ct = ct_volume()
    predictors = {name: model_from_checkpoint(c) for name, c in band_checkpoints().items()}
    segmentation = segment(predictors, ct, SPEC)
    assert np.allclose(np.abs(np.diag(segmentation.grid.affine)[:3]), SPEC.fine.spacing_mm)
    from tests.app.app_helpers import liver_lesion_mask

    truth, _ = liver_lesion_mask(ct)
    expected = mask_on_grid(truth, segmentation.grid)
    for label in (1, 2):
        a, b = segmentation.labels >= label, expected >= label
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.85, label
    assert segmentation.summary.lesions == 1 and not segmentation.summary.organ_cut
    back = segmentation.as_volume()
    assert isinstance(back, Volume) and back.array.shape == segmentation.grid.shape


def test_a_segmenters_map_is_read_as_organ_and_lesion_even_without_a_lesion() -> None:
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[4:12, 4:12, 4:12] = 1  # a liver, no lesion
    as_segmenter = summarize(labels, grid(), organ_labelled=True)
    assert as_segmenter.organ_ml == pytest.approx(512 * 27 / 1000) and as_segmenter.lesion_ml == 0.0
    as_client = summarize(labels, grid())  # a client's binary map is the lesion alone
    assert as_client.organ_ml is None and as_client.lesion_ml == pytest.approx(512 * 27 / 1000)


def test_the_input_reaches_the_scans_faces_and_is_air_beyond() -> None:
    """An organ the scan cuts keeps its intensity up to the face (no blend with the air
    beyond, which would make the organ fade before the cut); past the face it is air."""
    array = np.full((40, 40, 10), 60.0, np.float32)  # soft tissue to the top slice
    scan = Volume(array, np.diag([6.0, 6.0, 6.0, 1.0]))
    affine = np.array([[6.0, 0, 0, 60], [0, 6.0, 0, 60], [0, 0, 1.5, -6], [0, 0, 0, 1]])
    on = Grid(shape=(20, 20, 48), affine=affine)
    prepared = segmenter_input(scan, SPEC, on)
    z_mm = -6 + 1.5 * np.arange(48)  # the scan covers -3 .. 57 mm
    column = prepared.image[0, :, 10, 10]
    tissue = normalize_intensity(np.array([60.0]), SPEC)[0]
    assert np.allclose(column[(z_mm > -3) & (z_mm < 57)], tissue, atol=1e-5)
    assert np.allclose(column[(z_mm < -3) | (z_mm > 57)], normalize_intensity(np.array([-1000.0]), SPEC)[0])
    assert np.array_equal(prepared.scanned[:, 10, 10], (z_mm >= -3) & (z_mm <= 57))
