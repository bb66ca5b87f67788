"""Run every benchmark of bench/ and write one JSON file and a markdown summary.

    python -m bench [--out reports] [--only networks predict ...] [--quick] [--merge]

Each benchmark is its own module printing JSON (`python -m bench.NAME`); this runs them one
after the other in subprocesses, so one's memory and threads do not colour the next, and
gathers their output in ``OUT/bench.json`` (everything each printed) and ``OUT/bench.md``
(tables of the key numbers, with the command and the machine's load average). `--quick`
runs each in its short CI version (`--quick`, or `--repeats 2` for bench.predict); its
numbers show the benchmarks work, not how fast the service is.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCHMARKS = (
    "networks",
    "predict",
    "localize",
    "concurrency",
    "realsize",
    "ingest",
    "train_step",
    "synth",
    "difficulty",
)
QUICK_ARGS = {"predict": ["--repeats", "2"]}
"""Arguments of a benchmark's short version, where it is not `--quick`."""
TIMEOUT_S = {"full": 3600, "quick": 300}
"""Most seconds one benchmark may run before it is stopped (and reported as failed)."""


def run(name: str, quick: bool) -> dict[str, Any]:
    args = QUICK_ARGS.get(name, ["--quick"]) if quick else []
    command = [sys.executable, "-m", f"bench.{name}", *args]
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
            timeout=TIMEOUT_S["quick" if quick else "full"],
        )
        code, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        partial = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        code, stdout, stderr = -9, "", f"stopped after {exc.timeout} s\n{partial}"
    result: dict[str, Any] = {
        "command": " ".join(["python", "-m", f"bench.{name}", *args]),
        "seconds": round(time.perf_counter() - start, 1),
        "exit_code": code,
    }
    try:
        result["result"] = json.loads(stdout)
    except json.JSONDecodeError:
        result["error"] = (stderr or stdout)[-2000:]
    if code != 0 and "error" not in result:
        result["error"] = stderr[-2000:]
    return result


# --- markdown -------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def md_networks(r: dict[str, Any]) -> str:
    out = ["Teacher over student latency (batch 1, the task's grid) and ONNX Runtime over PyTorch:\n"]
    rows = []
    for task, by_threads in r["ratios"].items():
        for threads, x in by_threads.items():
            rows.append(
                [
                    task,
                    threads,
                    x["teacher_over_student_torch"],
                    x["teacher_over_student_ort"],
                    x["student_ort_over_torch"],
                ]
            )
    out.append(
        table(
            ["task", "threads", "teacher/student PyTorch", "teacher/student ORT", "student ORT/PyTorch"],
            rows,
        )
    )
    rows = []
    for name, n in r["networks"].items():
        for threads, lat in n["latency_by_threads"].items():
            rows.append([name, threads, n["parameters"], n["macs"] / 1e9, lat["torch_ms"], lat["ort_ms"]])
    out.append(table(["network", "threads", "parameters", "GMACs", "PyTorch ms", "ORT ms"], rows))
    return "\n".join(out)


def md_predict(r: dict[str, Any]) -> str:
    rows = [
        [key.removeprefix("predict_"), v["p50_ms"], v["p95_ms"], v["n"]]
        for key, v in r.items()
        if key.startswith(("predict_", "floor_")) and isinstance(v, dict) and "p50_ms" in v
    ]
    ratios = [[key.removeprefix("ratio_"), v] for key, v in r.items() if key.startswith("ratio_")]
    overheads = [[key, ms] for key, ms in r.get("overhead_p50_ms", {}).items()]
    rss = r.get("server_rss_mib", {})
    return "\n".join(
        [
            f"One request at a time, CT {r.get('volume')}, {r.get('threads')} inference thread(s); "
            "`floor_*`: the same models on bare ONNX Runtime from the NIfTI bytes (`bench.bare`: "
            "nibabel read, segmenter unless the mask is sent, prepare, grade):\n",
            table(["sent as", "p50 ms", "p95 ms", "requests"], rows),
            table(["service p50 over its floor p50", "ms"], overheads),
            table(["ratio", "value"], ratios),
            f"Server resident memory: {_fmt(rss.get('after_warmup'))} MiB after warm-up, "
            f"{_fmt(rss.get('after_run'))} MiB after the run.\n",
        ]
    )


def md_localize(r: dict[str, Any]) -> str:
    rows = [
        [
            name,
            "x".join(map(str, x["shape"])),
            x["segment_ms"],
            x["grade_ms"],
            f"{100 * x['segment_share_of_predict']:.0f} %",
            x["mask_on_scan_ms"],
        ]
        for name, x in r["scans"].items()
    ]
    return "\n".join(
        [
            f"Localize, then grade: the segmenter beside the grader, {r['threads']} thread, median of "
            f"{r['repeats']}; the mask back on the scan's grid is paid by `/v1/explain`:\n",
            table(["scan", "voxels", "segment ms", "grade ms", "segmenter's share", "mask on scan ms"], rows),
        ]
    )


