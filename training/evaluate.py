"""Evaluate a checkpoint or an ONNX student on a cohort and write a report.

`predict_records` runs a model over cases (any modality subset); `classification_metrics`
turns probabilities into the numbers of a report: AUC per class and macro with bootstrap
95 % confidence intervals, accuracy, balanced accuracy, macro F1, the confusion matrix,
expected calibration error, and decision curve analysis (net benefit of acting on the model
against treating all and treating none) for the class of most concern (the last one:
poorly differentiated HCC, high-grade glioma).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score
from tqdm.auto import tqdm

from models import TaskSpec, model_from_checkpoint, task_of_card
from models.tasks import labels_of_card
from training.data.dataset import prepare_case
from training.data.readers import CaseRecord, load_case
from training.metrics import auc_ci, expected_calibration_error, macro_auc, per_class_auc
from training.serialization import json_safe

log = logging.getLogger(__name__)


class Predictor:
    """Probabilities from a `.pt` checkpoint (PyTorch) or a `.onnx` student (ONNX Runtime)."""

    def __init__(self, path: Path, task: TaskSpec | None = None) -> None:
        self.path = Path(path)
        if self.path.suffix == ".onnx":
            # The task is in the model card beside the file (or given, before the card exists).
            card_path = self.path.with_suffix(".json")
            card = json.loads(card_path.read_text()) if card_path.exists() else {}
            self.task = task or task_of_card(card)
            # The label rule the service applies (`training.calibration`); None: argmax.
            self.decision: Mapping[str, Any] | None = card.get("decision")
            self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
            self.model = None
        else:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
            self.task = task_of_card(state)
            self.model = model_from_checkpoint(state)
            self.decision = None

    @classmethod
    def for_network(cls, model: torch.nn.Module, task: TaskSpec, name: str) -> Predictor:
        """A predictor over a network in memory (`name` labels its progress bar)."""
        predictor = cls.__new__(cls)
        predictor.path, predictor.task, predictor.model = Path(name), task, model.eval()
        predictor.decision = None
        return predictor

    def __call__(self, image: np.ndarray, present: np.ndarray) -> np.ndarray:
        """image (N, M, D, H, W), present (N, M) -> probabilities (N, C)."""
        if self.model is None:
            logits = self.session.run(["logits"], {"image": image, "present": present})[0]
        else:
            with torch.no_grad():
                logits = self.model(torch.from_numpy(image), torch.from_numpy(present)).logits.numpy()
        z = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def predict_records(
    predictor: Predictor, records: Sequence[CaseRecord], subset: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities over `records`, given only the modalities in `subset`."""
    labels, probs = [], []
    for record in tqdm(records, desc=f"evaluate {predictor.path.name}", leave=False):
        case = load_case(record)
        prepared = prepare_case(case, predictor.task, subset)
        probs.append(predictor(prepared.image[None], prepared.present[None])[0])
        labels.append(case.label)
    return np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64)


def net_benefit(labels: np.ndarray, risk: np.ndarray, thresholds: np.ndarray) -> dict[str, list[float]]:
    """Decision curve: net benefit of the model, of treating all, of treating none.

    ``NB(t) = TP/n - FP/n * t / (1 - t)`` for acting where ``risk >= t`` (Vickers 2006).
    """
    n = len(labels)
    prevalence = labels.mean() if n else 0.0
    model, treat_all = [], []
    for t in thresholds:
        act = risk >= t
        tp = np.sum(act & (labels == 1))
        fp = np.sum(act & (labels == 0))
        odds = t / (1 - t)
        model.append(float(tp / n - fp / n * odds))
        treat_all.append(float(prevalence - (1 - prevalence) * odds))
    return {
        "thresholds": thresholds.tolist(),
        "model": model,
        "treat_all": treat_all,
        "treat_none": [0.0] * len(thresholds),
    }


def predicted_labels(
    probs: np.ndarray, task: TaskSpec, decision: Mapping[str, Any] | None, given: Sequence[str] | None = None
) -> np.ndarray:
    """The labels the service answers for studies holding the modalities `given` (None: all):
    argmax of `probs` times the `decision`'s weights for them (a card's; None: argmax)."""
    card = {"classes": task.classes, "modalities": task.modalities, "decision": decision}
    return np.asarray(labels_of_card(card, probs, given))


