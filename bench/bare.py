"""The floor of a prediction: the served models' own work on plain ONNX Runtime sessions.

What no service can avoid once the image is in memory: the shipped segmenter's cascade
(`models.segmenter.segment`: its resampling and sliding windows), the grader's input
prepared on the mask found (or given: `models.contract.prepare_input`) and the grader's
session run once. `bench.predict` and `bench.realsize` measure the service against it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from models.contract import Volume, prepare_input
from models.segmenter import segment, spec_of_card
from models.tasks import task_of_card

TASK = "hcc"


class BareModels:
    """The shipped segmenter's stages and the grader as plain ONNX Runtime sessions."""

    def __init__(self, model_dir: Path, threads: int) -> None:
        cards = [json.loads(p.read_text()) for p in sorted(model_dir.glob("*.json"))]
        segmenter = next(c for c in cards if c.get("role") == "segmenter" and c.get("task") == TASK)
        # The grader the service puts behind it: the lesion-grid model of the task.
        grader = next(
            c
            for c in cards
            if c.get("role") != "segmenter" and c.get("task") == TASK and task_of_card(c).grid == "lesion"
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1

        def session(name: str) -> ort.InferenceSession:
            return ort.InferenceSession(str(model_dir / name), options, providers=["CPUExecutionProvider"])

        self.spec = spec_of_card(segmenter)
        self.stages = {name: session(s["onnx_file"]) for name, s in segmenter["stages"].items()}
        self.grader = session(grader["onnx_file"])
        self.task = task_of_card(grader)

    def predictor(self, stage: str) -> Callable[[torch.Tensor], torch.Tensor]:
        session = self.stages[stage]

        def predict(windows: torch.Tensor) -> torch.Tensor:
            (logits,) = session.run(["logits"], {"image": windows.numpy().astype(np.float32, copy=False)})
            return torch.from_numpy(logits)

        return predict

    def pipeline(self, ct: Volume, mask: Volume | None = None) -> dict[str, float]:
        """Seconds of each part (`segment_s` only when no `mask` is given), and the lesion's ml."""
        times: dict[str, float] = {}
        if mask is None:
            mark = time.perf_counter()
            predictors = {name: self.predictor(name) for name in self.stages}
            segmentation = segment(predictors, ct, self.spec)  # type: ignore[arg-type]
            times["segment_s"] = time.perf_counter() - mark
            times["lesion_ml"] = segmentation.summary.lesion_ml
            mask = segmentation.as_volume()
        mark = time.perf_counter()
        model_input = prepare_input({"ct": ct}, self.task, lesion=mask)
        times["prepare_s"] = time.perf_counter() - mark
        mark = time.perf_counter()
        self.grader.run(None, {"image": model_input.image[None], "present": model_input.present[None]})
        times["grade_s"] = time.perf_counter() - mark
        return times
