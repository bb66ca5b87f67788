"""The train/val/test split rule every cohort shares: the generators write it into their
manifests, and the readers give it to cohorts that ship without one (BraTS)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPLIT_FRACTIONS = (("train", 0.70), ("val", 0.15), ("test", 0.15))


def assign_splits(grades: Sequence[str], seed: int) -> list[str]:
    """train/val/test about 70/15/15, stratified by grade, deterministic in `seed`.

    Each case gets its relative rank within its grade (in a seeded random order); the cohort
    sorted by that rank is cut at the split fractions. Every grade is spread evenly over the
    splits, and small cohorts (from 3 cases) still get a val and a test case.
    """
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(99,)))
    n = len(grades)
    position = np.zeros(n)
    for grade in sorted(set(grades)):
        members = np.array([i for i, g in enumerate(grades) if g == grade])
        position[members[rng.permutation(len(members))]] = (np.arange(len(members)) + 0.5) / len(members)
    position += rng.uniform(0, 1e-6, size=n)  # break ties between grades at random
    n_val = max(round(n * SPLIT_FRACTIONS[1][1]), 1 if n >= 3 else 0)
    n_test = max(round(n * SPLIT_FRACTIONS[2][1]), 1 if n >= 3 else 0)
    splits = ["train"] * n
    for rank, index in enumerate(np.argsort(position)):
        if rank < n_val:
            splits[index] = "val"
        elif rank < n_val + n_test:
            splits[index] = "test"
    return splits
