"""Export a trained network to ONNX with its model card, verified rather than assumed.

`export_model` writes three files side by side:

- ``NAME.onnx``: inputs ``image`` [N, M, D, H, W] and ``present`` [N, M]; outputs
  ``logits``, ``attention`` and ``features``; dynamic batch axis; opset 18.
- ``NAME.pt``: the weights as a registry checkpoint, for gradient attributions at serving.
- ``NAME.json``: the model card (DESIGN.md): task, classes, modalities, input grid,
  preprocessing, training data, metrics, sha256 of the ONNX file, parity, prototypes,
  intended use.

The ONNX graph is checked with ``onnx.checker.check_model(full_check=True)`` and ONNX
Runtime's logits are compared with PyTorch's on random and on all-zero inputs under every
allowed modality subset; a difference above `tolerance` fails the export.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from models import model_from_checkpoint, task_of_card
from models.card import parse_card
from models.tasks import TaskSpec
from training.calibration import calibrate_on_validation
from training.data.readers import read_records
from training.evaluate import Predictor, cohort_evidence, predict_records
from training.metrics import macro_auc
from training.serialization import json_safe

log = logging.getLogger(__name__)

INPUT_NAMES = ("image", "present")
OUTPUT_NAMES = ("logits", "attention", "features")
OPSET = 18
INTENDED_USE = (
    "Research use only, not for diagnosis. Not a medical device; outputs must not guide patient care."
)


class ExportError(RuntimeError):
    """The exported graph is invalid or does not reproduce the PyTorch model."""


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def example_inputs(task: TaskSpec, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand((batch, task.num_modalities, *task.shape), generator=generator)
    return image, torch.ones(batch, task.num_modalities)


def write_onnx(model: nn.Module, task: TaskSpec, path: Path) -> None:
    """Trace `model` to ONNX with a dynamic batch axis (the TorchScript exporter: fast and
    exact for these convolutional graphs)."""
    dynamic = {name: {0: "batch"} for name in INPUT_NAMES + OUTPUT_NAMES}
    torch.onnx.export(
        model,
        example_inputs(task, batch=2),
        str(path),
        input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES),
        opset_version=OPSET,
        dynamic_axes=dynamic,
        dynamo=False,
    )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def parity(model: nn.Module, task: TaskSpec, path: Path) -> float:
    """Max |logit difference| between ONNX Runtime and PyTorch over random inputs, zeros,
    and every allowed modality subset, at batch sizes 1 and 3."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (1, 3):
        image, _ = example_inputs(task, batch, seed=batch)
        for subset in task.allowed_subsets():
            present = torch.tensor([[float(m in subset) for m in task.modalities]] * batch)
            for x in (image, torch.zeros_like(image)):
                with torch.no_grad():
                    expected = model(x, present).logits.numpy()
                got = session.run(["logits"], {"image": x.numpy(), "present": present.numpy()})[0]
                worst = max(worst, float(np.max(np.abs(expected - got))))
    return worst


