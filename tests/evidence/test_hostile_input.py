"""Hostile-input corpus: pydicom's test files and generated attacks, each answered fast and never 5xx."""

from __future__ import annotations

import collections
import gzip
import io
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from app.main import create_app

from .evidence_helpers import DEMO_MODELS, assert_problem, make_settings, slug_of, timed_post, zip_bytes

MAX_SECONDS = 10.0
# Small limits so the zip bomb is refused on the limit, not on memory.
UNCOMPRESSED_LIMIT = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = make_settings(
        DEMO_MODELS,
        tmp_path_factory.mktemp("store"),
        max_uncompressed_bytes=UNCOMPRESSED_LIMIT,
        max_files=20000,
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _tiny_slice(n: int, **tags: object) -> bytes:
    """A header-only CT slice (no PixelData)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.InstanceNumber = n
    ds.ImagePositionPatient = [0, 0, n]
    for key, value in tags.items():
        setattr(ds, key, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _huge_length_dicom() -> bytes:
    """A valid preamble and meta, then an element declaring a 0xFFFFFFF0-byte value."""
    head = _tiny_slice(0)
    # (7FE0,0010) OB, explicit VR: tag, VR, reserved, 4-byte length, then almost nothing.
    return head + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFF0) + b"\0" * 16


def _nifti(value: float) -> bytes:
    array = np.zeros((16, 16, 8), np.float32)
    array[4:8, 4:8, 2:4] = value
    return gzip.compress(nib.Nifti1Image(array, np.diag([8.0, 8, 8, 1])).to_bytes())


def _png() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + b"\0" * 17


def _zip_bomb() -> bytes:
    # 100 MB of zeros deflates to about 100 kB: above the 64 MB limit and the ratio limit.
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf,
        zf.open("bomb.dcm", "w", force_zip64=True) as member,
    ):
        chunk = b"\0" * (1 << 20)
        for _ in range(100):
            member.write(chunk)
    return buffer.getvalue()


def _header_only_series(count: int = 10_000) -> bytes:
    # One slice serialised once; the rest differ only in the zip name (the service sees
    # 10,000 members either way) so building the zip stays well under a second or two.
    slice_bytes = _tiny_slice(1)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for n in range(count):
            zf.writestr(f"s/{n:05d}.dcm", slice_bytes)
    return buffer.getvalue()


def generated_cases() -> list[tuple[str, str, bytes, str]]:
    """(case id, file name, bytes, task)."""
    one = _tiny_slice(1)
    return [
        ("zip-bomb", "bomb.zip", _zip_bomb(), "hcc"),
        ("dotdot-member", "up.zip", zip_bytes({"../x.dcm": one}), "hcc"),
        ("absolute-member", "abs.zip", zip_bytes({"/abs.dcm": one}), "hcc"),
        ("nested-zip", "nested.zip", zip_bytes({"inner.zip": zip_bytes({"a.dcm": one})}), "hcc"),
        ("empty-file", "empty.dcm", b"", "hcc"),
        ("empty-zip-member", "emptymember.zip", zip_bytes({"a.dcm": b""}), "hcc"),
        ("huge-element-length", "huge.dcm", _huge_length_dicom(), "hcc"),
        ("png-as-dcm", "image.dcm", _png(), "hcc"),
        ("nifti-nan", "nan.nii.gz", _nifti(float("nan")), "hcc"),
        ("nifti-inf", "inf.nii.gz", _nifti(float("inf")), "hcc"),
        ("header-only-10000", "headers.zip", _header_only_series(), "hcc"),
        ("wrong-task", "ct.nii.gz", _nifti(1.0), "no-such-task"),
    ]


def _tally(client: TestClient, cases: list[tuple[str, str, bytes, str]]) -> tuple[collections.Counter, dict]:
    counts: collections.Counter = collections.Counter()
    slowest: dict[str, float] = {}
    for case_id, name, data, task in cases:
        response, seconds = timed_post(client, name, data, task)
        assert response.status_code < 500, (case_id, response.status_code, response.text[:300])
        assert seconds < MAX_SECONDS, (case_id, seconds)
        slowest[case_id] = seconds
        if response.status_code == 200:
            counts["accepted"] += 1
        else:
            counts[f"{response.status_code} {slug_of(assert_problem(response))}"] += 1
    return counts, slowest


@pytest.mark.slow
def test_pydicom_test_files_are_answered_fast_and_never_5xx(client: TestClient) -> None:
    paths = [Path(p) for p in pydicom.data.get_testdata_files() if Path(p).is_file()]
    assert len(paths) > 50  # the whole shipped corpus, not a sample
    cases = [(p.name, p.name, p.read_bytes(), "hcc") for p in paths]
    counts, seconds = _tally(client, cases)
    worst = max(seconds, key=seconds.__getitem__)
    print(f"\npydicom corpus: {len(paths)} files, {dict(counts)}; slowest {worst} {seconds[worst]:.2f} s")
    assert sum(counts.values()) == len(paths)
    # pydicom ships single images, short multi-frame objects and non-CT objects, no CT volume
    # of 8 slices or more: none is graded, each refused with a reason (a lone CT slice as
    # not-a-volume).
    assert counts["accepted"] == 0
    assert counts["422 not-a-volume"] > 0


@pytest.mark.slow
def test_generated_hostile_inputs_are_refused_with_problems(client: TestClient) -> None:
    cases = generated_cases()
    counts, seconds = _tally(client, cases)
    print("\ngenerated hostile inputs:", dict(counts))
    for case_id, took in seconds.items():
        print(f"  {case_id}: {took:.2f} s")
    # None of these is a valid CT study; the archive attacks are named as such.
    assert counts["accepted"] == 0
    assert counts["413 zip-bomb"] == 1
    assert counts["400 unsafe-archive"] == 2
    assert counts["422 non-finite-voxels"] == 2
    assert counts["422 unknown-task"] == 1
    assert sum(counts.values()) == len(cases)
