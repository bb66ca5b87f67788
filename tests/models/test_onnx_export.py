"""Served networks export to ONNX and ONNX Runtime reproduces PyTorch.

The export call here is the one found to work with torch 2.13: the torch.export-based
exporter (`dynamo=True`, which needs onnxscript), opset 18, a dynamic batch dimension given
through `dynamic_shapes`; the batch axis of the outputs follows from the inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from net_helpers import tiny_input
from torch import nn

from models.registry import create_model

INPUT_NAMES = ["image", "present"]
OUTPUT_NAMES = ["logits", "attention", "features"]


def export_onnx(model: nn.Module, image: torch.Tensor, present: torch.Tensor, path: Path) -> None:
    """Export `model` (eval mode) with a dynamic batch axis on every input and output."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(
        model.eval(),
        (image, present),
        str(path),
        input_names=INPUT_NAMES,
        output_names=OUTPUT_NAMES,
        opset_version=18,
        dynamo=True,
        dynamic_shapes={"image": {0: batch}, "present": {0: batch}},
        external_data=False,
        verbose=False,
    )


# The served networks. The teachers export the same way (checked by `python -m bench.networks`,
# which runs every registered network in ONNX Runtime) but cost ~10 s each here.
@pytest.mark.parametrize("name", ["hcc_student", "brats_student"])
def test_onnx_runtime_matches_pytorch(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    image, present = tiny_input(name, (16, 32, 32))
    path = tmp_path / f"{name}.onnx"
    export_onnx(model, image, present, path)

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == INPUT_NAMES
    assert [o.name for o in proto.graph.output] == OUTPUT_NAMES
    for value in [*proto.graph.input, *proto.graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param, f"{value.name} has a fixed batch axis"

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # another batch size than the one exported
        image, present = tiny_input(name, (16, 32, 32), batch=batch, seed=batch)
        present[0, 1:] = 0.0
        got = session.run(OUTPUT_NAMES, {"image": image.numpy(), "present": present.numpy()})
        with torch.no_grad():
            want = model(image, present)
        np.testing.assert_allclose(got[0], want.logits.numpy(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(got[1], want.attention.numpy(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(got[2], want.features.numpy(), rtol=0, atol=1e-3)
