from __future__ import annotations

import pytest
import torch
from net_helpers import tiny_input

from models.cbam import CBAM3D
from models.hcc import HCCStudent, HCCTeacherSF
from models.registry import create_model


def test_sf_teacher_shares_one_cbam3d_across_branches() -> None:
    model = create_model("hcc_teacher_sf", width=8)
    cbams = [m for m in model.modules() if isinstance(m, CBAM3D)]
    assert len(cbams) == 1  # modules() yields a shared module once
    seen = []
    handle = model.cbam.register_forward_hook(lambda module, args, out: seen.append(id(module)))
    image, present = tiny_input("hcc_teacher_sf", (16, 32, 32))
    model(image, present)
    handle.remove()
    assert seen == [id(model.cbam)] * 2  # the same object attended both branches
    cbam_names = [n for n, _ in model.named_parameters() if "cbam" in n]
    assert len(cbam_names) == len(list(model.cbam.parameters()))
    assert all(n.startswith("cbam.") for n in cbam_names)


def test_sf_teacher_branches_see_their_tracer() -> None:
    """Changing acetate PET must not reach the FDG branch, and vice versa."""
    model = create_model("hcc_teacher_sf", width=8).eval()
    image, present = tiny_input("hcc_teacher_sf", (16, 32, 32))
    other = image.clone()
    other[:, 2] = torch.randn_like(other[:, 2])
    with torch.no_grad():
        fdg_a = model.fdg_branch(image[:, [0, 1]])
        fdg_b = model.fdg_branch(other[:, [0, 1]])
        out_a, out_b = model(image, present), model(other, present)
    torch.testing.assert_close(fdg_a, fdg_b)
    assert not torch.allclose(out_a.logits, out_b.logits)


def test_dose_teacher_reads_ct_only() -> None:
    model = create_model("hcc_teacher_dose", width=8).eval()
    image, present = tiny_input("hcc_teacher_dose", (16, 32, 32))
    other = image.clone()
    other[:, 1:] = torch.randn_like(other[:, 1:])
    with torch.no_grad():
        torch.testing.assert_close(model(image, present).logits, model(other, present).logits)


def test_teacher_is_heavier_than_student() -> None:
    student = sum(p.numel() for p in create_model("hcc_student").parameters())
    teacher = sum(p.numel() for p in create_model("hcc_teacher_sf").parameters())
    assert teacher > 10 * student


@pytest.mark.parametrize(
    ("factory", "kwargs", "message"),
    [
        (HCCTeacherSF, {"in_channels": 2}, "in_channels=2"),
        (HCCStudent, {"width": 0}, "width=0"),
        (HCCStudent, {"dropout": 1.5}, "dropout=1.5"),
        (HCCStudent, {"norm": "layer"}, "norm='layer'"),
    ],
)
def test_bad_arguments_name_the_value(factory: type, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory(**kwargs)


def test_bad_present_shape() -> None:
    model = create_model("hcc_student")
    with pytest.raises(ValueError, match=r"present \(2,\)"):
        model(torch.randn(2, 3, 16, 32, 32), torch.ones(2))
