"""Region-graph (topology) explanation of one prediction.

Regions are the uploaded mask's labels when a mask was sent, else supervoxels of the
foreground; both on the model grid, built by `models.topology` exactly as training built
the class prototypes in the model card. A node's feature is the masked average of the
network's last-stage features; its contribution is the mean Grad-CAM of the predicted
class over it (mean attention when no weights are shipped); edges join touching regions.
The graph is compared by Gromov-Wasserstein (POT) with each class prototype.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from app.explain.case import Case
from app.schemas import GraphEdge, GraphNode
from models.contract import resample, to_tensor_layout
from models.topology import CaseGraph, case_graph, graph_of, gw_distance, region_means


def case_regions(case: Case) -> tuple[np.ndarray, CaseGraph, str]:
    """Labels (D, H, W) on the model grid, the case's graph, and where the regions came from."""
    features = case.outputs["features"]
    if case.mask is not None:
        on_grid = resample(case.mask.array.astype(np.float32), case.mask.affine, case.grid, order=0)
        labels = to_tensor_layout(np.rint(on_grid).astype(np.int64))
        if labels.max() > 0:
            return labels, graph_of(features, labels, int(labels.max())), "mask"
    labels, graph = case_graph(case.image, features)
    return labels, graph, "supervoxels"


def build_graph(
    case: Case, cam: np.ndarray | None
) -> tuple[list[GraphNode], list[GraphEdge], CaseGraph, str]:
    labels, graph, source = case_regions(case)
    attention = region_means(case.outputs["attention"][0], labels, graph.regions)
    contribution = region_means(cam, labels, graph.regions) if cam is not None else attention
    voxel_ml = float(np.prod(case.grid.spacing)) / 1000.0
    nodes = []
    for n, region in enumerate(graph.regions):
        dhw = np.argwhere(labels == region).mean(axis=0)
        centroid = (case.grid.affine @ np.append(dhw[::-1], 1.0))[:3]  # (d, h, w) -> (x, y, z)
        nodes.append(
            GraphNode(
                id=n,
                label=f"{'region' if source == 'mask' else 'supervoxel'} {region}",
                centroid_mm=[round(float(c), 2) for c in centroid],
                volume_ml=round(float((labels == region).sum()) * voxel_ml, 3),
                mean_attention=float(attention[n]),
                contribution=float(contribution[n]),
            )
        )
    edges = [
        GraphEdge(source=a, target=b, weight=float(graph.distances[a, b]))
        for a, b in zip(*np.nonzero(np.triu(graph.edges)), strict=True)
    ]
    return nodes, edges, graph, source


def prototype_distances(graph: CaseGraph, prototypes: dict[str, Any]) -> dict[str, float]:
    """GW distance of the case graph to each class prototype graph."""
    return {name: gw_distance(graph.distances, graph.weights, proto) for name, proto in prototypes.items()}
