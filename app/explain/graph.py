"""Region-graph (topology) explanation of one prediction.

Regions live on the feature grid: the uploaded mask's labels (nearest-neighbour resampled)
when a mask was sent, else supervoxels of the foreground (the reference channel split into
up to 2x2x2 spatial parts of its bounding box, so each node is a compact region). A node's
feature is the masked average of `features`; its contribution is the mean Grad-CAM of the
predicted class over it (the CAM weight of the node); edges join regions that touch (6-
neighbourhood). The graph's intra-graph distances (Euclidean between node features) are
compared by Gromov-Wasserstein (POT) with each class prototype in the model card.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from app.explain.case import Case
from app.schemas import GraphEdge, GraphNode
from models.contract import from_tensor_layout, resample, to_tensor_layout


def feature_grid_regions(case: Case) -> tuple[np.ndarray, str]:
    """Integer labels ``[d, h, w]`` on the feature grid (0 = background), and their source."""
    shape_dhw = case.outputs["features"].shape[1:]
    coarse = case.grid.with_shape(tuple(reversed(shape_dhw)))  # type: ignore[arg-type]
    if case.mask is not None:
        labels = resample(case.mask.array.astype(np.float32), case.mask.affine, coarse, order=0)
        labels = to_tensor_layout(np.rint(labels).astype(np.int32))
        if labels.max() > 0:
            return labels, "mask"
    image = case.image[case.reference_channel]
    zoom = [t / s for t, s in zip(shape_dhw, image.shape, strict=True)]
    foreground = ndimage.zoom(image, zoom, order=1, grid_mode=True, mode="nearest") > 0.05
    if not foreground.any():
        foreground[...] = True
    return _octants(foreground), "supervoxels"


def _octants(foreground: np.ndarray) -> np.ndarray:
    idx = np.nonzero(foreground)
    lo = [int(i.min()) for i in idx]
    hi = [int(i.max()) + 1 for i in idx]
    labels = np.zeros(foreground.shape, dtype=np.int32)
    grids = np.meshgrid(*(np.arange(s) for s in foreground.shape), indexing="ij")
    code = np.zeros(foreground.shape, dtype=np.int32)
    for axis, grid in enumerate(grids):
        mid = (lo[axis] + hi[axis]) / 2.0
        code = code * 2 + (grid >= mid).astype(np.int32)
    labels[foreground] = code[foreground] + 1
    # Renumber 1..R without gaps.
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int32)


def build_graph(
    case: Case, cam: np.ndarray | None
) -> tuple[list[GraphNode], list[GraphEdge], np.ndarray, np.ndarray, str]:
    labels, source = feature_grid_regions(case)
    features = case.outputs["features"]  # [F, d, h, w]
    attention = case.outputs["attention"][0]
    coarse = case.grid.with_shape(tuple(reversed(labels.shape)))  # type: ignore[arg-type]
    voxel_ml = float(np.prod(coarse.spacing)) / 1000.0
    labels_xyz = from_tensor_layout(labels)
    nodes, vectors, sizes = [], [], []
    region_ids = [int(r) for r in np.unique(labels) if r > 0]
    for n, region in enumerate(region_ids):
        inside = labels == region
        ijk = np.argwhere(labels_xyz == region).mean(axis=0)
        centroid = (coarse.affine @ np.append(ijk, 1.0))[:3]
        contribution = float(cam[inside].mean()) if cam is not None else float(attention[inside].mean())
        nodes.append(
            GraphNode(
                id=n,
                label=f"{source[:-1]} {region}",
                centroid_mm=[round(float(c), 2) for c in centroid],
                volume_ml=round(float(inside.sum()) * voxel_ml, 3),
                mean_attention=float(attention[inside].mean()),
                contribution=contribution,
            )
        )
        vectors.append(features[:, inside].mean(axis=1))
        sizes.append(float(inside.sum()))
    edges = []
    for a, ra in enumerate(region_ids):
        grown = ndimage.binary_dilation(labels == ra)
        for b in range(a + 1, len(region_ids)):
            touching = int((grown & (labels == region_ids[b])).sum())
            if touching:
                edges.append(GraphEdge(source=a, target=b, weight=float(touching)))
    vectors_arr = np.asarray(vectors, dtype=np.float64).reshape(len(vectors), -1)
    distances = np.linalg.norm(vectors_arr[:, None] - vectors_arr[None], axis=-1)
    weights = np.asarray(sizes) / max(sum(sizes), 1.0)
    return nodes, edges, distances, weights, source


def prototype_distances(
    distances: np.ndarray, weights: np.ndarray, prototypes: dict[str, Any]
) -> dict[str, float]:
    """GW distance of the case graph to each class prototype graph (scale-normalised)."""
    import ot

    out = {}
    case_d = distances / max(float(distances.max()), 1e-12)
    for name, proto in prototypes.items():
        d = np.asarray(proto["distances"], dtype=np.float64)
        w = np.asarray(proto["weights"], dtype=np.float64)
        d = d / max(float(d.max()), 1e-12)
        w = w / w.sum()
        out[name] = float(ot.gromov.gromov_wasserstein2(case_d, d, weights, w, loss_fun="square_loss"))
    return out
