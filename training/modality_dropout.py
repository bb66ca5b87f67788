"""Modality dropout: train on every subset of modalities a served model must accept.

With probability `p` a case keeps only a random allowed subset of the modalities it has,
so that CT alone, CT with one PET, or any single MRI sequence are inputs the student has
learned, not accidents. An allowed subset is never empty and always holds the task's
required modalities. Among the subsets a case can reach, each is drawn with probability
proportional to its weight (1 unless `weights` says otherwise): a student that serves
mostly CT alone can be given CT alone more often without losing the other subsets.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from models.tasks import TaskSpec


class ModalityDropout:
    """Drop modalities of a batch to a random allowed subset, per case, with probability `p`."""

    def __init__(self, task: TaskSpec, p: float, weights: Mapping[str, float] | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got p={p}")
        self.task = task
        self.p = p
        subsets = task.allowed_subsets()
        by_subset = {task.subset_named(name): float(w) for name, w in (weights or {}).items()}
        if any(w <= 0 for w in by_subset.values()):
            raise ValueError(
                f"subset weights must be positive (every allowed subset is trained), got {weights}"
            )
        self.subset_weights = torch.tensor([by_subset.get(s, 1.0) for s in subsets])  # (S,)
        masks = [[1.0 if name in subset else 0.0 for name in task.modalities] for subset in subsets]
        self.subset_masks = torch.tensor(masks)  # (S, M), one row per allowed subset

    def __call__(
        self, image: torch.Tensor, present: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image (N, M, D, H, W), present (N, M) -> both with dropped channels zeroed."""
        new_present = present.clone()
        draws = torch.rand(present.shape[0], generator=generator)
        for case in range(present.shape[0]):
            if draws[case] >= self.p:
                continue
            reachable = (self.subset_masks <= present[case].cpu()).all(dim=1).nonzero().flatten()
            if len(reachable) == 0:
                continue  # what the case has is not an allowed subset: leave it as given
            pick = reachable[torch.multinomial(self.subset_weights[reachable], 1, generator=generator)]
            new_present[case] = self.subset_masks[pick].to(present)
        return image * new_present[:, :, None, None, None], new_present
