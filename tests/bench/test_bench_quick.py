"""CI's short run of every benchmark: `python -m bench --quick` exits 0, each benchmark prints
the numbers the report is made of (finite and positive), and bench.md summarises them.

The full run, on a quiet machine, is `python -m bench` (writes reports/bench.json and .md).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import merge_into

ROOT = Path(__file__).resolve().parents[2]
LEVELS = ("1", "4", "16")

# Paths into each benchmark's JSON that must hold a finite positive number.
EXPECTED: dict[str, list[tuple[str, ...]]] = {
    "networks": [
        ("ratios", "hcc", "1", "teacher_over_student_torch"),
        ("ratios", "hcc", "1", "teacher_over_student_ort"),
        ("ratios", "hcc", "1", "student_ort_over_torch"),
    ],
    "predict": [
        ("predict_nifti", "p50_ms"),
        ("predict_nifti", "p95_ms"),
        ("predict_dicom_series", "p50_ms"),
        ("predict_nifti_with_mask", "p50_ms"),
        ("floor_nifti", "p50_ms"),
        ("floor_nifti_with_mask", "p50_ms"),
        ("ratio_nifti_p50_to_floor_p50",),
        ("server_rss_mib", "after_run"),
    ],
    "localize": [
        ("scans", scan, key)
        for scan in ("benchmark_series", "128x128x64")
        for key in ("segment_ms", "grade_ms", "segment_share_of_predict", "mask_on_scan_ms")
    ],
    "concurrency": [
        *(("levels", n, key) for n in LEVELS for key in ("p50_ms", "p95_ms", "p99_ms", "throughput_rps")),
        ("server_memory_mib", "peak_rss"),
        ("by_workers", "2", "levels", "16", "p99_ms"),
        ("throughput_over_first_workers", "2", "16"),
    ],
    "realsize": [
        ("floor", "48", "total_s"),
        *(
            ("service", "48", way, key)
            for way in ("zip", "files", "study_uid")
            for key in ("p50_ms", "p95_ms")
        ),
        ("service", "48", "zip", "peak_rss_over_ready_mib"),
        ("service", "concurrent", "2", "peak_rss_mib"),
        ("ratios", "zip_48_over_floor"),
    ],
    "ingest": [("ingest", shape, "slices_per_second") for shape in ("files", "zip", "study_zip")],
    "train_step": [],  # filled per registered network below
    "synth": [],  # a list: checked below
    "difficulty": [
        ("macro_ovr_auc", "ct"),
        ("macro_ovr_auc", "pet"),
        ("brats", "auc", "all"),
        ("brats", "auc", "t1ce"),
    ],
}


def _at(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


def _positive(value: Any) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and math.isfinite(value) and value > 0


def _registered_networks() -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", "import json, models; print(json.dumps(models.list_models()))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=720,
    )
    assert (out / "bench.json").is_file(), done.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    print("\n" + "\n".join(f"bench.{n}: {e['seconds']} s" for n, e in report["benchmarks"].items()))
    assert done.returncode == 0, (done.stdout, done.stderr[-3000:])
    return report, (out / "bench.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_benchmark_runs_and_prints_finite_positive_numbers(
    quick_report: tuple[dict[str, Any], str],
) -> None:
    report, _ = quick_report
    assert report["quick"] is True
    benchmarks = report["benchmarks"]
    assert set(benchmarks) == set(EXPECTED)
    for name, entry in benchmarks.items():
        assert entry["exit_code"] == 0, (name, entry.get("error"))
        assert "result" in entry, (name, entry.get("error"))
        for path in EXPECTED[name]:
            value = _at(entry["result"], path)
            assert _positive(value), (name, path, value)

    steps = benchmarks["train_step"]["result"]["networks"]
    assert set(steps) == set(_registered_networks())
    for network, numbers in steps.items():
        assert _positive(numbers["step_ms"]) and _positive(numbers["forward_ms"]), (network, numbers)

    for cohort in benchmarks["synth"]["result"]["results"]:
        assert _positive(cohort["cases_per_second"]) and _positive(cohort["bytes_per_case"]), cohort

    for clients, level in benchmarks["concurrency"]["result"]["levels"].items():
        # 200s and 503s are counted apart, and every request is accounted for.
        counted = level["ok_200"] + level["busy_503"] + sum(level["other_statuses"].values())
        assert counted + level["transport_errors"] == level["requests"], (clients, level)
        assert level["ok_200"] > 0 and level["other_statuses"] == {}, (clients, level)
        assert level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"], (clients, level)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_markdown_summary_has_a_table_per_benchmark(quick_report: tuple[dict[str, Any], str]) -> None:
    _, md = quick_report
    assert "quick (CI) versions" in md
    for name in EXPECTED:
        assert f"(`bench.{name}`)" in md, name
    assert "no summary" not in md and "Failed (exit" not in md
    for header in (
        "| task | threads | teacher/student PyTorch",
        "| sent as | p50 ms | p95 ms",
        "| clients | 200 | 503 | other | p50 ms | p95 ms | p99 ms | throughput req/s",
        "| sent as | slices/s",
        "| network | parameters | input | step ms",
        "| study | sent as | p50 ms | p95 ms | over floor | peak MiB over ready",
        "| clients at once | statuses |",
        "Server peak resident memory (VmHWM)",
    ):
        assert header in md, header


def test_merge_keeps_the_benchmarks_not_rerun() -> None:
    """`--merge`: a rerun of one benchmark replaces its entry and keeps the others."""
    entries = {"synth": {"seconds": 1}, "localize": {"seconds": 2}}
    previous = {"command": "python -m bench", "benchmarks": entries}
    report = {"command": "python -m bench --only localize --merge", "benchmarks": {}}
    merged = merge_into(previous, report, ["localize"])
    assert merged["benchmarks"] == {"synth": {"seconds": 1}}
    assert merged["command"] == "python -m bench; then python -m bench --only localize --merge"