def md_concurrency(r: dict[str, Any]) -> str:
    rows = [
        [
            clients,
            x["ok_200"],
            x["busy_503"],
            sum(x["other_statuses"].values()) + x["transport_errors"],
            x["p50_ms"],
            x["p95_ms"],
            x["p99_ms"],
            x["throughput_rps"],
            x["attempts_per_second"],
        ]
        for clients, x in r["levels"].items()
    ]
    memory = r["server_memory_mib"]
    return "\n".join(
        [
            f"`/v1/predict` with CT {r['volume']} as NIfTI, {r['seconds_per_level']:g} s per level, "
            f"{r['max_concurrent_inferences']} inferences at once (then 503 + Retry-After):\n",
            table(
                [
                    "clients",
                    "200",
                    "503",
                    "other",
                    "p50 ms",
                    "p95 ms",
                    "p99 ms",
                    "throughput req/s",
                    "attempts/s",
                ],
                rows,
            ),
            f"Server peak resident memory (VmHWM): **{_fmt(memory['peak_rss'])} MiB** "
            f"({_fmt(memory['rss_after_ready'])} MiB when ready).\n",
            *(
                f"With {n} workers (`reactkd serve --workers {n}`), throughput over "
                f"{r.get('workers', 1)} at each level: "
                + ", ".join(f"{level} clients x{ratio}" for level, ratio in ratios.items())
                + "; p99 ms: "
                + ", ".join(
                    f"{level} clients {_fmt(x['p99_ms'])}"
                    for level, x in r["by_workers"][n]["levels"].items()
                )
                + ".\n"
                for n, ratios in r.get("throughput_over_first_workers", {}).items()
            ),
        ]
    )


def md_realsize(r: dict[str, Any]) -> str:
    floor, service = r["floor"], r["service"]
    rows = []
    for slices, f in floor.items():
        shape = f"{r['matrix']}x{r['matrix']}x{slices}"
        rows.append(
            [
                shape,
                "floor (SimpleITK read + models on bare ONNX Runtime)",
                1000 * f["total_s"],
                None,
                None,
                None,
            ]
        )
        for way, x in service.get(slices, {}).items():
            if isinstance(x, dict) and "p50_ms" in x:
                rows.append(
                    [
                        shape,
                        f"service, {way}",
                        x["p50_ms"],
                        x["p95_ms"],
                        x["p50_ms"] / (1000 * f["total_s"]),
                        x["peak_rss_over_ready_mib"],
                    ]
                )
    parts = [
        f"One study at a time, median of {r['repeats']} after a warm-up, {r['threads']} inference thread; "
        "the floor's parts (ms): "
        + "; ".join(
            f"{s} slices: read {1000 * f['read_s']:.0f}, segment {1000 * f['segment_s']:.0f}, "
            f"prepare {1000 * f['prepare_s']:.0f}, grade {1000 * f['grade_s']:.0f}"
            for s, f in floor.items()
        )
        + ":\n",
        table(["study", "sent as", "p50 ms", "p95 ms", "over floor", "peak MiB over ready"], rows),
        f"Resident memory when ready {_fmt(service['rss_ready_mib'])} MiB; 10 s after the last study "
        f"{_fmt(service['rss_after_settle_over_ready_mib'])} MiB over it. Float32 volumes: "
        + ", ".join(f"{s} slices {_fmt(f['float32_megabytes'])} MB" for s, f in floor.items())
        + ".\n",
    ]
    rows = [
        [
            n,
            ", ".join(f"{k}: {v}" for k, v in x["statuses"].items()),
            x["seconds_by_status"].get("200", {}).get("p50_ms"),
            x["slowest_refusal_ms"],
            x["refusals_with_retry_after"],
            x["peak_rss_mib"],
        ]
        for n, x in service.get("concurrent", {}).items()
    ]
    parts.append(
        table(
            [
                "clients at once",
                "statuses",
                "p50 ms of 200s",
                "slowest 503 ms",
                "503s with Retry-After",
                "peak MiB",
            ],
            rows,
        )
    )
    parts.append(table(["ratio", "value"], [[k, v] for k, v in r["ratios"].items()]))
    return "\n".join(parts)


def md_ingest(r: dict[str, Any]) -> str:
    rows = [
        [shape, x["slices_per_second"], x["megabytes_per_second"], x["median_s"]]
        for shape, x in r["ingest"].items()
    ]
    return "\n".join(
        [
            f"A CT series of {r['slices']} slices ({r['volume']}, {r['series_megabytes']} MB) read by "
            "`build_study`:\n",
            table(["sent as", "slices/s", "MB/s", "median s"], rows),
        ]
    )


