"""Class prototype graphs: what a typical region graph of each class looks like.

Cases are graphs of supervoxels (`models.topology.case_graph`, as at serving). Supervoxels
carry no identity across cases, so a prototype cannot be a node-by-node average of
matrices; it is the Gromov-Wasserstein barycenter of the class's training graphs (POT's
`gromov_barycenters`): the graph of `num_nodes` nodes closest, in GW, to all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import ot

from models.topology import NUM_NODES


def class_prototypes(
    graphs: Sequence[tuple[np.ndarray, np.ndarray]],
    labels: Sequence[int],
    classes: Sequence[str],
    num_nodes: int = NUM_NODES,
    seed: int = 0,
) -> dict[str, Any]:
    """GW barycenter of each class's graphs: {class: {"distances": RxR, "weights": R, "cases": n}}."""
    prototypes: dict[str, Any] = {}
    for index, name in enumerate(classes):
        members = [g for g, y in zip(graphs, labels, strict=True) if y == index and len(g[1]) >= 2]
        if not members:
            continue
        weights = np.full(num_nodes, 1.0 / num_nodes)
        barycenter = ot.gromov.gromov_barycenters(
            num_nodes,
            [c for c, _ in members],
            ps=[w for _, w in members],
            p=weights,
            lambdas=[1.0 / len(members)] * len(members),
            max_iter=100,
            tol=1e-6,
            random_state=seed,
        )
        prototypes[name] = {
            "distances": np.round(barycenter, 6).tolist(),
            "weights": weights.tolist(),
            "cases": len(members),
        }
    return prototypes
