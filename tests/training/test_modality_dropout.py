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


def test_subset_weights_set_how_often_each_subset_is_drawn():
    dropout = ModalityDropout(HCC, p=1.0, weights={"ct": 3.0, "pet_act+ct": 2.0})
    _, dropped = dropout(torch.ones(6000, 3, 1, 1, 1), torch.ones(6000, 3), torch.Generator().manual_seed(2))

    def share(*subset: str) -> float:
        row = torch.tensor([float(m in subset) for m in HCC.modalities])
        return (dropped == row).all(dim=1).float().mean().item()

    # weights 3 (CT), 2 (CT + acetate PET), 1 and 1 (the other two subsets): sevenths
    assert share("ct") == pytest.approx(3 / 7, abs=0.02)
    assert share("ct", "pet_act") == pytest.approx(2 / 7, abs=0.02)
    assert share("ct", "pet_fdg") == pytest.approx(1 / 7, abs=0.02)
    assert share(*HCC.modalities) == pytest.approx(1 / 7, abs=0.02)


def test_subset_weights_name_allowed_subsets_with_positive_weights():
    with pytest.raises(ValueError, match="'pet_fdg' is not an allowed modality subset"):
        ModalityDropout(HCC, p=1.0, weights={"pet_fdg": 2.0})
    with pytest.raises(ValueError, match="must be positive"):
        ModalityDropout(HCC, p=1.0, weights={"ct": 0.0})
