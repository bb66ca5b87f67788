"""Training step time of every registered network on CPU. Prints JSON.

    python -m bench.train_step [--repeats 5] [--batch 2] [--models hcc_student ...] [--quick]

One step is what the trainers do per batch: forward, cross-entropy on the logits, backward,
`AdamW.step()` (training/train.py's optimizer), at batch 2 on the task's model grid
(`TaskSpec.shape`) with every modality present. One warm-up step, then the median of
`--repeats` steps; also the forward pass alone (no gradients), so a reader sees what the
backward pass and the optimizer add. `--quick` (CI) times one step without warm-up: it shows
that every network trains, not how fast. Threads: PyTorch's default (all cores), printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import torch
from torch import nn

from models import create_model, get_task, list_models


def batch_for(name: str, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (image (N, M, D, H, W), present (N, M), labels (N,)) on the task's grid."""
    task = get_task(name.split("_")[0])
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(batch, task.num_modalities, *task.shape, generator=generator)
    labels = torch.randint(0, len(task.classes), (batch,), generator=generator)
    return image, torch.ones(batch, task.num_modalities), labels


def median_ms(step: Any, repeats: int, warmup: bool = True) -> float:
    if warmup:
        step()  # allocations, oneDNN primitives, optimizer state
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return round(1000.0 * statistics.median(times), 1)


def bench_network(name: str, batch: int, repeats: int, warmup: bool = True) -> dict[str, Any]:
    torch.manual_seed(0)
    model: nn.Module = create_model(name).train()
    image, present, labels = batch_for(name, batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(image, present).logits, labels)
        loss.backward()
        optimizer.step()

    def forward() -> None:
        with torch.no_grad():
            model(image, present)

    step_ms = median_ms(step, repeats, warmup)
    forward_ms = median_ms(forward, repeats, warmup)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "input_shape": list(image.shape),
        "step_ms": step_ms,
        "forward_ms": forward_ms,
        "steps_per_second": round(1000.0 / step_ms, 3),
        "samples_per_second": round(1000.0 * batch / step_ms, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=list_models(), help="registered names")
    parser.add_argument("--quick", action="store_true", help="1 step per network, no warm-up (for CI)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models) - set(list_models()))
    if unknown:
        parser.error(f"unknown models {unknown}; registered: {list_models()}")
    repeats = 1 if args.quick else args.repeats
    started = time.perf_counter()
    results = {}
    for name in args.models:
        print(f"training steps of {name} ...", file=sys.stderr, flush=True)
        results[name] = bench_network(name, args.batch, repeats, warmup=not args.quick)
    report = {
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "batch": args.batch,
            "repeats": repeats,
            "warmup": not args.quick,
            "optimizer": "AdamW",
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
        "quick": args.quick,
        "networks": results,
        "total_s": round(time.perf_counter() - started, 1),
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
