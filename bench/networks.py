"""Benchmark every registered network: size, compute and CPU latency in PyTorch and ONNX Runtime.

REACT-KD's point is a light student that keeps the teachers' accuracy; this prints, as JSON
on stdout, what "light" means here: parameters, multiply-accumulates, and the median batch-1
latency at the task's model grid (`TaskSpec.shape`) in PyTorch and in ONNX Runtime (CPU
execution provider, the served runtime), side by side in one run, with the teacher/student
and ORT/PyTorch ratios.

    python -m bench.networks [--repeats 7] [--threads 1 2] [--models hcc_student ...] [--quick]

Other work on the machine inflates multi-threaded latencies of small networks most (their
many short kernels wait for preempted threads); the 1-minute load average is printed so a
reader can tell, and one thread is always measured beside all of them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models import create_model, get_task, list_models

PAIRS = {"hcc": ("hcc_student", "hcc_teacher_sf"), "brats": ("brats_student", "brats_teacher_hybrid")}
"""Student and the teacher it must beat on latency, per task."""


def task_inputs(name: str, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (image (N, M, D, H, W), present (N, M)) on the task's model grid."""
    task = get_task(name.split("_")[0])
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(batch, task.num_modalities, *task.shape, generator=generator)
    return image, torch.ones(batch, task.num_modalities)


def count_macs(model: nn.Module, image: torch.Tensor, present: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass (FLOPs counted by torch / 2).

    oneDNN is switched off meanwhile so convolutions take the aten path the counter knows
    (it does not count `mkldnn_convolution`, which `models.layers` calls in eager mode).
    """
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False), counter:
        model(image, present)
    return counter.get_total_flops() // 2


def median_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: allocations, oneDNN primitives, ORT arenas
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def export_onnx(model: nn.Module, image: torch.Tensor, present: torch.Tensor, path: Path) -> None:
    """The export used by tests/models/test_onnx_export.py: dynamo exporter, opset 18."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (image, present),
            str(path),
            input_names=["image", "present"],
            output_names=["logits", "attention", "features"],
            opset_version=18,
            dynamo=True,
            dynamic_shapes={"image": {0: batch}, "present": {0: batch}},
            external_data=False,
            verbose=False,
        )


def bench_network(name: str, repeats: int, threads: list[int], workdir: Path) -> dict[str, Any]:
    """Parameters, MACs and PyTorch / ONNX Runtime latency of one network at batch 1, for
    each thread count in `threads`."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    image, present = task_inputs(name)
    path = workdir / f"{name}.onnx"
    start = time.perf_counter()
    export_onnx(model, image, present, path)
    export_s = time.perf_counter() - start
    feeds = {"image": image.numpy(), "present": present.numpy()}
    latency: dict[str, dict[str, float]] = {}
    for count in threads:
        torch.set_num_threads(count)
        options = ort.SessionOptions()
        options.intra_op_num_threads = count
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        with torch.inference_mode():
            torch_ms = median_ms(lambda: model(image, present), repeats)
        ort_ms = median_ms(lambda: session.run(None, feeds), repeats)  # noqa: B023
        latency[str(count)] = {
            "torch_ms": round(torch_ms, 2),
            "ort_ms": round(ort_ms, 2),
            "ort_over_torch": round(ort_ms / torch_ms, 3),
        }
    with torch.inference_mode():
        reference = model(image, present).logits.numpy()
    logits = session.run(["logits"], feeds)[0]
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "macs": count_macs(model, image, present),
        "input_shape": list(image.shape),
        "latency_by_threads": latency,
        "onnx_mb": round(path.stat().st_size / 2**20, 3),
        "onnx_max_abs_logit_diff": float(np.abs(logits - reference).max()),
        "export_s": round(export_s, 1),
    }


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, float | bool]]]:
    """Per task and thread count: teacher/student latency in PyTorch and ORT; whether the
    student is >= 10x faster than the teacher in PyTorch and not slower in ORT than PyTorch."""
    out: dict[str, dict[str, dict[str, float | bool]]] = {}
    for task, (student, teacher) in PAIRS.items():
        if student not in results or teacher not in results:
            continue
        out[task] = {}
        for count, s in results[student]["latency_by_threads"].items():
            t = results[teacher]["latency_by_threads"][count]
            speedup = t["torch_ms"] / s["torch_ms"]
            out[task][count] = {
                "teacher_over_student_torch": round(speedup, 2),
                "teacher_over_student_ort": round(t["ort_ms"] / s["ort_ms"], 2),
                "student_ort_over_torch": s["ort_over_torch"],
                "student_10x_faster_than_teacher": speedup >= 10.0,
                "student_ort_not_slower_than_torch": s["ort_ms"] <= s["torch_ms"],
            }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per network and runtime")
    parser.add_argument("--models", nargs="+", default=list_models(), help="registered names")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=sorted({1, torch.get_num_threads()}),
        help="thread counts for PyTorch and ONNX Runtime (default: 1 and all)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="for CI: 1 timed run, 1 thread, only the HCC student and its teacher",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.threads = 1, [1]
        args.models = list(PAIRS["hcc"])
    unknown = sorted(set(args.models) - set(list_models()))
    if unknown:
        parser.error(f"unknown models {unknown}; registered: {list_models()}")
    logging.disable(logging.WARNING)  # the ONNX exporter logs its progress
    started = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            print(f"benchmarking {name} ...", file=sys.stderr, flush=True)
            results[name] = bench_network(name, args.repeats, args.threads, Path(tmp))
    report = {
        "environment": {
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "threads": args.threads,
            "load_average_1min": round(os.getloadavg()[0], 2),
            "batch": 1,
            "repeats": args.repeats,
        },
        "quick": args.quick,
        "networks": results,
        "ratios": ratios(results),
        "total_s": round(time.perf_counter() - started, 1),
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
