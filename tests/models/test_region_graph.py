from __future__ import annotations

import numpy as np
import pytest
import torch

from models.region_graph import (
    HCC_MAX_TUMOURS,
    adjacency,
    distance_matrix,
    mask_regions,
    node_features,
    num_regions,
    supervoxel_regions,
)

GRIDS = [(16, 32, 32), (24, 40, 32)]


def _liver_with_tumours(grid: tuple[int, int, int], tumours: int) -> dict[str, np.ndarray]:
    liver = np.zeros(grid, dtype=bool)
    liver[2:-2, 4:-4, 4:-4] = True
    tumour = np.zeros(grid, dtype=bool)
    corners = [(4, 8, 8), (4, 8, 20), (10, 20, 8), (10, 20, 20)]
    for i, (z, y, x) in enumerate(corners[:tumours]):
        size = 4 - i  # distinct sizes, largest first
        tumour[z : z + size, y : y + size, x : x + size] = True
    return {"liver": liver, "tumor": tumour}


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("tumours", [1, 2, 4])
def test_hcc_mask_regions(grid: tuple[int, int, int], tumours: int) -> None:
    masks = _liver_with_tumours(grid, tumours)
    labels = mask_regions("hcc", masks)
    assert labels.shape == grid and labels.dtype == np.int64
    assert labels.max() <= num_regions("hcc") == 12
    kept = min(tumours, HCC_MAX_TUMOURS)
    present = set(np.unique(labels).tolist()) - {0}
    assert present == {*range(1, kept + 1), 4, *range(5, 13)}
    sizes = [(labels == i).sum() for i in range(1, kept + 1)]
    assert sizes[0] == 64  # the 4x4x4 tumour is node 1
    assert (labels[masks["tumor"]] <= HCC_MAX_TUMOURS).all()  # every tumour voxel is a tumour node
    assert not (labels[~masks["liver"]] > 0).any()  # shell stays inside the liver


def test_brats_mask_regions_with_and_without_brain() -> None:
    seg = np.zeros((16, 32, 32), dtype=np.int16)
    seg[6:10, 10:14, 10:14] = 2
    seg[7:9, 11:13, 11:13] = 4
    seg[8, 12, 12] = 1
    brain = np.zeros(seg.shape, dtype=bool)
    brain[2:14, 4:28, 4:28] = True
    labels = mask_regions("brats", {"seg": seg, "brain": brain})
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3, 4}
    assert (labels == 1).sum() == 1 and (labels == 4).sum() == brain.sum() - (seg > 0).sum()
    ring = mask_regions("brats", {"seg": seg})
    assert 0 < (ring == 4).sum() < (labels == 4).sum()


@pytest.mark.parametrize(
    ("task", "masks", "message"),
    [
        ("lung", {}, "'lung'"),
        ("hcc", {"liver": np.zeros((4, 4, 4), bool)}, "'tumor'"),
        ("hcc", {"liver": np.zeros((4, 4, 4), bool), "tumor": np.zeros((4, 4, 5), bool)}, r"\(4, 4, 5\)"),
        ("brats", {"seg": np.full((4, 4, 4), 7)}, r"\[7\]"),
    ],
)
def test_mask_regions_errors(task: str, masks: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mask_regions(task, masks)


@pytest.mark.parametrize("grid", GRIDS)
def test_supervoxels_cover_the_foreground(grid: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((2, *grid), dtype=np.float32)
    image[:, 2:-2, 3:-3, 3:-3] = rng.random((2, grid[0] - 4, grid[1] - 6, grid[2] - 6)) + 0.5
    labels = supervoxel_regions(image, 6)
    assert labels.shape == grid
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3, 4, 5, 6}
    assert ((labels > 0) == (np.abs(image).max(0) > 1e-3)).all()
    np.testing.assert_array_equal(labels, supervoxel_regions(image, 6))  # deterministic
    with pytest.raises(ValueError, match="n_regions=0"):
        supervoxel_regions(image, 0)


def test_supervoxels_of_a_tiny_foreground() -> None:
    image = np.zeros((1, 4, 4, 4), dtype=np.float32)
    image[0, 1, 1, 1:3] = 1.0
    labels = supervoxel_regions(image, 8)
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]


