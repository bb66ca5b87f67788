"""`/v1/predict` latency against the same models on bare ONNX Runtime, and the service's memory. JSON.

    python -m bench.predict [--repeats 20] [--model-dir app/demo_models]

The service runs as a real `reactkd serve` subprocess on loopback. One generated HCC CT of
128 x 128 x 64 voxels is posted as NIfTI (`.nii`, 4 MiB), as gzipped NIfTI (`.nii.gz`, the
inflate is part of the request), as a DICOM series (a zip of 64 slices) and as NIfTI with
the case's own liver and lesion mask (no segmenter: the grader alone), one request at a
time. In the same run the floor (`bench.bare`) does the models' own work from the NIfTI
bytes: nibabel read, the segmenter's cascade unless the mask is given, `prepare_input`, the
grader's session; the service's overhead is its p50 less the floor's. The server's resident
memory is read after warm-up and at the end. Both sides run in one process tree on this
noisy machine, side by side.

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

from bench.bare import BareModels
from bench.server import start_server, stop
from models.contract import Volume
from models.dicom import series_from_volume
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


def case_mask(volume: Volume) -> Volume:
    """The generated case's own liver (1) and lesion (2), as a client would send them."""
    case = generate_hcc_case(0, 0)
    labels = case.masks["liver"].astype(np.uint8)
    labels[case.masks["tumor"] > 0] = 2
    return Volume(labels, volume.affine)


def floor_times(models: BareModels, nifti: bytes, mask: bytes | None, repeats: int) -> list[float]:
    """Seconds of the bare pipeline from NIfTI bytes: read (nibabel), segment unless a mask
    is given, prepare, grade."""

    def read(data: bytes) -> Volume:
        image = nib.Nifti1Image.from_bytes(data)
        return Volume(np.asarray(image.dataobj, dtype=np.float32), image.affine)

    def once() -> float:
        start = time.perf_counter()
        models.pipeline(read(nifti), read(mask) if mask is not None else None)
        return time.perf_counter() - start

    once()  # warm-up
    return [once() for _ in range(repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODELS)
    args = parser.parse_args()

    load_at_start = os.getloadavg()
    volume = ct_case()
    nifti, dicom = nifti_bytes(volume), dicom_zip(volume)
    nifti_gz = gzip.compress(nifti, compresslevel=6)
    mask = nifti_bytes(case_mask(volume))
    threads = 1
    series = {
        "nifti": {"ct": ("ct.nii", nifti)},
        "nifti_gz": {"ct": ("ct.nii.gz", nifti_gz)},
        "dicom_series": {"ct": ("ct.zip", dicom)},
        # The mask sent: no segmenter, the grader alone behind the service's own work.
        "nifti_with_mask": {"ct": ("ct.nii", nifti), "mask": ("mask.nii", mask)},
    }
    with tempfile.TemporaryDirectory() as store:
        server, base = start_server(args.model_dir, store, REACTKD_INTRA_OP_THREADS=str(threads))
        try:
            with httpx.Client(base_url=base, timeout=120) as client:
                rss_ready = rss_mib(server.pid)
                time_requests(client, series["nifti"], 2)  # warm-up
                times, stages = {}, {}
                for key, files in series.items():
                    before = server_seconds(client)
                    times[key] = time_requests(client, files, args.repeats)
                    stages[key] = stage_means(before, server_seconds(client))
                rss_end = rss_mib(server.pid)
        finally:
            stop(server)
    models = BareModels(args.model_dir, threads)
    floors = {
        "nifti": floor_times(models, nifti, None, args.repeats),
        "nifti_with_mask": floor_times(models, nifti, mask, args.repeats),
    }
    p50 = {
        key: statistics.median(t)
        for key, t in {**times, **{f"floor_{k}": v for k, v in floors.items()}}.items()
    }
    result = {
        "volume": list(volume.array.shape),
        "upload_bytes": {
            "nifti": len(nifti),
            "nifti_gz": len(nifti_gz),
            "dicom_zip": len(dicom),
            "mask": len(mask),
        },
        "threads": threads,
        **{f"predict_{key}": percentiles(t) for key, t in times.items()},
        **{f"floor_{key}": percentiles(t) for key, t in floors.items()},
        "overhead_p50_ms": {
            "nifti": 1000.0 * (p50["nifti"] - p50["floor_nifti"]),
            "nifti_gz": 1000.0 * (p50["nifti_gz"] - p50["floor_nifti"]),
            "dicom_series": 1000.0 * (p50["dicom_series"] - p50["floor_nifti"]),
            "nifti_with_mask": 1000.0 * (p50["nifti_with_mask"] - p50["floor_nifti_with_mask"]),
        },
        "ratio_nifti_p50_to_floor_p50": p50["nifti"] / p50["floor_nifti"],
        "ratio_nifti_with_mask_p50_to_floor_p50": p50["nifti_with_mask"] / p50["floor_nifti_with_mask"],
        "server_stage_mean_ms": stages,
        "server_rss_mib": {"after_warmup": rss_ready, "after_run": rss_end},
        "load_average": os.getloadavg()[0],
        "load_average_1_5_15": {"start": list(load_at_start), "end": list(os.getloadavg())},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
