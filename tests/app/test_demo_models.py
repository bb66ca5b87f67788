"""The shipped demo models: the PyTorch weights beside each ONNX file are the same network.

Attributions (Grad-CAM, Integrated Gradients) run on the `.pt` weights while predictions
come from the `.onnx` file, so the two must agree; a checkpoint whose `model_kwargs` leave a
setting to a default that has since changed would rebuild a different network.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from app.settings import DEFAULT_MODEL_DIR
from models import model_from_checkpoint, task_of_card
from models.segmenter import get_segmenter_spec

ALL_CARDS = sorted(DEFAULT_MODEL_DIR.glob("*.json"))
# Graders ship their PyTorch weights (for attributions); a segmenter ships its ONNX stages only.
CARDS = [p for p in ALL_CARDS if json.loads(p.read_text()).get("role") != "segmenter"]
SEGMENTER_CARDS = [p for p in ALL_CARDS if p not in CARDS]


@pytest.mark.parametrize("card_path", CARDS, ids=[p.stem for p in CARDS])
def test_shipped_weights_answer_as_the_shipped_onnx(card_path: Path) -> None:
    card = json.loads(card_path.read_text())
    checkpoint = torch.load(DEFAULT_MODEL_DIR / card["weights_file"], weights_only=False)
    assert checkpoint["model_kwargs"] == card["model_kwargs"]
    network = model_from_checkpoint(checkpoint)
    task = task_of_card(card)
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(2, task.num_modalities, *task.shape, generator=generator)
    present = torch.ones(2, task.num_modalities)
    present[1, 1:] = 0.0  # a second case with only the first modality
    session = ort.InferenceSession(DEFAULT_MODEL_DIR / card["onnx_file"], providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(["logits"], {"image": image.numpy(), "present": present.numpy()})
    with torch.no_grad():
        torch_logits = network(image, present).logits.numpy()
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4)


@pytest.mark.parametrize("card_path", SEGMENTER_CARDS, ids=[p.stem for p in SEGMENTER_CARDS])
def test_a_shipped_segmenter_has_the_stages_its_card_says(card_path: Path) -> None:
    from app.runtime import sha256_of

    card = json.loads(card_path.read_text())
    spec = get_segmenter_spec(card["task"])
    assert card["labels"] == list(spec.labels) and card["training_data"]["synthetic"] is True
    assert sorted(card["stages"]) == sorted(spec.stages)
    for stage in card["stages"].values():
        path = DEFAULT_MODEL_DIR / stage["onnx_file"]
        assert sha256_of(path) == stage["onnx_sha256"]
        assert stage["parity"]["max_abs_logit_diff"] < 5e-3
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        window = np.zeros((1, spec.channels, *stage["roi"]), np.float32)
        (logits,) = session.run(["logits"], {"image": window})
        assert logits.shape == (1, spec.num_labels, *stage["roi"])
