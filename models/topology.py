"""Topology of a case: its region graph, and its GW distance to class prototypes.

Training builds class prototypes from these graphs (`training.prototypes`) and the service
builds the same graph for each new case and compares it with every prototype by
Gromov-Wasserstein discrepancy: the topology explanation. Regions come from a mask when
one is given, else from supervoxels of the foreground (`models.region_graph`), so both
sides use one definition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import ot
import torch

from models.region_graph import (
    DEFAULT_SUPERVOXELS,
    adjacency,
    distance_matrix,
    node_features,
    region_fractions,
    supervoxel_regions,
)

NUM_NODES = DEFAULT_SUPERVOXELS


@dataclass(frozen=True)
class CaseGraph:
    """The non-empty regions of one case as a graph.

    regions: label ids (1..R) of the nodes; distances: (R', R') cosine distances between
    node features; weights: (R',) region masses summing to 1; edges: (R', R') bool, regions
    that touch.
    """

    regions: list[int]
    distances: np.ndarray
    weights: np.ndarray
    edges: np.ndarray


def graph_of(features: np.ndarray, labels: np.ndarray, num_regions: int) -> CaseGraph:
    """features (F, d, h, w) and labels (D, H, W) on the model grid -> the case's graph."""
    nodes, weights = node_features(
        torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))[None],
        torch.from_numpy(labels.astype(np.int64))[None],
        num_regions,
    )
    distances = distance_matrix(nodes)[0].detach().numpy().astype(np.float64)
    w = weights[0].detach().numpy().astype(np.float64)
    keep = np.flatnonzero(w > 0)
    return CaseGraph(
        regions=[int(k) + 1 for k in keep],
        distances=distances[np.ix_(keep, keep)],
        weights=w[keep] / max(w[keep].sum(), 1e-12),
        edges=adjacency(labels, num_regions)[np.ix_(keep, keep)],
    )


def case_graph(
    image: np.ndarray, features: np.ndarray, num_regions: int = NUM_NODES
) -> tuple[np.ndarray, CaseGraph]:
    """Supervoxel labels (D, H, W) of a case without masks, and its graph.

    image: (M, D, H, W) model input; features: (F, d, h, w) last-stage features.
    """
    labels = supervoxel_regions(image, num_regions)
    return labels, graph_of(features, labels, num_regions)


def region_means(values: np.ndarray, labels: np.ndarray, regions: list[int]) -> np.ndarray:
    """Mean of a map (any grid covering the same field of view) over each region."""
    fractions = region_fractions(
        torch.from_numpy(labels.astype(np.int64))[None], max(regions, default=1), tuple(values.shape)
    )[0].numpy()
    out = []
    for region in regions:
        share = fractions[region - 1]
        out.append(float((share * values).sum() / max(share.sum(), 1e-12)))
    return np.asarray(out)


def gw_distance(distances: np.ndarray, weights: np.ndarray, prototype: Mapping[str, Any]) -> float:
    """GW discrepancy between a case graph and a prototype {"distances": RxR, "weights": R}."""
    c2 = np.asarray(prototype["distances"], dtype=np.float64)
    q = np.asarray(prototype["weights"], dtype=np.float64)
    return float(ot.gromov.gromov_wasserstein2(distances, c2, weights, q / q.sum(), loss_fun="square_loss"))
