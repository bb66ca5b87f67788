"""Localize, then grade: the segmenter's share of a prediction, beside the grader's. JSON.

    python -m bench.localize [--model-dir app/demo_models] [--repeats 3] [--quick]

Two CTs of one generated benchmark case (`synth_hcc.generate_hcc_case`): the benchmark's own
series (3 mm voxels) and the same anatomy resampled to what a hospital sends, 512 x 512 x
300 voxels (`--quick`: 128 x 128 x 64). For each, one thread, median of `--repeats`:

- ``segment``: the served cascade (`models.segmenter.segment`: both ONNX stages, windows,
  cleaning) on the scan;
- ``grade``: the grader's input on the predicted lesion (`prepare_input`) and its ONNX run;
- ``mask_on_scan``: the mask brought back onto the scan's grid (what the segmentation
  NIfTI and SEG cost, paid by `/v1/explain`, not by `/v1/predict`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from models.contract import Grid, Volume, grid_of, prepare_input, resample
from models.segmenter import labels_on_grid, segment
from models.tasks import TaskSpec, task_of_card
from training.data.synth_hcc import generate_hcc_case
from training.segmentation_report import SegmenterRunner


def scans(quick: bool) -> dict[str, Volume]:
    case = generate_hcc_case(0, 0)
    ct = Volume(case.volumes["ct"].astype(np.float32), case.affines["ct"])
    shape = np.array((128, 128, 64) if quick else (512, 512, 300))
    low, high = ct.world_bounds()
    spacing = (np.asarray(high) - np.asarray(low)) / shape
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = np.asarray(low) + spacing / 2
    grid = Grid(shape=tuple(int(s) for s in shape), affine=affine)  # type: ignore[arg-type]
    hospital = Volume(resample(ct.array, ct.affine, grid, order=1, cval=-1000.0), grid.affine)
    return {"benchmark_series": ct, "x".join(str(s) for s in shape): hospital}


def median_ms(work: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), result


def grade(ct: Volume, mask: Volume, task: TaskSpec, grader: ort.InferenceSession) -> Any:
    """The grader's input on the mask's largest lesion, and its ONNX run."""
    prepared = prepare_input({"ct": ct}, task, lesion=mask)
    return grader.run(None, {"image": prepared.image[None], "present": prepared.present[None]})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=Path("app/demo_models"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()

    runner = SegmenterRunner(args.model_dir / "hcc_segmenter.onnx", threads=1)
    grader_card = json.loads((args.model_dir / "hcc_lesion_student.json").read_text())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    grader = ort.InferenceSession(str(args.model_dir / grader_card["onnx_file"]), options)
    task = task_of_card(grader_card)
    out: dict[str, Any] = {"threads": 1, "repeats": args.repeats, "scans": {}}
    for name, ct in scans(args.quick).items():
        segment_ms, result = median_ms(partial(segment, runner.predictors, ct, runner.spec), args.repeats)

        grade_ms, _ = median_ms(partial(grade, ct, result.as_volume(), task, grader), args.repeats)
        back = partial(labels_on_grid, result.probabilities, result.labels, result.grid, grid_of(ct))
        back_ms, _ = median_ms(back, args.repeats)
        out["scans"][name] = {
            "shape": list(ct.array.shape),
            "spacing_mm": [round(float(s), 3) for s in ct.spacing],
            "lesion_found": bool(result.summary.lesions),
            "segment_ms": segment_ms,
            "grade_ms": grade_ms,
            "segment_share_of_predict": segment_ms / (segment_ms + grade_ms),
            "mask_on_scan_ms": back_ms,
        }
    out["load_average"] = os.getloadavg()[0]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
