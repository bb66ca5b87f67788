"""Registry-wide checks: every registered network honours the ModelOutput contract."""

from __future__ import annotations

import pytest
import torch
from net_helpers import TINY_SHAPES, assert_gradients_reach_every_parameter, small_kwargs, tiny_input

from models.registry import ModelOutput, create_model, list_models, resolved_kwargs


def test_all_five_networks_are_registered() -> None:
    expected = {"hcc_student", "hcc_teacher_sf", "hcc_teacher_dose", "brats_student", "brats_teacher_hybrid"}
    assert expected <= set(list_models())


@pytest.mark.parametrize("shape", TINY_SHAPES)
def test_forward_contract(model_name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = create_model(model_name).eval()
    image, present = tiny_input(model_name, shape)
    with torch.no_grad():
        out = model(image, present)
    assert isinstance(out, ModelOutput)
    grid = tuple(-(-s // 8) for s in shape)
    assert out.logits.shape == (2, model.head.fc.out_features)
    assert out.attention.shape == (2, 1, *grid)
    assert out.features.shape[:2] == (2, model.num_features) and out.features.shape[2:] == grid
    for tensor in out:
        assert torch.isfinite(tensor).all()
    assert out.attention.min() >= 0 and out.attention.max() <= 1


@pytest.mark.parametrize("shape", TINY_SHAPES)
def test_gradient_reaches_every_parameter(model_name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = create_model(model_name, **small_kwargs(model_name)).train()
    image, present = tiny_input(model_name, shape)
    out = model(image, present)
    loss = out.logits.square().mean() + out.attention.mean() + out.features.square().mean()
    assert_gradients_reach_every_parameter(model, loss)


def test_missing_channel_content_cannot_change_the_output(model_name: str) -> None:
    torch.manual_seed(0)
    model = create_model(model_name, **small_kwargs(model_name)).eval()
    image, present = tiny_input(model_name, (16, 32, 32))
    present[:, 1:] = 0.0  # only the first modality (ct, t1) present
    zeros = image.clone()
    zeros[:, 1:] = 0.0
    noise = image.clone()
    noise[:, 1:] = 1e3 * torch.randn_like(noise[:, 1:])
    with torch.no_grad():
        a, b = model(zeros, present), model(noise, present)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


@pytest.mark.parametrize("msgff", [False, True])
@pytest.mark.parametrize("name", ["hcc_student", "brats_student"])
def test_students_with_and_without_msgff(name: str, msgff: bool) -> None:
    model = create_model(name, msgff=msgff)
    image, present = tiny_input(name, (24, 40, 32))
    out = model(image, present)
    assert out.features.shape[2:] == (3, 5, 4)
    assert_gradients_reach_every_parameter(model, out.logits.square().mean() + out.features.mean())


def test_students_stay_small() -> None:
    for name in ("hcc_student", "brats_student"):
        count = sum(p.numel() for p in create_model(name).parameters())
        assert count <= 2_000_000, f"{name} has {count} parameters"


def test_resolved_kwargs_rebuild_the_same_network(model_name: str) -> None:
    """A checkpoint records every default: with them the same network (same parameters, same
    values from the same seed) is built, and a given argument wins over its default."""
    resolved = resolved_kwargs(model_name)
    assert {"norm", "pool", "width"} <= set(resolved)
    torch.manual_seed(0)
    plain = create_model(model_name).state_dict()
    torch.manual_seed(0)
    rebuilt = create_model(model_name, **resolved).state_dict()
    assert plain.keys() == rebuilt.keys()
    assert all(torch.equal(plain[k], rebuilt[k]) for k in plain)
    assert resolved_kwargs(model_name, norm="group")["norm"] == "group"
