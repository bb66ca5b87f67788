"""Topology of a case: its region graph without masks, and its GW distance to prototypes.

At serving time there are no masks, so a case's graph is built from supervoxels of its
foreground and the network's last-stage features. Training builds the class prototypes
from the same graphs (`training.prototypes`), and the service compares each new case with
every prototype by Gromov-Wasserstein discrepancy: the topology explanation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import ot
import torch

from models.region_graph import distance_matrix, node_features, supervoxel_regions

NUM_NODES = 8


def case_graph(
    image: np.ndarray, features: np.ndarray, num_regions: int = NUM_NODES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The supervoxel region graph of one case.

    Args:
        image: (M, D, H, W) model input.
        features: (F, d, h, w) last-stage features of the network.
    Returns:
        labels (D, H, W) region of each voxel (0 = background), distances (R', R') between
        the non-empty regions, and their masses (R',) summing to 1.
    """
    labels = supervoxel_regions(image, num_regions)
    nodes, weights = node_features(
        torch.from_numpy(np.ascontiguousarray(features))[None],
        torch.from_numpy(labels.astype(np.int64))[None],
        num_regions,
    )
    distances = distance_matrix(nodes)[0].detach().numpy().astype(np.float64)
    w = weights[0].detach().numpy().astype(np.float64)
    keep = w > 0
    return labels, distances[keep][:, keep], w[keep] / max(w[keep].sum(), 1e-12)


def gw_distance(distances: np.ndarray, weights: np.ndarray, prototype: Mapping[str, Any]) -> float:
    """GW discrepancy between a case graph and a prototype {"distances": RxR, "weights": R}."""
    c2 = np.asarray(prototype["distances"], dtype=np.float64)
    q = np.asarray(prototype["weights"], dtype=np.float64)
    return float(ot.gromov.gromov_wasserstein2(distances, c2, weights, q / q.sum(), loss_fun="square_loss"))