def export_model(
    checkpoint: Mapping[str, Any] | Path,
    out: Path,
    *,
    version: str = "0.1.0",
    training_data: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    data: Path | None = None,
    int8: bool = False,
    calibrate: bool = False,
    tolerance: float = 1e-4,
) -> dict[str, Any]:
    """Write ``out`` (NAME.onnx), NAME.pt and NAME.json from a checkpoint; return the card.

    With `data` (the cohort it was trained on), the card also carries test-split metrics
    and class prototype graphs computed through the exported ONNX file itself. With `int8`,
    a dynamically quantized ``NAME.int8.onnx`` is written too, and the card records how far
    its logits and (with `data`) its test AUC move from the float model's. With `calibrate`
    (needs `data`), a temperature and per-class biases fitted on the val split are folded
    into the last layer first (`training.calibration`); everything after sees that network.
    """
    state = (
        torch.load(checkpoint, map_location="cpu", weights_only=False)
        if isinstance(checkpoint, Path)
        else checkpoint
    )
    model = model_from_checkpoint(state)
    task = task_of_card(state)
    # A student trained on a subset (`input_modalities`, e.g. CT alone) is judged, calibrated
    # and served on that subset: given PET it never saw, its answer would mean nothing.
    reads = state.get("config", {}).get("input_modalities") or None
    out = Path(out)
    if out.suffix != ".onnx":
        raise ValueError(f"output must end in .onnx, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)

    calibration = None
    if calibrate:
        if data is None:
            raise ValueError("calibration is fitted on the val split of a cohort: give `data`")
        calibration = calibrate_on_validation(model, task, data, reads)
        state = {**state, "state_dict": model.state_dict()}
    write_onnx(model, task, out)
    diff = parity(model, task, out)
    if diff > tolerance:
        raise ExportError(f"ONNX Runtime differs from PyTorch by {diff:.2e} (tolerance {tolerance:.0e})")
    log.info("exported %s: max |logit difference| ONNX Runtime vs PyTorch = %.2e", out, diff)

    prototypes: Mapping[str, Any] | None = None
    if data is not None:
        decision = calibration["decision"] if calibration is not None else None
        metrics, prototypes = cohort_evidence(out, task, data, modalities=reads, decision=decision)
    quantization = quantize_int8(out, task, data, float_metrics=metrics) if int8 else None
    weights = out.with_suffix(".pt")
    torch.save(
        {**{key: state[key] for key in ("model", "model_kwargs", "task", "state_dict")}, "grid": task.grid},
        weights,
    )
    card = model_card(
        state,
        task,
        out,
        weights,
        version=version,
        parity_diff=diff,
        training_data=training_data,
        metrics=metrics,
        prototypes=prototypes,
    )
    if quantization is not None:
        card["int8"] = quantization
    if calibration is not None:
        card["decision"] = calibration.pop("decision")
        card["calibration"] = calibration
    card = json_safe(card)
    parse_card(card, f"the card of {out.name}")  # a card the service would refuse is not written
    out.with_suffix(".json").write_text(json.dumps(card, indent=2, allow_nan=False))
    return card


def unshare_gemm_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every Gemm its own copy of a weight it shares with another node.

    CBAM's channel MLP is one Linear applied to the average- and the max-pooled descriptor,
    so two Gemm nodes read one initializer; the quantizer turns each Gemm into a MatMul by
    transposing its weight in place, which transposes a shared weight twice.
    """
    initializers = {t.name: t for t in model.graph.initializer}
    uses = Counter(name for node in model.graph.node for name in node.input if name in initializers)
    for node in model.graph.node:
        if node.op_type != "Gemm":
            continue
        for position, name in enumerate(node.input):
            if uses.get(name, 0) > 1:
                copy = onnx.TensorProto()
                copy.CopyFrom(initializers[name])
                copy.name = f"{name}__{node.name}"
                model.graph.initializer.append(copy)
                node.input[position] = copy.name
    return model


def quantize_int8(
    path: Path, task: TaskSpec, data: Path | None, float_metrics: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Dynamic int8 quantization of weights (ONNX Runtime), and what it costs in accuracy.

    Reports the max |logit difference| against the float model on random inputs and, with
    `data`, the test macro AUC of both and the drop.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = path.with_suffix(".int8.onnx")
    unshared = path.with_suffix(".unshared.onnx")
    onnx.save(unshare_gemm_weights(onnx.load(str(path))), str(unshared))
    try:
        quantize_dynamic(str(unshared), str(target), weight_type=QuantType.QInt8)
    finally:
        unshared.unlink(missing_ok=True)
    image, present = example_inputs(task, batch=2, seed=11)
    feeds = {"image": image.numpy(), "present": present.numpy()}
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
    quantized = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[
        0
    ]
    report: dict[str, Any] = {
        "file": target.name,
        "sha256": sha256_of(target),
        "bytes": target.stat().st_size,
        "float_bytes": path.stat().st_size,
        "max_abs_logit_diff": float(np.max(np.abs(reference - quantized))),
    }
    if data is not None and float_metrics:
        test = [r for r in read_records(task.name, data) if r.split == "test" and r.label is not None]
        labels, probs = predict_records(Predictor(target, task), test)
        float_auc = float_metrics["test"]["macro_auc"]
        report["test_macro_auc"] = macro_auc(labels, probs)
        report["float_test_macro_auc"] = float_auc
        report["auc_drop"] = float_auc - report["test_macro_auc"]
    log.info("int8 model %s: %s", target, report)
    return report


def model_card(
    state: Mapping[str, Any],
    task: TaskSpec,
    onnx_path: Path,
    weights_path: Path,
    *,
    version: str,
    parity_diff: float,
    training_data: Mapping[str, Any] | None,
    metrics: Mapping[str, Any] | None,
    prototypes: Mapping[str, Any] | None,
) -> dict[str, Any]:
    config = state.get("config", {})
    return {
        "name": onnx_path.stem,
        "version": version,
        "task": task.name,
        "description": task.description,
        "architecture": state["model"],
        "model_kwargs": state["model_kwargs"],
        "role": state.get("role", "student"),
        "classes": list(task.classes),
        "modalities": list(task.modalities),
        "required_modalities": list(task.required),
        # The modalities the network was trained on (the others are zero channels for it).
        "reads_modalities": list(config.get("input_modalities") or task.modalities),
        "input": {
            "layout": "image [N, M, D, H, W] float32; present [N, M] float32 (1 = modality given)",
            "spacing_mm": list(task.spacing_mm),
            "shape": list(task.shape),
            "grid": task.grid,
        },
        "outputs": {
            "logits": "[N, C]",
            "attention": "[N, 1, d, h, w] CBAM3D spatial attention of the last stage, in [0, 1]",
            "features": "[N, F, d, h, w] last-stage features",
        },
        "preprocessing": (
            "models.contract.prepare_input: RAS+ grid of the task's spacing and shape centred on the "
            + (
                "reference modality's foreground"
                if task.grid == "whole"
                else f"largest lesion of the mask (lesion labels: {task.lesion_labels}), which is required"
            )
            + f"; trilinear resampling; CT window {list(task.ct_window_hu)} HU "
            f"to [0, 1]; PET SUV / {task.pet_suv_scale} clipped to [0, 4]; MRI z-scored inside the "
            "foreground; missing modalities are zero channels with present = 0"
        ),
        "training_data": dict(training_data or {"synthetic": None, "description": "not recorded"}),
        "training": {
            key: config.get(key)
            for key in (
                "seed",
                "epochs",
                "batch_size",
                "lr",
                "loss",
                "teachers",
                "temperature",
                "alpha",
                "rgd_weight",
                "teacher_weights",
                "modality_dropout",
                "modality_dropout_weights",
                "low_dose",
                "low_dose_prob",
                "ema_decay",
                "select_from_epoch",
                "attention_supervision",
                "input_modalities",
            )
            if key in config
        },
        "metrics": dict(metrics or state.get("metrics") or {}),
        "onnx_file": onnx_path.name,
        "onnx_sha256": sha256_of(onnx_path),
        "onnx_opset": OPSET,
        "weights_file": weights_path.name,
        "parity": {"max_abs_logit_diff": parity_diff, "runtime": f"onnxruntime {ort.__version__}"},
        "prototypes": dict(prototypes or {}),
        "intended_use": INTENDED_USE,
        "git_commit": state.get("git_commit", "unknown"),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------- segmenters

SEGMENTER_INPUT = "image"
SEGMENTER_OUTPUT = "logits"


def _export_stage(
    state: Mapping[str, Any], path: Path, shape: tuple[int, int, int, int], tolerance: float
) -> float:
    """One stage's network to ONNX (a dynamic batch of windows of `shape`: channels, *roi),
    checked; its parity."""
    model = model_from_checkpoint(state)
    generator = torch.Generator().manual_seed(0)
    torch.onnx.export(
        model,
        (torch.rand((2, *shape), generator=generator),),
        str(path),
        input_names=[SEGMENTER_INPUT],
        output_names=[SEGMENTER_OUTPUT],
        opset_version=OPSET,
        dynamic_axes={SEGMENTER_INPUT: {0: "batch"}, SEGMENTER_OUTPUT: {0: "batch"}},
        dynamo=False,
    )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (1, 3):
        x = torch.rand((batch, *shape), generator=generator)
        smooth = torch.nn.functional.avg_pool3d(x, 9, stride=1, padding=4)
        for window in (x, smooth):
            with torch.no_grad():
                expected = model(window).numpy()
            got = session.run([SEGMENTER_OUTPUT], {SEGMENTER_INPUT: window.numpy()})[0]
            worst = max(worst, float(np.max(np.abs(expected - got))))
    if worst > tolerance:
        raise ExportError(
            f"{path.name}: ONNX Runtime differs from PyTorch by {worst:.2e} (tolerance {tolerance:.0e})"
        )
    return worst


def export_segmenter(
    coarse: Mapping[str, Any] | Path,
    fine: Mapping[str, Any] | Path | None,
    out: Path,
    *,
    version: str = "0.1.0",
    training_data: Mapping[str, Any] | None = None,
    report: Mapping[str, Any] | None = None,
    lesion_threshold: Mapping[str, Any] | None = None,
    tolerance: float = 5e-3,
) -> dict[str, Any]:
    """Write a segmenter's NAME.onnx (coarse stage), NAME.fine.onnx (HCC's fine stage; a
    task with one grid has none: `fine` None) and NAME.json (its card).

    `lesion_threshold` (`training.segmentation_report.tune_lesion_threshold`'s answer) puts
    the chosen threshold and its validation table in the card; without it, the argmax.

    The tolerance bounds the largest of some 10 million logits (3 labels over four 96^3
    windows of each kind); float32 sums over 256-channel convolutions differ by about 1e-3
    between runtimes there, far below what moves an argmax of softmax probabilities.

    Each graph takes windows ``image`` [N, channels, *roi] (dynamic batch) and gives ``logits``
    [N, L, *roi]; the service runs them window by window (`models.segmenter.segment`).
    Parity with PyTorch is checked on random and on smooth random windows at batch 1 and 3
    (not on constant ones: instance norm divides a constant window's zero spread by its
    epsilon, where any two runtimes differ). `report`
    (`training.segmentation_report.evaluate_segmenter`) puts its Dice and detection numbers,
    with their intervals, on the card.
    """
    from models.segmenter import get_segmenter_spec

    states = {
        name: torch.load(c, map_location="cpu", weights_only=False) if isinstance(c, Path) else c
        for name, c in (("coarse", coarse), ("fine", fine))
        if c is not None
    }
    spec = get_segmenter_spec(str(states["coarse"]["task"]))
    if sorted(states) != sorted(spec.stages):
        raise ValueError(
            f"the {spec.task} segmenter has the stages {list(spec.stages)}, got {sorted(states)}"
        )
    for name, state in states.items():
        if state.get("stage", "coarse") != name or state["task"] != spec.task:
            found = state.get("stage", "coarse")
            raise ValueError(f"the {name} checkpoint is of stage {found!r} and task {state['task']!r}")
    out = Path(out)
    if out.suffix != ".onnx":
        raise ValueError(f"output must end in .onnx, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = {"coarse": out, "fine": out.with_suffix(".fine.onnx")}
    intensity = (
        f"piecewise linear intensities {[list(k) for k in spec.intensity_knots]}"
        if spec.intensity_knots
        else "each sequence z-scored over its foreground (models.contract.standardize_foreground)"
    )
    stages: dict[str, Any] = {}
    for name in spec.stages:
        stage = spec.stage(name)
        diff = _export_stage(states[name], paths[name], (spec.channels, *stage.roi), tolerance)
        config = states[name].get("config", {})
        stages[name] = {
            "onnx_file": paths[name].name,
            "onnx_sha256": sha256_of(paths[name]),
            "architecture": states[name]["model"],
            "model_kwargs": states[name]["model_kwargs"],
            "spacing_mm": list(stage.spacing_mm),
            "roi": list(stage.roi),
            "margin_mm": stage.margin_mm,
            "max_shape": list(stage.max_shape),
            "parity": {"max_abs_logit_diff": diff, "runtime": f"onnxruntime {ort.__version__}"},
            "training": {
                key: config.get(key)
                for key in ("seed", "steps", "batch_size", "lr", "data", "window_centres")
                if key in config
            },
            "selected": states[name].get("metrics", {}),
            "git_commit": states[name].get("git_commit", "unknown"),
        }
        log.info("exported the %s stage %s: max |logit difference| %.2e", name, paths[name], diff)
    card = {
        "name": out.stem,
        "version": version,
        "task": spec.task,
        "role": "segmenter",
        "serves": f"the {spec.task!r} grader: its mask places the grader's crop and gives its regions",
        "description": f"{spec.task} {' / '.join(spec.labels[1:])} segmentation from "
        f"{' / '.join(spec.modalities)}",
        "labels": list(spec.labels),
        "label_values": spec.label_values().tolist(),
        "regions": list(spec.regions),
        "modalities": list(spec.modalities),
        "input": {
            "layout": f"{SEGMENTER_INPUT} [N, {spec.channels}, D, H, W] float32 windows (each stage's roi), "
            f"channels {list(spec.modalities)}, a missing one zeros",
            "intensity": intensity,
        },
        "outputs": {SEGMENTER_OUTPUT: f"[N, {spec.num_labels}, D, H, W] over labels {list(spec.labels)}"},
        "stages": stages,
        "preprocessing": (
            "models.segmenter.segment: coarse stage on an RAS+ grid over the "
            f"{spec.modalities[0]} foreground's box"
            + (", fine stage on a finer grid over the box of the coarse organ" if spec.fine else "")
            + f" (the stages' spacing, margin and largest shape above); trilinear resampling; {intensity}"
        ),
        "postprocessing": (
            "Gaussian-blended windows (overlap 0.25), softmax; the last label's odds weighed so that "
            "lesion_threshold becomes one half (weigh_lesion); labels_from_probabilities: the largest "
            "26-connected structure, holes filled, nothing outside it, components of the last label under "
            f"{spec.min_lesion_ml} ml dropped"
            + ("; the fine organ kept within one coarse voxel of the coarse one" if spec.fine else "")
        ),
        "training_data": dict(training_data or {"synthetic": None, "description": "not recorded"}),
        "metrics": dict(report or {}),
        "lesion_threshold": lesion_threshold["threshold"] if lesion_threshold else None,
        "lesion_threshold_tuning": dict(lesion_threshold or {}),
        # The coarse graph is the model's file for the generic checks (sha256 at load).
        "onnx_file": paths["coarse"].name,
        "onnx_sha256": stages["coarse"]["onnx_sha256"],
        "onnx_opset": OPSET,
        "intended_use": INTENDED_USE,
        "git_commit": states[spec.stages[-1]].get("git_commit", "unknown"),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    card = json_safe(card)
    parse_card(card, f"the card of {out.name}")  # a card the service would refuse is not written
    out.with_suffix(".json").write_text(json.dumps(card, indent=2, allow_nan=False))
    return card
