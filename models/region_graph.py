"""Region graphs of REACT-KD's region graph distillation (RGD).

REACT-KD: Region-Aware Cross-modal Topological Knowledge Distillation for Interpretable
Medical Image Classification (Chen et al.): nodes are anatomical regions, a node's feature is
the masked average of a network's feature map over its region, edges join touching regions,
and the student's intra-graph distances are aligned with the teacher's by Gromov-Wasserstein.

Label maps use 0 for "not a node" and 1..R for the nodes, with a fixed R per task so batches
stack; a node may be empty (its weight is then 0). Regions come from masks where they exist
(`mask_regions`) and from supervoxels of the foreground where they don't
(`supervoxel_regions`). Pure array code: NumPy/SciPy for label maps, torch for node features
and distances (differentiable), no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.cluster.vq import kmeans2, vq

from models.segmenter import liver_and_lesion

HCC_MAX_TUMOURS = 3
"""Tumour components kept as their own nodes, largest first; further ones join the last."""
HCC_SHELL_VOXELS = 3
"""Width of the peritumoral shell, in voxels of the mask grid (12 mm on the 4 mm grid)."""
HCC_LIVER_PARTS = 8
"""Liver parenchyma is split into the octants around its centroid."""
BRATS_RING_VOXELS = 4
"""Without a brain mask, BraTS normal tissue is this wide a ring around the tumour."""

REGION_NAMES: dict[str, tuple[str, ...]] = {
    "hcc": (
        *(f"tumour_{i + 1}" for i in range(HCC_MAX_TUMOURS)),
        "peritumoral_shell",
        *(f"liver_part_{i + 1}" for i in range(HCC_LIVER_PARTS)),
    ),
    "brats": ("necrotic", "edema", "enhancing", "normal"),
}
"""Node names in label order (label i + 1 is REGION_NAMES[task][i])."""

DEFAULT_SUPERVOXELS = 8

_SIX_CONNECTED = ndimage.generate_binary_structure(3, 1)


def num_regions(task_name: str) -> int:
    """The fixed number of mask-derived nodes of a task (labels 1..R)."""
    return len(_region_names(task_name))


def _region_names(task_name: str) -> tuple[str, ...]:
    try:
        return REGION_NAMES[task_name]
    except KeyError:
        raise ValueError(f"no region layout for task {task_name!r}; known: {sorted(REGION_NAMES)}") from None


# --------------------------------------------------------------------------- label maps


def mask_regions(task_name: str, masks: Mapping[str, np.ndarray]) -> np.ndarray:
    """A (D, H, W) int64 label map of the task's regions, on the masks' grid.

    hcc: masks {"liver": bool, "tumor": bool} (also "tumour"). Labels 1..3 tumour components
    (6-connected, largest first; components past the third join label 3), 4 the peritumoral
    shell (a `HCC_SHELL_VOXELS`-voxel dilation ring of the tumour inside the liver), 5..12
    the liver parenchyma split into octants around its centroid.

    brats: masks {"seg": int labels 0/1/2/4 (3 read as 1), "brain": bool (optional)}.
    Labels 1 necrotic/non-enhancing core, 2 edema, 3 enhancing, 4 normal tissue (brain minus
    tumour; without a brain mask, a `BRATS_RING_VOXELS`-voxel ring around the tumour).
    """
    _region_names(task_name)
    shapes = {name: np.shape(mask) for name, mask in masks.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"masks must share one grid, got shapes {shapes}")
    if any(len(shape) != 3 for shape in shapes.values()):
        raise ValueError(f"masks must be 3D (D, H, W), got shapes {shapes}")
    if task_name == "hcc":
        return _hcc_regions(masks)
    return _brats_regions(masks)


def regions_from_labels(task_name: str, labels: np.ndarray) -> np.ndarray:
    """`mask_regions` of ONE label map as the service receives masks (on the model grid).

    hcc: a LiTS-style map (liver 1, lesion the highest label) or a lesion-only binary map
    (`models.segmenter.liver_and_lesion`; without a liver, no parenchyma nodes). brats: the
    BraTS labels 1, 2, 4 themselves.
    """
    if task_name == "brats":
        return mask_regions(task_name, {"seg": np.where(np.isin(labels, (1, 2, 3, 4)), labels, 0)})
    liver, lesion = liver_and_lesion(labels)
    organ = liver if liver is not None else np.zeros(labels.shape, dtype=bool)
    return mask_regions(task_name, {"liver": organ, "tumor": lesion})


def region_name(task_name: str, region: int) -> str:
    """The name of region label `region` (1..R) of a task's mask regions."""
    return _region_names(task_name)[region - 1]


def _require(masks: Mapping[str, np.ndarray], *names: str) -> np.ndarray:
    for name in names:
        if name in masks:
            return np.asarray(masks[name])
    raise ValueError(f"mask {names[0]!r} is required, got masks {sorted(masks)}")


