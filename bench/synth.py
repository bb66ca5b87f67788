"""Synthetic cohort generation speed: cases per second and bytes on disk per case. Prints JSON.

    python -m bench.synth [--hcc-cases 4] [--brats-cases 2] [--workers 1] [--quick]

One worker by default, so the numbers are per core. BraTS runs on its real 240x240x155 grid.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from training.data.synth_brats import write_brats_cohort
from training.data.synth_hcc import write_hcc_cohort


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.nii.gz"))


def measure(name: str, write, n_cases: int, rows_per_case: int = 1) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write(Path(tmp), n_cases)
        seconds = time.perf_counter() - start
        size = folder_bytes(Path(tmp))
    return {
        "cohort": name,
        "cases": n_cases,
        "seconds": round(seconds, 2),
        "cases_per_second": round(n_cases / seconds, 3),
        "bytes_per_case": int(size / n_cases),
        "bytes_per_row": int(size / (n_cases * rows_per_case)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hcc-cases", type=int, default=4)
    parser.add_argument("--brats-cases", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="one case of each cohort (for CI)")
    args = parser.parse_args()
    if args.quick:
        args.hcc_cases = args.brats_cases = 1
    opts = {"workers": args.workers, "progress": False}
    results = [
        measure("hcc", lambda out, n: write_hcc_cohort(out, n, 0, **opts), args.hcc_cases),
        measure(
            "hcc_external_5_doses",
            lambda out, n: write_hcc_cohort(out, n, 0, external=True, **opts),
            args.hcc_cases,
            rows_per_case=5,
        ),
        measure("brats_240x240x155", lambda out, n: write_brats_cohort(out, n, 0, **opts), args.brats_cases),
    ]
    print(json.dumps({"workers": args.workers, "quick": args.quick, "results": results}, indent=2))


if __name__ == "__main__":
    main()