def md_train_step(r: dict[str, Any]) -> str:
    env = r["environment"]
    rows = [
        [
            name,
            n["parameters"],
            "x".join(map(str, n["input_shape"])),
            n["step_ms"],
            n["forward_ms"],
            n["samples_per_second"],
        ]
        for name, n in r["networks"].items()
    ]
    return "\n".join(
        [
            f"Forward + backward + {env['optimizer']} step at batch {env['batch']}, "
            f"{env['threads']} threads:\n",
            table(["network", "parameters", "input", "step ms", "forward ms", "samples/s"], rows),
        ]
    )


def md_synth(r: dict[str, Any]) -> str:
    rows = [
        [x["cohort"], x["cases"], x["seconds"], x["cases_per_second"], x["bytes_per_case"] / 2**20]
        for x in r["results"]
    ]
    return table(["cohort", "cases", "seconds", "cases/s", "MB per case"], rows)


def md_difficulty(r: dict[str, Any]) -> str:
    rows = [[features, auc] for features, auc in r["macro_ovr_auc"].items()]
    brats = r["brats"]
    brats_rows = [[name, auc, brats["balanced_accuracy"][name]] for name, auc in brats["auc"].items()]
    return "\n".join(
        [
            f"{r['cases']} synthetic HCC cases ({r['grade_counts']}), 5-fold CV macro AUC:\n",
            table(["features", "macro AUC"], rows),
            f"\n{brats['cases']} synthetic BraTS cases ({brats['grade_counts']}), 5-fold CV:\n",
            table(["sequences", "AUC", "balanced accuracy"], brats_rows),
        ]
    )


SECTIONS: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "networks": ("Student against teachers; ONNX Runtime against PyTorch", md_networks),
    "predict": ("`/v1/predict`, one request at a time", md_predict),
    "localize": ("The segmenter's share of a prediction", md_localize),
    "concurrency": ("`/v1/predict` under concurrent clients; peak memory", md_concurrency),
    "realsize": ("Real-size CT studies against the floor", md_realsize),
    "ingest": ("DICOM ingestion", md_ingest),
    "train_step": ("Training step per network", md_train_step),
    "synth": ("Synthetic cohort generation", md_synth),
    "difficulty": ("Difficulty of the synthetic benchmarks", md_difficulty),
}


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        "# Benchmarks\n",
        f"`{report['command']}` on {machine['cpus']} CPUs ({machine['platform']}), "
        f"load average {machine['load_average'][0]:.1f} at the start; "
        f"{'**quick (CI) versions: not measurements of speed**' if report['quick'] else 'full versions'}. "
        "Everything each benchmark printed is in `bench.json`.\n",
        table(
            ["benchmark", "command", "exit", "seconds", "ran at (load average)"],
            [
                [
                    f"[{n}](#{n})",
                    f"`{e['command']}`",
                    e["exit_code"],
                    e["seconds"],
                    f"{e['ran_at']} ({e['load_average']:.1f})" if "ran_at" in e else None,
                ]
                for n, e in report["benchmarks"].items()
            ],
        ),
    ]
    for name, entry in report["benchmarks"].items():
        title, render = SECTIONS.get(name, (name, None))  # type: ignore[arg-type]
        lines.append(f'<a id="{name}"></a>\n## {title} (`bench.{name}`)\n')
        if "result" not in entry:
            lines.append(f"Failed (exit {entry['exit_code']}):\n\n```\n{entry.get('error', '')}\n```\n")
            continue
        try:
            lines.append(render(entry["result"]) if render else "")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            lines.append(f"(no summary: unexpected output, {exc!r}; see bench.json)\n")
    return "\n".join(lines)


def merge_into(previous: dict[str, Any], report: dict[str, Any], rerun: list[str]) -> dict[str, Any]:
    """`report` (about to run `rerun`) keeping the other benchmarks of a `previous` report."""
    kept = {name: entry for name, entry in previous["benchmarks"].items() if name not in rerun}
    return {**report, "command": f"{previous['command']}; then {report['command']}", "benchmarks": kept}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("reports"))
    parser.add_argument("--only", nargs="*", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="the short CI version of each benchmark")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other benchmarks of OUT/bench.json; replace only those run (each entry "
        "records when it ran and the load average then)",
    )
    args = parser.parse_args()
    report: dict[str, Any] = {
        "command": " ".join(["python", "-m", "bench", *sys.argv[1:]]),
        "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average": os.getloadavg()},
        "benchmarks": {},
    }
    previous = args.out / "bench.json"
    if args.merge and previous.exists():
        report = merge_into(json.loads(previous.read_text()), report, args.only)
    for name in args.only:
        print(f"running bench.{name} ...", file=sys.stderr, flush=True)
        entry = run(name, args.quick)
        entry.update(ran_at=time.strftime("%Y-%m-%d %H:%M"), load_average=os.getloadavg()[0])
        report["benchmarks"][name] = entry
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2))
    (args.out / "bench.md").write_text(markdown(report))
    codes = {name: e["exit_code"] for name, e in report["benchmarks"].items()}
    print(json.dumps(codes))
    raise SystemExit(1 if any(codes.values()) else 0)


if __name__ == "__main__":
    main()
