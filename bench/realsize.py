"""Real-size CT studies: the service against the floor, time and memory. Prints JSON.

    python -m bench.realsize [--slices 300 600] [--repeats 5] [--clients 6 16] [--quick]

The study is synthetic anatomy at the size hospitals send: one drawn trunk
(`reactkd synth torso`, an abdomen with a lesion, portal-venous) resampled to 512 x 512
pixels and `--slices` slices over its 27 cm, written as classic single-frame DICOM with
pydicom (uint16 stored, rescale to HU) under shuffled file names.

For each size, in one run, side by side:

- **floor**: what no service can avoid. SimpleITK (GDCM) `ImageSeriesReader` reads the
  series; the shipped segmenter's cascade (`models.segmenter.segment`, its resampling and
  sliding windows) runs on bare ONNX Runtime sessions; the grader's input is prepared on the
  mask found (`models.contract.prepare_input`) and its session run once. Each part is timed.
- **service**: `reactkd serve` on loopback with the shipped demo models, the study posted as
  a zip of the series (`ct` field), as one multipart file per slice (`ct` field, repeated),
  and named by `study_uid` for the service to pull from a real Orthanc over DICOMweb
  (skipped, with the reason, where Orthanc cannot be started). p50/p95 of `--repeats` runs
  after one warm-up, and the server's peak resident memory per study (VmHWM, reset before
  each request through /proc/PID/clear_refs) over its resident memory when ready.
- memory **10 s after** the last request, over the ready level.
- **concurrent clients**: `--clients` clients post the zip at once (one round), as curl
  posts large bodies (`Expect: 100-continue`: the body follows the server's go-ahead): the
  statuses, the time to each final answer's first byte (a refusal's is how long the server
  took to decide) and the server's peak memory.

The ratios (service p50 over floor p50; 600 over 300 slices) are what `reports/bench.md`
carries: both sides ran on this machine in this run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from scipy import ndimage

from bench.bare import TASK, BareModels
from bench.concurrency import peak_rss_mib
from bench.predict import DEFAULT_MODELS, rss_mib, server_seconds, stage_means
from bench.server import start_server, stop
from models.contract import Volume
from models.dicom import series_from_volume
from training.data.synth_torso import generate_torso_case

CASE = (3, 8)
"""(seed, index) of the drawn trunk: abdomen, portal-venous, a 89 ml poorly differentiated lesion."""
MATRIX = 512
QUICK_ARGS = ["--slices", "48", "--repeats", "1", "--clients", "2", "--matrix", "128"]
"""`--quick`: a small series, to show in CI that the benchmark works."""
SETTLE_S = 10.0
"""Seconds after the last request at which memory should be back near the ready level."""


# --------------------------------------------------------------------------- the study


def drawn_ct(slices: int, matrix: int) -> Volume:
    """The trunk's CT resampled (trilinear) to `matrix` x `matrix` x `slices` over its extent."""
    case = generate_torso_case(*CASE, field_of_view="abdomen")
    factors = np.array([matrix, matrix, slices]) / np.array(case.ct.shape)
    array = ndimage.zoom(case.ct.astype(np.float32), factors, order=1, prefilter=False)
    affine = case.affine.copy()
    affine[:3, :3] = case.affine[:3, :3] / factors
    # Keep the first voxel's outer face where it was: shift by half the change of voxel size.
    affine[:3, 3] = case.affine[:3, 3] + (affine[:3, :3] - case.affine[:3, :3]) @ np.full(3, -0.5)
    return Volume(array, affine)


def write_series(volume: Volume, folder: Path, seed: int = 0) -> list[Path]:
    """`volume` as one DICOM file per slice in `folder`, named in shuffled order."""
    folder.mkdir(parents=True, exist_ok=True)
    datasets = series_from_volume(volume, series_description="CT abdomen portal venous")
    names = [f"{i:05d}.dcm" for i in random.Random(seed).sample(range(len(datasets)), len(datasets))]
    paths = []
    for ds, name in zip(datasets, names, strict=True):
        ds.save_as(folder / name, enforce_file_format=True)
        paths.append(folder / name)
    return paths


