"""Region-graph (topology) explanation of one prediction.

Regions are anatomical: the mask the grade used (the segmenter's, or the client's) is split
into tumour components, a peritumoral shell and liver parts (BraTS: its sub-regions) on the
model grid by `models.region_graph.regions_from_labels`, the function training uses. Only a
prediction without any mask falls back to supervoxels, and says so. A node's feature is
the masked average of the network's last-stage features; edges join touching regions; the
graph is compared by Gromov-Wasserstein (POT) with each class prototype of the card.

A node's contribution is checkable: the integrated-gradients attribution of the predicted
class's logit summed over the region's voxels, in logit units. Over every voxel the sums add
up to the logit's rise from the baseline (the input blurred, `app.explain.attribution`) to the case, up to the
integral's approximation error (both reported); voxels in no region hold the rest. Without
PyTorch weights beside the model it is the region's mean attention instead, and the graph
says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from app.explain.case import StoredCase
from app.schemas import Contribution, GraphEdge, GraphNode
from models.region_graph import num_regions, region_name, regions_from_labels
from models.segmenter import mask_on_grid
from models.topology import CaseGraph, case_graph, graph_of, gw_distance, region_means


def case_regions(case: StoredCase) -> tuple[np.ndarray, CaseGraph, str]:
    """Labels (D, H, W) on the model grid, the case's graph, and where the regions came from
    ("mask": anatomical regions of the mask; "supervoxels": none was there)."""
    features = case.outputs["features"]
    if case.mask is not None:
        labels = regions_from_labels(case.task.name, mask_on_grid(case.mask, case.grid)).astype(np.int64)
        if labels.max() > 0:
            return labels, graph_of(features, labels, num_regions(case.task.name)), "mask"
    labels, graph = case_graph(case.image, features)
    return labels, graph, "supervoxels"


def node_name(case: StoredCase, region: int, source: str) -> str:
    return region_name(case.task.name, region) if source == "mask" else f"supervoxel {region}"


@dataclass(frozen=True)
class Attribution:
    """A signed per-voxel attribution of the predicted logit on the model grid, and the
    rise of that logit from the baseline that its sum should equal."""

    map: np.ndarray  # (D, H, W)
    logit_rise: float


def build_graph(
    case: StoredCase, attribution: Attribution | None
) -> tuple[list[GraphNode], list[GraphEdge], CaseGraph, str, Contribution]:
    labels, graph, source = case_regions(case)
    attention = region_means(case.outputs["attention"][0], labels, graph.regions)
    voxel_ml = float(np.prod(case.grid.spacing)) / 1000.0
    if attribution is not None:
        values = [float(attribution.map[labels == region].sum()) for region in graph.regions]
        total = float(attribution.map.sum())
        contribution = Contribution(
            method="integrated_gradients",
            unit="logit of the predicted class",
            description="integrated-gradients attribution summed over the region's voxels, from the "
            "input blurred (its structure removed); over every voxel it adds up to the logit's rise",
            total=total,
            regions_sum=float(sum(values)),
            outside_regions=total - float(sum(values)),
            logit_rise=attribution.logit_rise,
        )
    else:
        values = [float(a) for a in attention]
        contribution = Contribution(
            method="mean_attention",
            unit="mean CBAM3D attention in [0, 1] (no PyTorch weights beside the model)",
            description="the region's mean spatial attention; not additive",
        )
    nodes = []
    for n, region in enumerate(graph.regions):
        dhw = np.argwhere(labels == region).mean(axis=0)
        centroid = (case.grid.affine @ np.append(dhw[::-1], 1.0))[:3]  # (d, h, w) -> (x, y, z)
        nodes.append(
            GraphNode(
                id=n,
                label=node_name(case, region, source),
                centroid_mm=[round(float(c), 2) for c in centroid],
                volume_ml=round(float((labels == region).sum()) * voxel_ml, 3),
                mean_attention=float(attention[n]),
                contribution=values[n],
            )
        )
    edges = [
        GraphEdge(source=a, target=b, weight=float(graph.distances[a, b]))
        for a, b in zip(*np.nonzero(np.triu(graph.edges)), strict=True)
    ]
    return nodes, edges, graph, source, contribution


def prototype_distances(graph: CaseGraph, prototypes: dict[str, Any]) -> dict[str, float]:
    """GW distance of the case graph to each class prototype graph."""
    return {name: gw_distance(graph.distances, graph.weights, proto) for name, proto in prototypes.items()}