def _hcc_regions(masks: Mapping[str, np.ndarray]) -> np.ndarray:
    tumour = _require(masks, "tumor", "tumour").astype(bool)
    liver = _require(masks, "liver").astype(bool)
    labels = np.zeros(tumour.shape, dtype=np.int64)
    components, count = ndimage.label(tumour, structure=_SIX_CONNECTED)
    if count:
        sizes = np.bincount(components.ravel())[1:]
        order = np.argsort(-sizes, kind="stable")  # component index by size, largest first
        rank = np.empty(count, dtype=np.int64)
        rank[order] = np.arange(count)
        slot = np.minimum(rank, HCC_MAX_TUMOURS - 1) + 1
        labels[tumour] = slot[components[tumour] - 1]
    shell = ndimage.binary_dilation(tumour, _SIX_CONNECTED, iterations=HCC_SHELL_VOXELS) & ~tumour
    if liver.any():
        shell &= liver
    labels[shell] = HCC_MAX_TUMOURS + 1
    parenchyma = liver & ~tumour & ~shell
    if parenchyma.any():
        labels[parenchyma] = HCC_MAX_TUMOURS + 2 + _octant(parenchyma)
    return labels


def _octant(mask: np.ndarray) -> np.ndarray:
    """Octant index 0..7 of each voxel of `mask` around the mask's centroid."""
    coords = np.nonzero(mask)
    centre = [c.mean() for c in coords]
    return 4 * (coords[0] >= centre[0]) + 2 * (coords[1] >= centre[1]) + (coords[2] >= centre[2])


def _brats_regions(masks: Mapping[str, np.ndarray]) -> np.ndarray:
    seg = _require(masks, "seg").astype(np.int64)
    unknown = sorted(set(np.unique(seg).tolist()) - {0, 1, 2, 3, 4})
    if unknown:
        raise ValueError(f"seg holds labels {unknown} outside BraTS labels 0, 1, 2, 4")
    tumour = seg > 0
    if "brain" in masks:
        normal = np.asarray(masks["brain"]).astype(bool) & ~tumour
    else:
        ring = ndimage.binary_dilation(tumour, _SIX_CONNECTED, iterations=BRATS_RING_VOXELS)
        normal = ring & ~tumour
    labels = np.zeros(seg.shape, dtype=np.int64)
    labels[(seg == 1) | (seg == 3)] = 1
    labels[seg == 2] = 2
    labels[seg == 4] = 3
    labels[normal] = 4
    return labels


def foreground(image: np.ndarray, threshold: float = 1e-3) -> np.ndarray:
    """Voxels where any channel departs from the contract's zero background.

    image: (M, D, H, W) model input -> (D, H, W) bool.
    """
    return np.abs(np.asarray(image)).max(axis=0) > threshold


