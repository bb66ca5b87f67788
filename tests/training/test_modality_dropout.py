"""Modality dropout reaches every allowed subset and never drops everything."""

from __future__ import annotations

import pytest
import torch

from models.tasks import BRATS, HCC
from training.modality_dropout import ModalityDropout


@pytest.mark.parametrize("task", [HCC, BRATS], ids=lambda t: t.name)
def test_reaches_every_allowed_subset_and_never_an_empty_one(task):
    dropout = ModalityDropout(task, p=1.0)
    generator = torch.Generator().manual_seed(0)
    image = torch.ones(64, task.num_modalities, 2, 2, 2)
    present = torch.ones(64, task.num_modalities)
    seen = set()
    for _ in range(10):
        dropped_image, dropped = dropout(image, present, generator)
        assert (dropped.sum(1) >= 1).all()
        assert torch.equal(dropped_image[:, :, 0, 0, 0], dropped)
        for row in dropped:
            subset = tuple(m for m, keep in zip(task.modalities, row.tolist(), strict=True) if keep)
            assert task.is_allowed(set(subset))
            seen.add(subset)
    assert seen == set(task.allowed_subsets())


def test_keeps_what_a_case_lacks_missing():
    dropout = ModalityDropout(HCC, p=1.0)
    present = torch.tensor([[1.0, 1.0, 0.0]] * 32)
    _, dropped = dropout(torch.ones(32, 3, 1, 1, 1), present, torch.Generator().manual_seed(1))
    assert (dropped[:, 2] == 0).all() and (dropped[:, 0] == 1).all()


def test_p_zero_changes_nothing_and_bad_p_is_refused():
    present = torch.ones(4, 3)
    image = torch.rand(4, 3, 2, 2, 2)
    out_image, out_present = ModalityDropout(HCC, p=0.0)(image, present)
    assert torch.equal(out_present, present) and torch.equal(out_image, image)
    with pytest.raises(ValueError, match=r"p=1\.5"):
        ModalityDropout(HCC, p=1.5)
