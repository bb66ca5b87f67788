from __future__ import annotations

import pytest
import torch
from net_helpers import tiny_input

from models.brats import BraTSStudent, BraTSTeacherHybrid, TransformerBlock, ViTBranch
from models.registry import create_model


@pytest.mark.parametrize("shape", [(16, 32, 32), (24, 40, 32), (64, 80, 64)])
def test_vit_branch_accepts_any_grid_of_whole_patches(shape: tuple[int, int, int]) -> None:
    vit = ViTBranch(4, img_size=(64, 80, 64), patch_size=16, hidden_size=32, mlp_dim=64, num_heads=4)
    assert vit.position.shape == (1, 32, 4, 5, 4)
    assert vit(torch.randn(2, 4, *shape)).shape == (2, 32)


def test_vit_branch_refuses_a_grid_smaller_than_a_patch() -> None:
    vit = ViTBranch(4, img_size=(64, 80, 64), patch_size=16, hidden_size=32, mlp_dim=64)
    with pytest.raises(ValueError, match=r"\(8, 32, 32\)"):
        vit(torch.randn(1, 4, 8, 32, 32))


def test_transformer_block_keeps_shape_and_checks_heads() -> None:
    assert TransformerBlock(32, 64, 4)(torch.randn(2, 7, 32)).shape == (2, 7, 32)
    with pytest.raises(ValueError, match="got 30"):
        TransformerBlock(30, 64, 4)


def test_hybrid_teacher_uses_both_branches() -> None:
    model = create_model("brats_teacher_hybrid", width=8, hidden_size=32)
    image, present = tiny_input("brats_teacher_hybrid", (16, 32, 32))
    model(image, present).logits.sum().backward()
    assert model.vit.embed.weight.grad.abs().sum() > 0
    assert model.cnn[0][0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("factory", "kwargs", "message"),
    [
        (BraTSStudent, {"width": -1}, "width=-1"),
        (BraTSStudent, {"expand": 0}, "expand=0"),
        (BraTSTeacherHybrid, {"patch_size": 0}, "patch_size=0"),
        (BraTSTeacherHybrid, {"msgff": True}, "msgff=True"),
    ],
)
def test_bad_arguments_name_the_value(factory: type, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory(**kwargs)
