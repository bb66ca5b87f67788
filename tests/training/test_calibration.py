"""Post-hoc calibration: the fit recovers a known miscalibration, and folding it into the
last layer gives the calibrated logits from the network itself (and its ONNX export)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models import create_model
from models.tasks import get_task
from tests.common import random_checkpoint
from training.calibration import (
    Calibration,
    balanced_accuracy,
    fit_calibration,
    fit_decision_weights,
    fold_into_head,
)
from training.export import export_model


def test_fit_recovers_a_known_temperature_and_bias() -> None:
    """Labels drawn from softmax(z); the network reports 3 z + shift: the fit undoes both."""
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(20000, 3)) * 2.0
    probs = np.exp(true_logits) / np.exp(true_logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(3, p=p) for p in probs])
    shift = np.array([1.0, -0.5, -0.5])
    fitted = fit_calibration(3.0 * true_logits - 3.0 * shift, labels)
    assert fitted.temperature == pytest.approx(3.0, rel=0.05)
    np.testing.assert_allclose(fitted.bias, shift - shift.mean(), atol=0.06)
    assert sum(fitted.bias) == pytest.approx(0.0, abs=1e-9)


def test_folding_makes_the_network_answer_calibrated() -> None:
    torch.manual_seed(0)
    model = create_model("hcc_student", width=4).eval()
    image, present = torch.rand(2, 3, 16, 16, 16), torch.ones(2, 3)
    calibration = Calibration(temperature=2.5, bias=[0.4, -0.1, -0.3])
    with torch.no_grad():
        before = model(image, present).logits.numpy()
        fold_into_head(model, calibration)
        after = model(image, present).logits.numpy()
    np.testing.assert_allclose(after, calibration.apply(before), rtol=1e-5, atol=1e-5)


def test_export_calibrates_on_the_val_split(tmp_path: Path, hcc_manifest: Path) -> None:
    """The card records the fit, the NLL on the val split does not rise, and the ONNX file
    itself carries the calibration (its logits are the uncalibrated export's, calibrated)."""
    checkpoint = random_checkpoint("hcc_student", "hcc")
    card = export_model(checkpoint, tmp_path / "cal" / "m.onnx", data=hcc_manifest, calibrate=True)
    export_model(checkpoint, tmp_path / "plain" / "m.onnx")
    fit = card["calibration"]
    assert fit["fitted_on"].startswith("val split") and fit["temperature"] > 0
    assert fit["nll_after"] <= fit["nll_before"]
    feeds = {
        "image": np.random.default_rng(0).random((1, 3, 48, 96, 96), dtype=np.float32),
        "present": np.ones((1, 3), np.float32),
    }
    logits = {
        name: ort.InferenceSession(str(tmp_path / name / "m.onnx")).run(["logits"], feeds)[0]
        for name in ("cal", "plain")
    }
    expected = Calibration(fit["temperature"], list(fit["bias"].values())).apply(logits["plain"])
    np.testing.assert_allclose(logits["cal"], expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="give `data`"):
        export_model(checkpoint, tmp_path / "x" / "m.onnx", calibrate=True)
    # The label rule: weights with every modality, and weights per modality subset given.
    task = get_task("hcc")
    by_subset = card["decision"]["by_subset"]
    assert set(by_subset) == {"+".join(subset) for subset in task.allowed_subsets()}
    assert all(
        set(weights) == set(task.classes) and min(weights.values()) > 0 for weights in by_subset.values()
    )


def test_decision_weights_give_the_minority_its_answers_back() -> None:
    """Three overlapping classes, the middle one commonest: argmax answers it for most cases
    and almost never the first; weights chosen for balanced accuracy raise it, and a label
    rule that is already balanced is left alone (all weights 1)."""
    rng = np.random.default_rng(0)
    labels = rng.choice(3, size=3000, p=[0.25, 0.45, 0.30])
    score = labels + rng.normal(0, 0.9, size=labels.size)  # one noisy axis: well < moderate < poor
    centres = np.array([0.0, 1.0, 2.0])
    log_like = -((score[:, None] - centres) ** 2) / (2 * 0.9**2) + np.log([0.25, 0.45, 0.30])
    probs = np.exp(log_like) / np.exp(log_like).sum(axis=1, keepdims=True)
    argmax = np.argmax(probs, axis=1)
    weights = fit_decision_weights(probs, labels)
    weighted = np.argmax(probs * np.asarray(weights), axis=1)
    assert balanced_accuracy(labels, weighted, 3) > balanced_accuracy(labels, argmax, 3) + 0.02
    assert np.mean(weighted == 0) > np.mean(argmax == 0)
    perfect = np.eye(3)[labels] * 0.8 + 0.1
    assert fit_decision_weights(perfect, labels) == [1.0, 1.0, 1.0]