def classification_metrics(
    labels: np.ndarray, probs: np.ndarray, task: TaskSpec, decision: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """AUCs and calibration of `probs`; accuracies and the confusion matrix of the labels the
    `decision` rule answers (`predicted_labels`)."""
    predicted = predicted_labels(probs, task, decision)
    low, high = auc_ci(labels, probs)
    concern = task.num_classes - 1
    return {
        "n": len(labels),
        "label_rule": "argmax(probabilities x decision weights)" if decision else "argmax",
        "macro_auc": macro_auc(labels, probs),
        "macro_auc_ci95": [low, high],
        "auc_per_class": dict(zip(task.classes, per_class_auc(labels, probs), strict=True)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
        "confusion_matrix": confusion_matrix(labels, predicted, labels=range(task.num_classes)).tolist(),
        "ece": expected_calibration_error(labels, probs),
        "decision_curve": {
            "class": task.classes[concern],
            **net_benefit((labels == concern).astype(int), probs[:, concern], np.linspace(0.05, 0.95, 19)),
        },
    }


def cohort_evidence(
    onnx_path: Path,
    task: TaskSpec,
    data: Path,
    max_train: int = 120,
    modalities: Sequence[str] | None = None,
    decision: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a model card reports from a cohort: test-split metrics and class prototypes.

    Metrics are those of `classification_metrics` on the test split given every modality the
    model reads (`modalities`, None: all; labels by the card's `decision` rule), plus the
    macro AUC under each allowed modality
    subset of those; prototypes are GW barycenters of supervoxel region graphs of (up to
    `max_train`) training cases.
    """
    from models.topology import case_graph
    from training.data.readers import read_records
    from training.prototypes import class_prototypes

    predictor = Predictor(onnx_path, task)
    records = read_records(task.name, data)
    test = [r for r in records if r.split == "test" and r.label is not None]
    train = [r for r in records if r.split == "train" and r.label is not None][:max_train]

    read = set(modalities or task.modalities)
    labels, probs = predict_records(predictor, test, modalities)
    metrics: dict[str, Any] = {"test": classification_metrics(labels, probs, task, decision), "by_subset": {}}
    for subset in (s for s in task.allowed_subsets() if set(s) <= read):
        y, p = predict_records(predictor, test, subset)
        metrics["by_subset"]["+".join(subset)] = macro_auc(y, p)

    graphs, graph_labels = [], []
    for record in tqdm(train, desc="prototype graphs", leave=False):
        prepared = prepare_case(load_case(record), task, modalities)
        features = predictor.session.run(
            ["features"], {"image": prepared.image[None], "present": prepared.present[None]}
        )[0][0]
        _, graph = case_graph(prepared.image, features)
        graphs.append((graph.distances, graph.weights))
        graph_labels.append(int(record.label))  # train records are labelled (filtered above)
    return metrics, class_prototypes(graphs, graph_labels, task.classes)


def evaluate_model(
    model: Path, data: Path, out: Path, *, split: str = "test", dose: bool = False, missing: bool = False
) -> dict[str, Any]:
    """Evaluate `model` (.pt or .onnx) on the `split` cases of `data`; write the report to `out`.

    `out` receives ``metrics.json``, ``report.md`` and the ROC, decision-curve and
    reliability plots; `dose` adds the macro AUC per CT dose level (the external cohort's
    ``dose`` column), `missing` the macro AUC under every allowed modality subset.
    """
    from training.data.readers import read_records
    from training.plots import plot_decision_curve, plot_reliability, plot_roc, plot_sweep

    predictor = Predictor(Path(model))
    task = predictor.task
    # `all`: every case, for a fresh cohort that no training or selection used.
    records = [r for r in read_records(task.name, data) if split in ("all", r.split) and r.label is not None]
    if not records:
        raise ValueError(f"{data}: no labelled {split!r} cases to evaluate")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    labels, probs = predict_records(predictor, records)
    report: dict[str, Any] = {"model": str(model), "data": str(data), "split": split, "task": task.name}
    report["overall"] = classification_metrics(labels, probs, task, predictor.decision)
    plot_roc(labels, probs, task.classes, out / "roc.png")
    plot_decision_curve(report["overall"]["decision_curve"], out / "decision_curve.png")
    plot_reliability(labels, probs, out / "reliability.png")

    if dose:
        report["by_dose"] = {}
        for level in sorted({r.meta.get("dose", 1.0) for r in records}, reverse=True):
            subset = [r for r in records if r.meta.get("dose", 1.0) == level]
            y, p = predict_records(predictor, subset)
            report["by_dose"][f"{level:g}"] = _summary(y, p, task, predictor.decision, None)
        plot_sweep(report["by_dose"], "CT dose fraction", "AUC against dose", out / "dose.png")
    if missing:
        report["by_subset"] = {}
        for modalities in task.allowed_subsets():
            y, p = predict_records(predictor, records, modalities)
            report["by_subset"]["+".join(modalities)] = _summary(y, p, task, predictor.decision, modalities)
        plot_sweep(report["by_subset"], "modalities given", "AUC by modality subset", out / "missing.png")

    report = json_safe(report)
    (out / "metrics.json").write_text(json.dumps(report, indent=2, allow_nan=False))
    (out / "report.md").write_text(markdown_report(report, task))
    return report


def _summary(
    labels: np.ndarray,
    probs: np.ndarray,
    task: TaskSpec,
    decision: Mapping[str, Any] | None,
    given: Sequence[str] | None,
) -> dict[str, Any]:
    """AUC with its interval, and what the answered labels do: balanced accuracy and the share
    of each class's own cases answered as it (a setting that answers one class for all shows
    here, whatever its AUC)."""
    low, high = auc_ci(labels, probs)
    predicted = predicted_labels(probs, task, decision, given)
    recall = {
        name: float(np.mean(predicted[labels == c] == c)) if np.any(labels == c) else None
        for c, name in enumerate(task.classes)
    }
    return {
        "n": len(labels),
        "macro_auc": macro_auc(labels, probs),
        "macro_auc_ci95": [low, high],
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
        "answered_as_own_class": recall,
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown_report(report: dict[str, Any], task: TaskSpec) -> str:
    """A readable page of `report` (as written to metrics.json)."""
    m = report["overall"]
    lo, hi = m["macro_auc_ci95"]
    lines = [
        f"# Evaluation of `{Path(report['model']).name}`",
        "",
        f"Task `{task.name}`, {m['n']} {report['split']} cases of `{report['data']}`. "
        "Research use only, not for diagnosis.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| macro AUC (95 % CI) | {_fmt(m['macro_auc'])} ({_fmt(lo)} to {_fmt(hi)}) |",
        *(f"| AUC {name} vs rest | {_fmt(v)} |" for name, v in m["auc_per_class"].items()),
        f"| accuracy | {_fmt(m['accuracy'])} |",
        f"| balanced accuracy | {_fmt(m['balanced_accuracy'])} |",
        f"| macro F1 | {_fmt(m['macro_f1'])} |",
        f"| expected calibration error | {_fmt(m['ece'])} |",
        "",
        f"Labels answered by {m.get('label_rule', 'argmax')}, as the service does. "
        "Confusion matrix (rows: truth, columns: prediction):",
        "",
        "| | " + " | ".join(task.classes) + " |",
        "|---" * (task.num_classes + 1) + "|",
        *(
            f"| {name} | " + " | ".join(str(c) for c in row) + " |"
            for name, row in zip(task.classes, m["confusion_matrix"], strict=True)
        ),
        "",
        "![ROC](roc.png) ![Decision curve](decision_curve.png) ![Reliability](reliability.png)",
    ]
    for key, title, figure in (
        ("by_dose", "CT dose", "dose.png"),
        ("by_subset", "Modalities", "missing.png"),
    ):
        if key in report:
            own = " | ".join(f"{c} answered {c}" for c in task.classes)
            lines += [
                "",
                f"## {title}",
                "",
                f"| setting | n | macro AUC (95 % CI) | balanced accuracy | {own} |",
                "|---" * (4 + task.num_classes) + "|",
            ]
            for name, s in report[key].items():
                lo, hi = s["macro_auc_ci95"]
                shares = " | ".join(_fmt(s["answered_as_own_class"][c]) for c in task.classes)
                lines.append(
                    f"| {name} | {s['n']} | {_fmt(s['macro_auc'])} ({_fmt(lo)} to {_fmt(hi)}) | "
                    f"{_fmt(s['balanced_accuracy'])} | {shares} |"
                )
            lines += ["", f"![{title}]({figure})"]
    return "\n".join(lines) + "\n"
