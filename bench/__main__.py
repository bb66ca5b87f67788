"""Run every benchmark of bench/ and write one JSON file and a markdown summary.

    python -m bench [--out reports] [--only networks predict ...]

Each benchmark is its own module printing JSON (`python -m bench.NAME`); this runs them one
after the other in subprocesses, so one's memory and threads do not colour the next, and
gathers their output in ``OUT/bench.json`` and ``OUT/bench.md`` with the command and the
machine's load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = ("networks", "predict", "synth", "difficulty")


def run(name: str) -> dict:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{name}"], capture_output=True, text=True, check=False
    )
    result = {"seconds": round(time.perf_counter() - start, 1), "exit_code": done.returncode}
    try:
        result["result"] = json.loads(done.stdout)
    except json.JSONDecodeError:
        result["error"] = (done.stderr or done.stdout)[-2000:]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("reports"))
    parser.add_argument("--only", nargs="*", choices=BENCHMARKS, default=list(BENCHMARKS))
    args = parser.parse_args()
    report = {
        "command": " ".join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average": os.getloadavg()},
        "benchmarks": {},
    }
    for name in args.only:
        print(f"running bench.{name} ...", file=sys.stderr)
        report["benchmarks"][name] = run(name)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"# Benchmarks\n\n`{report['command']}` on {report['machine']['cpus']} CPUs "
        f"(load average {report['machine']['load_average'][0]:.1f}).\n"
    ]
    for name, entry in report["benchmarks"].items():
        lines.append(f"## {name} ({entry['seconds']} s, exit {entry['exit_code']})\n")
        body = entry.get("result", entry.get("error"))
        lines.append("```json\n" + json.dumps(body, indent=2)[:6000] + "\n```\n")
    (args.out / "bench.md").write_text("\n".join(lines))
    print(json.dumps({name: e["exit_code"] for name, e in report["benchmarks"].items()}))


if __name__ == "__main__":
    main()
