"""The BraTS segmenter's rules on arrays whose answer is known: nested labels and BraTS'
values, one whole tumour, specks of enhancement, any subset of the sequences as channels,
and labels brought onto another grid region by region."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from models.contract import Grid, Volume, from_tensor_layout, to_tensor_layout
from models.segmenter import (
    get_segmenter_spec,
    labels_from_probabilities,
    labels_ml,
    labels_on_grid,
    segmenter_input,
)

SPEC = get_segmenter_spec("brats")
GRID = Grid(shape=(40, 40, 40), affine=np.diag([2.5, 2.5, 2.5, 1.0]))


def one_hot(labels: np.ndarray) -> np.ndarray:
    """Probabilities (L, D, H, W) that say `labels` with 0.9."""
    out = np.full((SPEC.num_labels, *labels.shape), 0.1 / (SPEC.num_labels - 1), dtype=np.float32)
    for k in range(SPEC.num_labels):
        out[k][labels == k] = 0.9
    return out


def ball(shape: tuple[int, ...], centre: tuple[int, ...], radius: float) -> np.ndarray:
    axes = np.indices(shape)
    return sum((a - c) ** 2 for a, c in zip(axes, centre, strict=True)) <= radius**2


def glioma(shape: tuple[int, int, int] = (40, 40, 40)) -> np.ndarray:
    """Label indices of a tumour: edema (1) around a core (2) with an enhancing rim (3)."""
    labels = np.zeros(shape, dtype=np.uint8)
    labels[ball(shape, (20, 20, 20), 12)] = 1
    labels[ball(shape, (20, 20, 20), 7)] = 3
    labels[ball(shape, (20, 20, 20), 5)] = 2
    return labels


def test_brats_values_map_to_nested_label_indices_and_back() -> None:
    assert SPEC.labels == ("background", "edema", "necrotic", "enhancing") and SPEC.stages == ("coarse",)
    values = np.array([0, 1, 2, 4, 7, 3])
    indices = SPEC.label_indices(values)
    assert indices.tolist() == [0, 2, 1, 3, 0, 2]  # unknown: background; BraTS 2017's 3: 1
    assert SPEC.label_values()[indices[:4]].tolist() == [0, 1, 2, 4]
    # Nested: label k or above is whole tumour, tumour core, enhancing tumour.
    assert SPEC.regions == ("whole_tumour", "tumour_core", "enhancing_tumour")


def test_one_whole_tumour_is_kept_and_enhancing_specks_become_core() -> None:
    labels = glioma()
    labels[2:4, 2:4, 2:4] = 1  # a far speck of "edema": not the tumour
    speck = ball(labels.shape, (20, 20, 31), 1.0)  # 7 voxels of "enhancement" (0.11 ml)
    labels[speck] = 3
    cleaned = labels_from_probabilities(one_hot(labels), replace(SPEC, min_lesion_ml=0.2), GRID)
    assert not cleaned[2:4, 2:4, 2:4].any()
    assert (cleaned[speck] == 2).all()  # the label before enhancing: the core
    assert (cleaned[glioma() == 3] == 3).all() and (cleaned[glioma() == 2] == 2).all()


def test_the_segmenter_reads_any_subset_of_the_sequences_as_channels() -> None:
    rng = np.random.default_rng(0)
    head = ball((48, 48, 40), (24, 24, 20), 18).astype(np.float32)
    t1ce = Volume(head * rng.uniform(400, 800, head.shape).astype(np.float32), np.diag([4.0, 4.0, 4.0, 1.0]))
    prepared = segmenter_input({"t1ce": t1ce}, SPEC)
    assert prepared.image.shape[0] == 4 and prepared.reference == 1
    assert [bool(np.any(c)) for c in prepared.image] == [False, True, False, False]
    inside = prepared.image[1][prepared.scanned & (prepared.image[1] != 0)]
    assert abs(float(inside.mean())) < 0.2  # z-scored over the head
    picture = prepared.picture()
    assert picture.min() >= 0.0 and picture.max() <= 1.0
    assert prepared.grid.spacing == pytest.approx(SPEC.coarse.spacing_mm)
    with pytest.raises(ValueError, match="reads"):
        segmenter_input({"ct": t1ce}, SPEC)


def test_labels_on_another_grid_keep_the_nesting_region_by_region() -> None:
    labels = glioma()
    # The same world on a grid of half the voxel size, shifted by half a coarse voxel.
    affine = np.diag([1.25, 1.25, 1.25, 1.0])
    affine[:3, 3] = 0.625
    target = Grid(shape=(80, 80, 80), affine=affine)
    on_target = to_tensor_layout(labels_on_grid(one_hot(labels), labels, GRID, target))
    coarse = from_tensor_layout(labels)
    assert set(np.unique(on_target).tolist()) == {0, 1, 2, 3}
    # Each region's volume is kept within a few percent at twice the resolution.
    for k in (1, 2, 3):
        assert (on_target >= k).sum() * 1.25**3 == pytest.approx((coarse >= k).sum() * 2.5**3, rel=0.12)
    volumes = labels_ml(labels, GRID, SPEC)
    assert list(volumes) == ["edema", "necrotic", "enhancing"]
    assert sum(volumes.values()) == pytest.approx(float((labels > 0).sum()) * 2.5**3 / 1000)
