"""DICOM ingestion throughput of the service, in slices per second. Prints JSON.

    python -m bench.ingest [--repeats 5] [--quick]

A generated HCC CT (128 x 128 x 64 voxels; 64 x 64 x 32 with --quick) is written as a
classic single-frame DICOM series (`models.dicom.series_from_volume`) and read back by the
service's own ingestion (`app.ingest.study.build_study`, as `/v1/predict` calls it, with the
service's default limits) in the three shapes a client can send it:

- `files`: one multipart file per slice in the `ct` field;
- `zip`: one zip of the series in the `ct` field;
- `study_zip`: the zip in the `study` field, series assigned to modalities from DICOM tags.

Each is timed `--repeats` times after one warm-up; the median gives slices per second.
HTTP parsing is not included (bench.predict and bench.serve measure the whole request).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from app.ingest.archive import ZipLimits
from app.ingest.study import STUDY_FIELD, IngestLimits, Upload, build_study
from app.settings import Settings
from models.contract import Volume
from models.dicom import series_from_volume
from models.tasks import get_task
from training.data.synth_hcc import generate_hcc_case


def ct_volume(shape: tuple[int, int, int] | None) -> Volume:
    case = generate_hcc_case(0, 0, shape=shape)
    return Volume(case.volumes["ct"].astype(np.float32), case.affines["ct"])


def series_files(volume: Volume) -> list[bytes]:
    """The volume as DICOM Part-10 files, one per slice."""
    out = []
    for ds in series_from_volume(volume, series_description="CT portal venous"):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def zipped(files: list[bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, data in enumerate(files):
            zf.writestr(f"series/{i:04d}.dcm", data)
    return buffer.getvalue()


def default_limits() -> IngestLimits:
    """The limits `/v1/predict` applies with the service's default settings."""
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    return IngestLimits(
        zip=ZipLimits(settings.max_files, settings.max_uncompressed_bytes, settings.max_compression_ratio),
        max_image_bytes=settings.max_uncompressed_bytes,
    )


def median_s(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a smaller CT and 2 repeats (for CI)")
    args = parser.parse_args(argv)
    repeats = 2 if args.quick else args.repeats
    volume = ct_volume((64, 64, 32) if args.quick else None)
    files = series_files(volume)
    archive = zipped(files)
    task, limits = get_task("hcc"), default_limits()
    slices = len(files)
    # As the service reads them: spooled files (in the page cache, as just received).
    spool = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    for i, data in enumerate(files):
        (spool / f"{i:04d}.dcm").write_bytes(data)
    (spool / "ct.zip").write_bytes(archive)
    shapes = {
        "files": {
            "ct": [
                Upload("ct", f"{i:04d}.dcm", "application/dicom", spool / f"{i:04d}.dcm")
                for i in range(slices)
            ]
        },
        "zip": {"ct": [Upload("ct", "ct.zip", "application/zip", spool / "ct.zip")]},
        "study_zip": {STUDY_FIELD: [Upload(STUDY_FIELD, "study.zip", "application/zip", spool / "ct.zip")]},
    }
    results = {}
    try:
        for name, uploads in shapes.items():
            print(f"ingesting as {name} ...", file=sys.stderr, flush=True)
            study = build_study(uploads, task, limits)
            if study.volumes["ct"].array.shape != volume.array.shape:
                raise RuntimeError(
                    f"{name}: read {study.volumes['ct'].array.shape}, sent {volume.array.shape}"
                )
            seconds = median_s(lambda u=uploads: build_study(u, task, limits), repeats)  # type: ignore[misc]
            results[name] = {
                "median_s": round(seconds, 4),
                "slices_per_second": round(slices / seconds, 1),
                "megabytes_per_second": round(sum(len(f) for f in files) / 2**20 / seconds, 1),
            }
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    report = {
        "volume": list(volume.array.shape),
        "slices": slices,
        "series_megabytes": round(sum(len(f) for f in files) / 2**20, 2),
        "zip_megabytes": round(len(archive) / 2**20, 2),
        "repeats": repeats,
        "quick": args.quick,
        "ingest": results,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
