"""`/v1/predict` latency against the bare ONNX Runtime call, and the service's memory. JSON.

    python -m bench.predict [--repeats 20] [--model-dir app/demo_models]

The service runs as a real `reactkd serve` subprocess on loopback. One generated HCC CT of
128 x 128 x 64 voxels is posted as NIfTI (`.nii`, 4 MiB), as gzipped NIfTI (`.nii.gz`, the
inflate is part of the request) and as a DICOM series (a zip of 64 slices), one request at
a time; in the same run the bench times `session.run` of the served ONNX file on the very
tensor the service built (`prepare_input` of the same volume), and reads the server's
resident memory after warm-up and at the end. Ratios are taken side by side, as this
machine is noisy.

Where the time goes: the service's own Prometheus histograms (`/metrics`), read before and
after each series of requests, give the mean milliseconds per request of each stage
(`receive`: reading the multipart body; `ingest`: decoding into volumes; `preprocess`;
`inference`, with the input `checks` beside it in another thread; `outcome`: response and
files to keep; `save`: files and the SQLite commit) and of the whole route as the server
sees it; the rest of the client's time is HTTP on loopback.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import onnxruntime as ort

from bench.server import start_server, stop
from models.contract import Volume, prepare_input
from models.dicom import series_from_volume
from models.tasks import get_task
from training.data.synth_hcc import generate_hcc_case

DEFAULT_MODELS = Path(__file__).resolve().parent.parent / "app" / "demo_models"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def ct_case() -> Volume:
    case = generate_hcc_case(0, 0)
    return Volume(case.volumes["ct"].astype(np.float32), case.affines["ct"])


def nifti_bytes(volume: Volume) -> bytes:
    image = nib.Nifti1Image(volume.array, volume.affine)
    buffer = io.BytesIO()
    file_map = image.make_file_map({"image": buffer, "header": buffer})
    image.to_file_map(file_map)
    return buffer.getvalue()


def dicom_zip(volume: Volume) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for i, ds in enumerate(series_from_volume(volume)):
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            zf.writestr(f"ct/{i:04d}.dcm", out.getvalue())
    return buffer.getvalue()


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(1000.0 * s for s in seconds)
    return {
        "p50_ms": statistics.median(ms),
        "p95_ms": ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))],
        "n": len(ms),
    }


_SAMPLE = re.compile(r'^reactkd_(stage|request)_seconds_(sum|count)\{(?:stage|route)="([^"]+)"\} (\S+)$')


def server_seconds(client: httpx.Client) -> dict[tuple[str, str], float]:
    """(stage or route, "sum" | "count") -> value, from the service's Prometheus text."""
    out = {}
    for line in client.get("/metrics").text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            _, kind, name, value = match.groups()
            out[(name, kind)] = float(value)
    return out


def stage_means(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]
) -> dict[str, float]:
    """Mean ms per request of each stage (and of the route) between two scrapes."""
    means = {}
    for name, kind in after:
        if kind != "count":
            continue
        count = after[(name, "count")] - before.get((name, "count"), 0.0)
        if count > 0:
            total = after[(name, "sum")] - before.get((name, "sum"), 0.0)
            means["server_total" if name == "/v1/predict" else name] = 1000.0 * total / count
    return {key: means[key] for key in sorted(means) if key in _STAGES or key == "server_total"}


_STAGES = ("receive", "ingest", "localize", "preprocess", "checks", "inference", "outcome", "save")


def time_requests(client: httpx.Client, files: dict, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        response = client.post("/v1/predict", data={"task": "hcc"}, files=files)
        out.append(time.perf_counter() - start)
        response.raise_for_status()
    return out


def bare_onnx(model_dir: Path, volume: Volume, repeats: int, threads: int) -> list[float]:
    card = json.loads((model_dir / "hcc_student.json").read_text())
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        str(model_dir / card["onnx_file"]), options, providers=["CPUExecutionProvider"]
    )
    prepared = prepare_input({"ct": volume}, get_task("hcc"))
    feeds = {"image": prepared.image[None], "present": prepared.present[None]}
    session.run(None, feeds)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feeds)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODELS)
    args = parser.parse_args()

    load_at_start = os.getloadavg()
    volume = ct_case()
    nifti, dicom = nifti_bytes(volume), dicom_zip(volume)
    nifti_gz = gzip.compress(nifti, compresslevel=6)
    threads = 1
    with tempfile.TemporaryDirectory() as store:
        server, base = start_server(args.model_dir, store, REACTKD_INTRA_OP_THREADS=str(threads))
        try:
            with httpx.Client(base_url=base, timeout=120) as client:
                rss_ready = rss_mib(server.pid)
                time_requests(client, {"ct": ("ct.nii", nifti)}, 2)  # warm-up
                times, stages = {}, {}
                for key, files in (
                    ("nifti", {"ct": ("ct.nii", nifti)}),
                    ("nifti_gz", {"ct": ("ct.nii.gz", nifti_gz)}),
                    ("dicom", {"ct": ("ct.zip", dicom)}),
                ):
                    before = server_seconds(client)
                    times[key] = time_requests(client, files, args.repeats)
                    stages[key] = stage_means(before, server_seconds(client))
                rss_end = rss_mib(server.pid)
        finally:
            stop(server)
    bare = bare_onnx(args.model_dir, volume, args.repeats, threads)
    bare_p50 = statistics.median(bare)
    result = {
        "volume": list(volume.array.shape),
        "upload_bytes": {"nifti": len(nifti), "nifti_gz": len(nifti_gz), "dicom_zip": len(dicom)},
        "threads": threads,
        "predict_nifti": percentiles(times["nifti"]),
        "predict_nifti_gz": percentiles(times["nifti_gz"]),
        "predict_dicom_series": percentiles(times["dicom"]),
        "bare_onnxruntime": percentiles(bare),
        "ratio_nifti_p50_to_bare_p50": statistics.median(times["nifti"]) / bare_p50,
        "ratio_nifti_gz_p50_to_bare_p50": statistics.median(times["nifti_gz"]) / bare_p50,
        "ratio_dicom_p50_to_bare_p50": statistics.median(times["dicom"]) / bare_p50,
        "server_stage_mean_ms": stages,
        "server_rss_mib": {"after_warmup": rss_ready, "after_run": rss_end},
        "load_average": os.getloadavg()[0],
        "load_average_1_5_15": {"start": list(load_at_start), "end": list(os.getloadavg())},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