def test_node_features_equal_masked_means_and_are_differentiable() -> None:
    features = torch.randn(1, 5, 4, 6, 6, requires_grad=True)
    labels = torch.zeros(1, 4, 6, 6, dtype=torch.int64)
    labels[0, :2, :3] = 1
    labels[0, 2:, 3:, 2:] = 2
    nodes, weights = node_features(features, labels, 3)
    assert nodes.shape == (1, 3, 5) and weights.shape == (1, 3)
    for r in (1, 2):
        mask = labels[0] == r
        torch.testing.assert_close(nodes[0, r - 1], features[0][:, mask].mean(dim=1))
    torch.testing.assert_close(nodes[0, 2], torch.zeros(5))  # empty region
    total = (labels > 0).sum()
    torch.testing.assert_close(
        weights[0], torch.stack([(labels == r).sum() / total for r in (1, 2, 3)]).float()
    )
    nodes.sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_node_features_area_average_labels_onto_a_coarser_grid() -> None:
    features = torch.arange(2.0).reshape(1, 1, 2, 1, 1)  # value 0 in the top half, 1 below
    labels = torch.zeros(1, 4, 2, 2, dtype=torch.int64)
    labels[0, :3] = 1  # 3 of 4 slices: all of the top half, half of the bottom one
    nodes, weights = node_features(features, labels, 1)
    assert nodes.item() == pytest.approx(1 / 3)  # (2 * 0 + 1 * 1) / 3 of feature-voxel share
    assert weights.item() == pytest.approx(1.0)


def test_adjacency_of_two_touching_cubes() -> None:
    labels = np.zeros((6, 6, 8), dtype=np.int64)
    labels[1:4, 1:4, 1:4] = 1
    labels[1:4, 1:4, 4:7] = 2  # shares the face x = 3 | 4
    labels[5, 5, 7] = 3  # touches neither (corner away)
    adj = adjacency(labels, 3)
    expected = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(adj, expected)
    diagonal_only = np.zeros((2, 2, 2), dtype=np.int64)
    diagonal_only[0, 0, 0], diagonal_only[1, 1, 1] = 1, 2
    assert not adjacency(torch.from_numpy(diagonal_only), 2).any()


def test_distance_matrix_is_symmetric_with_zero_diagonal() -> None:
    nodes = torch.randn(3, 6, 8, requires_grad=True)
    distances = distance_matrix(nodes)
    assert distances.shape == (3, 6, 6)
    torch.testing.assert_close(distances, distances.transpose(1, 2))
    torch.testing.assert_close(torch.diagonal(distances, dim1=1, dim2=2), torch.zeros(3, 6))
    assert distances.min() >= 0 and distances.max() <= 2
    distances.sum().backward()
    assert torch.isfinite(nodes.grad).all()
    same = distance_matrix(torch.ones(1, 3, 4))
    torch.testing.assert_close(same, torch.zeros(1, 3, 3))


@pytest.mark.parametrize("tumours", [1, 4])
def test_training_and_serving_build_one_region_map_from_one_mask(tumours: int) -> None:
    """The trainer's regions of a batch (`training.train.region_labels`, masks as the dataset
    gives them) and the service's of the same mask as one label map (`regions_from_labels`,
    as `app.explain.graph` calls it) are the same map: one function under both."""
    from models.region_graph import regions_from_labels
    from models.tasks import HCC
    from training.train import region_labels

    masks = _liver_with_tumours(GRIDS[1], tumours)
    batch = {
        "image": torch.zeros(1, 1, *GRIDS[1]),
        "masks": {name: torch.from_numpy(mask[None]) for name, mask in masks.items()},
    }
    trained, count = region_labels(batch, HCC, "masks")
    labels = masks["liver"].astype(np.uint8)
    labels[masks["tumor"]] = 2  # a LiTS-style map, as a client or the segmenter sends it
    served = regions_from_labels("hcc", labels)
    assert count == num_regions("hcc")
    np.testing.assert_array_equal(trained[0].numpy(), served)
    assert len(np.unique(served)) > 1 + min(tumours, HCC_MAX_TUMOURS)  # tumours, shell and liver parts