def zipped(paths: list[Path]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for path in paths:
            zf.write(path, f"series/{path.name}")
    return buffer.getvalue()


# --------------------------------------------------------------------------- the floor


def sitk_read(folder: Path) -> Volume:
    """The series read by SimpleITK (GDCM), as a RAS+ `Volume` in HU (float32)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    array = sitk.GetArrayViewFromImage(image).transpose(2, 1, 0).astype(np.float32)  # (x, y, z)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return Volume(array, np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine)  # LPS -> RAS


def floor_once(folder: Path, models: BareModels) -> dict[str, float]:
    """Seconds of each part of the floor, once."""
    start = time.perf_counter()
    ct = sitk_read(folder)
    times = {"read_s": time.perf_counter() - start, **models.pipeline(ct)}
    times["total_s"] = time.perf_counter() - start
    return times


# --------------------------------------------------------------------------- the service


def reset_peak(pid: int) -> None:
    """Reset the process's VmHWM to its current resident memory (Linux, same user)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def summary_ms(seconds: list[float]) -> dict[str, Any]:
    ordered = sorted(seconds)
    p95 = ordered[max(0, int(np.ceil(0.95 * len(ordered))) - 1)]
    return {
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p95_ms": round(1000 * p95, 1),
        "n": len(ordered),
    }


def timed_requests(
    http: httpx.Client, pid: int, send: Callable[[], httpx.Response], repeats: int, ready_mib: float
) -> dict[str, Any]:
    """`send` once to warm up, then `repeats` times: latency, the server's mean ms per stage
    (its own histograms) and the peak memory per study."""
    first = send()
    if first.status_code != 200:
        raise RuntimeError(f"the service answered {first.status_code}: {first.text[:500]}")
    answer = first.json()
    seconds, peaks = [], []
    before = server_seconds(http)
    for _ in range(repeats):
        reset_peak(pid)
        start = time.perf_counter()
        response = send()
        seconds.append(time.perf_counter() - start)
        if response.status_code != 200:
            raise RuntimeError(f"the service answered {response.status_code}: {response.text[:500]}")
        peaks.append(peak_rss_mib(pid) - ready_mib)
    stages = stage_means(before, server_seconds(http))
    return {
        **summary_ms(seconds),
        "server_stage_ms": {k: round(v, 1) for k, v in stages.items()},
        "peak_rss_over_ready_mib": round(max(peaks), 1),
        "gradable": answer.get("gradable"),
        "label": answer.get("label"),
        "not_gradable": [r.get("code") for r in answer.get("not_gradable", [])],
    }


BOUNDARY = "realsize-boundary"


def multipart(zip_bytes: bytes) -> bytes:
    """The body of `/v1/predict` with task hcc and the zip as its `ct` field."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="task"\r\n\r\n{TASK}\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="ct"; filename="series.zip"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()
    return head + zip_bytes + f"\r\n--{BOUNDARY}--\r\n".encode()


def post_expecting(base: str, body: bytes) -> tuple[int, float, bool]:
    """POST `body` to /v1/predict as curl sends large bodies: headers with `Expect:
    100-continue`, the body only after the server's 100 Continue. A server that refuses
    before reading answers the headers at once, and no byte of the body is sent. Returns the
    status, the seconds from the request to the first byte of the final answer, and whether
    it carried Retry-After."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=600) as sock:
        start = time.perf_counter()
        sock.sendall(
            (
                f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
            ).encode()
        )
        stream = sock.makefile("rb")
        status_line = stream.readline()
        if b" 100 " in status_line:
            while stream.readline() not in (b"\r\n", b""):
                pass  # the 100 Continue's (empty) headers
            sock.sendall(body)
            status_line = stream.readline()
        first_byte = time.perf_counter() - start
        headers = []
        while (line := stream.readline()) not in (b"\r\n", b""):
            headers.append(line.decode("latin-1").lower())
        stream.read()  # the answer's body, until the server closes
    if not status_line:
        return 0, first_byte, False
    return int(status_line.split()[1]), first_byte, any(h.startswith("retry-after:") for h in headers)


def concurrent(base: str, pid: int, zip_bytes: bytes, clients: int) -> dict[str, Any]:
    """`clients` clients post the zip at once: what each got, how fast (refusals timed to
    their first byte), the server's peak memory."""
    body = multipart(zip_bytes)
    results: list[tuple[int, float, bool]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client() -> None:
        barrier.wait()
        try:
            result = post_expecting(base, body)
        except OSError:
            result = (0, 0.0, False)
        with lock:
            results.append(result)

    reset_peak(pid)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    by_status: dict[str, list[float]] = {}
    for status, seconds, _ in results:
        by_status.setdefault(str(status), []).append(seconds)
    return {
        "clients": clients,
        "statuses": {s: len(v) for s, v in sorted(by_status.items())},
        "seconds_by_status": {s: summary_ms(v) for s, v in sorted(by_status.items())},
        "refusals_with_retry_after": sum(1 for s, _, r in results if s == 503 and r),
        "slowest_refusal_ms": round(1000 * max((t for s, t, _ in results if s == 503), default=0.0), 1),
        "peak_rss_mib": round(peak_rss_mib(pid), 1),
    }


def orthanc_with(paths: list[Path]) -> tuple[Any, str] | str:
    """A started Orthanc holding the series, and the study's UID; or why there is none."""
    from bench.orthanc import OrthancServer, OrthancUnavailable, ensure_installed

    try:
        server = OrthancServer(*ensure_installed()).start()
    except (OrthancUnavailable, RuntimeError) as exc:
        return f"no Orthanc: {exc}"
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for path in paths:
            http.post("/instances", content=path.read_bytes()).raise_for_status()
        (study,) = http.get("/studies").json()
        uid = http.get(f"/studies/{study}").json()["MainDicomTags"]["StudyInstanceUID"]
    return server, uid


def service_runs(
    folders: dict[int, tuple[Path, list[Path]]], model_dir: Path, repeats: int, clients: list[int]
) -> dict[str, Any]:
    """The service end to end for each size, then the concurrent rounds on the first size."""
    out: dict[str, Any] = {}
    first = min(folders)
    pacs = orthanc_with(folders[first][1])
    env = {"REACTKD_DICOMWEB_URL": f"{pacs[0].dicomweb_url}"} if isinstance(pacs, tuple) else {}
    with tempfile.TemporaryDirectory() as store:
        process, base = start_server(model_dir, store, None, **env)
        try:
            ready = rss_mib(process.pid)
            out["rss_ready_mib"] = round(ready, 1)
            with httpx.Client(base_url=base, timeout=600) as http:
                for slices, (_, paths) in sorted(folders.items()):
                    body = zipped(paths)
                    files = [("ct", (p.name, p.read_bytes(), "application/dicom")) for p in paths]
                    sizes: dict[str, Any] = {"zip_megabytes": round(len(body) / 1e6, 1)}
                    print(f"service, {slices} slices ...", file=sys.stderr, flush=True)
                    sizes["zip"] = timed_requests(
                        http,
                        process.pid,
                        lambda body=body: http.post(  # type: ignore[misc]
                            "/v1/predict",
                            data={"task": TASK},
                            files=[("ct", ("series.zip", body, "application/zip"))],
                        ),
                        repeats,
                        ready,
                    )
                    sizes["files"] = timed_requests(
                        http,
                        process.pid,
                        lambda files=files: http.post("/v1/predict", data={"task": TASK}, files=files),  # type: ignore[misc]
                        repeats,
                        ready,
                    )
                    if slices == first and isinstance(pacs, tuple):
                        uid = pacs[1]
                        sizes["study_uid"] = timed_requests(
                            http,
                            process.pid,
                            lambda uid=uid: http.post(  # type: ignore[misc]
                                "/v1/predict", json={"task": TASK, "study_uid": uid}
                            ),
                            repeats,
                            ready,
                        )
                    elif slices == first:
                        sizes["study_uid"] = {"skipped": pacs}
                    out[str(slices)] = sizes
            time.sleep(SETTLE_S)
            out["rss_after_settle_over_ready_mib"] = round(rss_mib(process.pid) - ready, 1)
            body = zipped(folders[first][1])
            out["concurrent"] = {}
            for n in clients:
                print(f"service, {n} concurrent clients ...", file=sys.stderr, flush=True)
                out["concurrent"][str(n)] = concurrent(base, process.pid, body, n)
        finally:
            stop(process)
            if isinstance(pacs, tuple):
                pacs[0].cleanup()
    return out


# --------------------------------------------------------------------------- the report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, nargs="+", default=[300, 600])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clients", type=int, nargs="*", default=[6, 16])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODELS)
    parser.add_argument("--matrix", type=int, default=MATRIX, help="pixels along each side of a slice")
    parser.add_argument("--quick", action="store_true", help=f"the same as {' '.join(QUICK_ARGS)}")
    args = parser.parse_args(argv)
    if args.quick:
        args = parser.parse_args([*(argv or sys.argv[1:]), *QUICK_ARGS])
    matrix = args.matrix
    threads = int(os.environ.get("REACTKD_INTRA_OP_THREADS", "1"))
    models = BareModels(args.model_dir, threads)
    result: dict[str, Any] = {"matrix": matrix, "threads": threads, "repeats": args.repeats, "floor": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {}
        for slices in args.slices:
            print(f"writing {matrix}x{matrix}x{slices} ...", file=sys.stderr, flush=True)
            volume = drawn_ct(slices, matrix)
            paths = write_series(volume, Path(tmp) / f"s{slices}")
            folders[slices] = (Path(tmp) / f"s{slices}", paths)
            result["floor"][str(slices)] = {
                "spacing_mm": [round(s, 3) for s in volume.spacing],
                "float32_megabytes": round(volume.array.nbytes / 1e6, 1),
                "dicom_megabytes": round(sum(p.stat().st_size for p in paths) / 1e6, 1),
            }
            del volume
            print(f"floor, {slices} slices ...", file=sys.stderr, flush=True)
            floor_once(folders[slices][0], models)  # warm-up
            runs = [floor_once(folders[slices][0], models) for _ in range(args.repeats)]
            for key in runs[0]:
                result["floor"][str(slices)][key] = round(statistics.median(r[key] for r in runs), 3)
        result["service"] = service_runs(folders, args.model_dir, args.repeats, args.clients)
    result["ratios"] = ratios(result)
    print(json.dumps(result, indent=2))
    return 0


def ratios(result: dict[str, Any]) -> dict[str, float]:
    """Service p50 over floor p50 for each size and way of sending; 600 over 300 slices."""
    out = {}
    for slices, floor in result["floor"].items():
        for way in ("zip", "files", "study_uid"):
            p50 = result["service"].get(slices, {}).get(way, {}).get("p50_ms")
            if p50:
                out[f"{way}_{slices}_over_floor"] = round(p50 / (1000 * floor["total_s"]), 2)
            peak = result["service"].get(slices, {}).get(way, {}).get("peak_rss_over_ready_mib")
            if peak:
                out[f"peak_over_float32_{way}_{slices}"] = round(
                    peak * 2**20 / (floor["float32_megabytes"] * 1e6), 2
                )
    sizes = sorted(result["floor"], key=int)
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        for way in ("zip", "files"):
            a = result["service"][small][way]["p50_ms"]
            b = result["service"][large][way]["p50_ms"]
            out[f"{way}_{large}_over_{small}"] = round(b / a, 2)
        out[f"floor_{large}_over_{small}"] = round(
            result["floor"][large]["total_s"] / result["floor"][small]["total_s"], 2
        )
    return out


if __name__ == "__main__":
    raise SystemExit(main())