def supervoxel_regions(
    image: np.ndarray,
    n_regions: int = DEFAULT_SUPERVOXELS,
    mask: np.ndarray | None = None,
    intensity_weight: float = 0.5,
    max_samples: int = 20000,
    seed: int = 0,
) -> np.ndarray:
    """Split the foreground into `n_regions` compact supervoxels (labels 1..n, 0 outside).

    k-means over voxel coordinates (scaled to [0, 1] along the longest axis) and channel
    intensities times `intensity_weight`, fitted on at most `max_samples` voxels with a fixed
    seed and applied to all, so the same image always gives the same labels. Labels are
    ordered by centroid (z, then y, then x). A foreground smaller than `n_regions` voxels
    leaves the trailing labels empty.

    image: (M, D, H, W); mask: optional (D, H, W) bool foreground (default `foreground`).
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 4:
        raise ValueError(f"image must be (M, D, H, W), got shape {image.shape}")
    if isinstance(n_regions, bool) or not isinstance(n_regions, int) or n_regions < 1:
        raise ValueError(f"n_regions must be a positive integer, got n_regions={n_regions!r}")
    fg = foreground(image) if mask is None else np.asarray(mask, dtype=bool)
    if fg.shape != image.shape[1:]:
        raise ValueError(f"mask shape {fg.shape} differs from the image grid {image.shape[1:]}")
    labels = np.zeros(fg.shape, dtype=np.int64)
    coords = np.stack(np.nonzero(fg), axis=1).astype(np.float64)
    if len(coords) <= n_regions:
        labels[fg] = np.arange(1, len(coords) + 1)
        return labels
    points = np.concatenate(
        [coords / max(fg.shape), intensity_weight * image[:, fg].T.astype(np.float64)], axis=1
    )
    rng = np.random.default_rng(seed)
    sample = points[rng.choice(len(points), min(max_samples, len(points)), replace=False)]
    centroids, _ = kmeans2(sample, n_regions, minit="++", seed=seed)
    assignment, _ = vq(points, centroids)
    labels[fg] = _order_by_centroid(assignment, coords, n_regions) + 1
    return labels


def _order_by_centroid(assignment: np.ndarray, coords: np.ndarray, n: int) -> np.ndarray:
    """Relabel clusters 0..n-1 by the (z, y, x) order of their centroids (empty ones last)."""
    counts = np.bincount(assignment, minlength=n)
    sums = np.stack([np.bincount(assignment, coords[:, a], minlength=n) for a in range(3)], axis=1)
    centres = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], np.inf)
    order = np.lexsort((centres[:, 2], centres[:, 1], centres[:, 0]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    return rank[assignment]


# --------------------------------------------------------------------------- graphs


def region_fractions(labels: torch.Tensor, num_regions: int, size: tuple[int, ...]) -> torch.Tensor:
    """Share of each feature voxel that belongs to each region.

    One-hot label maps (N, R, D, H, W) are area-averaged onto the feature grid `size`
    (adaptive average pooling; nearest upsampling on axes where the label grid is coarser),
    so a feature voxel straddling two regions counts for both in proportion.
    labels: (N, D, H, W) int -> (N, R, *size) float in [0, 1].
    """
    if labels.dim() != 4:
        raise ValueError(f"labels must be (N, D, H, W), got shape {tuple(labels.shape)}")
    onehot = F.one_hot(labels.long().clamp(0, num_regions), num_regions + 1)[..., 1:]
    onehot = onehot.permute(0, 4, 1, 2, 3).float()
    if tuple(onehot.shape[2:]) == tuple(size):
        return onehot
    if any(s > g for s, g in zip(size, onehot.shape[2:], strict=True)):
        onehot = F.interpolate(onehot, size=size, mode="nearest")
    return F.adaptive_avg_pool3d(onehot, size)  # type: ignore[arg-type]


def node_features(
    features: torch.Tensor, labels: torch.Tensor, num_regions: int, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked average of `features` over each region (differentiable in `features`).

    Labels are brought onto the feature grid by area averaging (`region_fractions`); the
    features are not resampled. Empty regions get a zero node vector and weight 0.

    Args:
        features: (N, F, d, h, w).
        labels: (N, D, H, W) int, 0 = not a node, 1..num_regions the nodes.
    Returns:
        nodes (N, R, F) and weights (N, R): each region's share of the labelled voxels
        (counted on the label grid), summing to 1 when any region is non-empty.
    """
    if features.dim() != 5:
        raise ValueError(f"features must be (N, F, d, h, w), got shape {tuple(features.shape)}")
    if labels.shape[0] != features.shape[0]:
        raise ValueError(f"batch sizes differ: features {features.shape[0]}, labels {labels.shape[0]}")
    if isinstance(num_regions, bool) or not isinstance(num_regions, int) or num_regions < 1:
        raise ValueError(f"num_regions must be a positive integer, got num_regions={num_regions!r}")
    labels = labels.to(features.device)
    fractions = region_fractions(labels, num_regions, tuple(features.shape[2:])).to(features.dtype)
    fractions = fractions.flatten(2)  # (N, R, S)
    sums = torch.einsum("nrs,nfs->nrf", fractions, features.flatten(2))
    nodes = sums / fractions.sum(dim=-1, keepdim=True).clamp_min(eps)
    counts = torch.stack([(labels == r).flatten(1).sum(dim=1) for r in range(1, num_regions + 1)], dim=1)
    counts = counts.to(features.dtype)
    weights = counts / counts.sum(dim=1, keepdim=True).clamp_min(1.0)
    return nodes, weights


def adjacency(labels: np.ndarray | torch.Tensor, num_regions: int) -> np.ndarray:
    """(R, R) bool: regions i + 1 and j + 1 share a face (6-connectivity); diagonal False.

    labels: ONE label map of any number of spatial axes, e.g. (D, H, W).
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    adj = np.zeros((num_regions, num_regions), dtype=bool)
    for axis in range(labels.ndim):
        a = np.moveaxis(labels, axis, 0)[:-1].ravel()
        b = np.moveaxis(labels, axis, 0)[1:].ravel()
        keep = (a != b) & (a > 0) & (b > 0) & (a <= num_regions) & (b <= num_regions)
        adj[a[keep] - 1, b[keep] - 1] = True
    adj |= adj.T
    np.fill_diagonal(adj, False)
    return adj


def distance_matrix(nodes: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine distances between the nodes of each graph (differentiable).

    nodes: (N, R, F) -> (N, R, R), symmetric, zero diagonal, values in [0, 2]. A zero node
    (an empty region) is at distance 1 from every other node.
    """
    if nodes.dim() != 3:
        raise ValueError(f"nodes must be (N, R, F), got shape {tuple(nodes.shape)}")
    unit = F.normalize(nodes, dim=-1, eps=eps)
    distances = (1.0 - unit @ unit.transpose(1, 2)).clamp(0.0, 2.0)
    distances = 0.5 * (distances + distances.transpose(1, 2))
    eye = torch.eye(nodes.shape[1], dtype=nodes.dtype, device=nodes.device)
    return distances * (1.0 - eye)
