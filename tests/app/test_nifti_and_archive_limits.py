"""NIfTI and zip inputs that once crashed, exhausted memory or were misread: a corrupt deflate
member, headers claiming more voxels than sent or than memory holds, float32 amplification of
a small gzip, multi-member gzip (bgzip, pigz), and sform/qform that disagree or are absent."""

from __future__ import annotations

import gzip
import struct
import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from app_helpers import assert_problem, ct_volume, nifti_bytes, zip_bytes

from app.errors import ProblemError, TooLargeError, UnsupportedMediaError, ZipBombError
from app.ingest import nifti
from app.ingest.archive import ZipLimits, iter_members
from app.ingest.nifti import gunzip_bounded, volume_from_nifti
from models.contract import Volume

NII = "application/gzip"
LIMITS = ZipLimits(max_members=100, max_total_bytes=1 << 30, max_ratio=1000.0)
# What `app.explain.case` passes when it reads the store back: no size limit at all.
NO_LIMIT = 1 << 62


def _raw(volume: Volume | None = None) -> bytes:
    volume = volume or ct_volume()
    return nifti_bytes(volume, compress=False)


def _refusal(kind: type[ProblemError], data: bytes, max_bytes: int = 1 << 30) -> ProblemError:
    with pytest.raises(kind) as caught:
        volume_from_nifti(data, "ct", max_bytes)
    assert caught.value.field == "ct"
    return caught.value


def _claiming(shape: tuple[int, ...]) -> bytes:
    """A tiny float32 NIfTI-1 whose header claims `shape` (dim[0] and dim[1..]) voxels."""
    header = bytearray(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)).to_bytes())
    struct.pack_into("<8h", header, 40, len(shape), *shape, *[1] * (7 - len(shape)))
    return bytes(header)


# -- zip members -------------------------------------------------------------------------


def _corrupt_deflate_zip() -> bytes:
    """A zip whose member starts with deflate block type 3 (reserved): zlib refuses it."""
    data = bytearray(zip_bytes({"0.dcm": b"DICM" * 1000}))
    data[30 + len("0.dcm")] = 0xFF  # local header (30 bytes) and name, then the deflate stream
    return bytes(data)


def test_a_corrupt_deflate_member_is_refused_naming_the_field(tmp_path: Path) -> None:
    archive = tmp_path / "s.zip"
    archive.write_bytes(_corrupt_deflate_zip())
    with pytest.raises(UnsupportedMediaError) as caught:
        list(iter_members(archive, LIMITS, "ct", wanted=lambda head: True))
    assert caught.value.field == "ct"
    assert "'0.dcm' cannot be read" in caught.value.detail and "re-create" in caught.value.detail


def test_a_corrupt_deflate_member_is_a_415_not_a_500(client) -> None:  # type: ignore[no-untyped-def]
    files = [("ct", ("s.zip", _corrupt_deflate_zip(), "application/zip"))]
    response = client.post("/v1/predict", data={"task": "hcc"}, files=files)
    assert "cannot be read" in assert_problem(response, 415, "unsupported-media", "ct")["detail"]


# -- sizes claimed by the header ---------------------------------------------------------


def test_a_header_bomb_is_refused_before_any_voxel_is_allocated() -> None:
    """512 x 512 x 1024 float32 (1 GiB) claimed by a 384-byte file, read with no size limit:
    refused as truncated without allocating the claimed gigabyte."""
    data = _claiming((512, 512, 1024))
    tracemalloc.start()
    try:
        error = _refusal(UnsupportedMediaError, data, NO_LIMIT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "truncated" in error.detail and str(512 * 512 * 1024 * 4) in error.detail
    assert peak < 16 << 20, peak


def test_a_header_claiming_a_terabyte_is_refused_at_once() -> None:
    """About 2^40 bytes claimed: reading it would raise MemoryError or be killed."""
    data = gzip.compress(_claiming((32767, 32767, 256)))
    start = time.perf_counter()
    error = _refusal(UnsupportedMediaError, data, NO_LIMIT)
    assert "truncated" in error.detail
    too_large = _refusal(TooLargeError, data)
    assert time.perf_counter() - start < 1.0
    assert too_large.status == 413 and "float32" in too_large.detail and str(1 << 30) in too_large.detail


def test_a_header_bomb_is_a_413_through_the_api(client) -> None:  # type: ignore[no-untyped-def]
    data = gzip.compress(_claiming((512, 512, 1024 * 16)))  # 16 GiB as float32, over the 2 GiB default
    response = client.post("/v1/predict", data={"task": "hcc"}, files=[("ct", ("x.nii.gz", data, NII))])
    assert "float32" in assert_problem(response, 413, "too-large", "ct")["detail"]


@pytest.mark.parametrize("compress", [False, True])
def test_a_truncated_nifti_names_what_is_missing(compress: bool) -> None:
    data = _raw()[:-100]
    error = _refusal(UnsupportedMediaError, gzip.compress(data) if compress else data)
    assert "truncated" in error.detail and f"holds {len(data)}" in error.detail


def test_uint8_voxels_are_limited_at_their_float32_size() -> None:
    """64^3 uint8 voxels inflate to 256 KiB but become 1 MiB of float32: over a 512 KiB limit."""
    array = np.zeros((64, 64, 64), np.uint8)
    data = gzip.compress(nib.Nifti1Image(array, np.eye(4), dtype=np.uint8).to_bytes())
    error = _refusal(TooLargeError, data, max_bytes=512 << 10)
    assert str(64**3 * 4) in error.detail and "float32" in error.detail
    assert volume_from_nifti(data, "ct", 2 << 20).array.shape == (64, 64, 64)


def test_a_gzipped_header_is_judged_before_the_stream_is_inflated() -> None:
    """The uint8 voxels alone inflate past the limit, yet the refusal is the header's claim."""
    array = np.zeros((128, 128, 128), np.uint8)
    data = gzip.compress(nib.Nifti1Image(array, np.eye(4), dtype=np.uint8).to_bytes())
    assert "float32" in _refusal(TooLargeError, data, max_bytes=1 << 20).detail


def test_a_voxel_offset_inside_the_header_is_refused() -> None:
    """nibabel reads from offset 0 when vox_offset is 0: the header's own bytes as voxels."""
    data = bytearray(_raw())
    struct.pack_into("<f", data, 108, 0.0)
    assert "vox_offset" in _refusal(UnsupportedMediaError, bytes(data)).detail


def test_a_header_of_a_hdr_img_pair_is_refused() -> None:
    header = nib.Nifti1Pair(np.zeros((1, 1, 87), np.float32), np.eye(4)).header.binaryblock
    assert "single-file" in _refusal(UnsupportedMediaError, header).detail


# -- gzip members ------------------------------------------------------------------------


def test_a_multi_member_gzip_is_read_whole() -> None:
    """bgzip, pigz --independent and `cat a.gz b.gz` write several members; gzip reads them all."""
    raw = _raw()
    data = gzip.compress(raw[:20000]) + gzip.compress(raw[20000:]) + gzip.compress(b"")
    assert gunzip_bounded(data, len(raw), "ct") == raw
    volume = volume_from_nifti(data, "ct", 1 << 30)
    np.testing.assert_array_equal(volume.array, ct_volume().array)


def test_members_are_bounded_in_total() -> None:
    raw = _raw()
    data = gzip.compress(raw[:20000]) + gzip.compress(raw[20000:])
    with pytest.raises(ZipBombError) as caught:
        gunzip_bounded(data, len(raw) - 1, "ct")
    assert caught.value.field == "ct" and str(len(raw) - 1) in caught.value.detail


def test_zero_padding_is_read_and_trailing_garbage_refused() -> None:
    raw = _raw()
    assert gunzip_bounded(gzip.compress(raw) + b"\0" * 1000, len(raw), "ct") == raw
    with pytest.raises(UnsupportedMediaError, match="corrupt") as caught:
        gunzip_bounded(gzip.compress(raw) + b"garbage", len(raw), "ct")
    assert caught.value.field == "ct"


def test_a_truncated_gzip_stream_is_refused() -> None:
    with pytest.raises(UnsupportedMediaError, match="truncated"):
        gunzip_bounded(gzip.compress(_raw())[:-10], 1 << 30, "ct")


def test_a_flood_of_empty_members_is_refused_quickly() -> None:
    """Twenty-byte empty members cost a decoder each and yield nothing: 5 MB is 250,000 of them."""
    data = gzip.compress(_raw()) + gzip.compress(b"") * 250_000
    start = time.perf_counter()
    with pytest.raises(UnsupportedMediaError, match="members") as caught:
        gunzip_bounded(data, 1 << 30, "ct")
    assert time.perf_counter() - start < 1.0
    assert caught.value.field == "ct"


# -- orientation: sform and qform --------------------------------------------------------


def _coded(affine: np.ndarray, sform: tuple[np.ndarray, int], qform: tuple[np.ndarray, int]) -> bytes:
    image = nib.Nifti1Image(ct_volume().array, affine)
    image.set_sform(*sform)
    image.set_qform(*qform)
    return gzip.compress(image.to_bytes())


def test_sform_and_qform_that_disagree_are_refused() -> None:
    eight, two = np.diag([8.0, 8.0, 8.0, 1.0]), np.diag([2.0, 2.0, 2.0, 1.0])
    error = _refusal(UnsupportedMediaError, _coded(eight, (eight, 1), (two, 1)))
    assert "sform and qform disagree" in error.detail and "voxel sizes" in error.detail
    flipped = np.diag([-8.0, 8.0, 8.0, 1.0])
    assert "directions" in _refusal(UnsupportedMediaError, _coded(eight, (eight, 1), (flipped, 1))).detail
    shifted = eight.copy()
    shifted[:3, 3] = [0.0, 0.0, 5.0]
    assert "origins" in _refusal(UnsupportedMediaError, _coded(eight, (eight, 1), (shifted, 1))).detail


def test_a_nifti_without_orientation_is_refused() -> None:
    eight = np.diag([8.0, 8.0, 8.0, 1.0])
    error = _refusal(UnsupportedMediaError, _coded(eight, (eight, 0), (eight, 0)))
    assert "no orientation" in error.detail and "qform_code and sform_code are 0" in error.detail


def test_one_form_or_two_that_agree_are_accepted() -> None:
    from scipy.spatial.transform import Rotation

    ct = ct_volume()
    oblique = ct.affine.copy()
    oblique[:3, :3] = Rotation.from_euler("xyz", [30, 20, 10], degrees=True).as_matrix() @ oblique[:3, :3]
    for affine in (ct.affine, oblique):
        for codes in ((1, 1), (1, 0), (0, 1), (2, 1)):
            data = _coded(affine, (affine, codes[0]), (affine, codes[1]))
            np.testing.assert_allclose(volume_from_nifti(data, "ct", 1 << 30).affine, affine, atol=1e-4)
    # nibabel's own default, as the tests and the phantom data write it: sform only.
    assert volume_from_nifti(nifti_bytes(ct), "ct", 1 << 30).array.shape == ct.array.shape


def test_downloads_of_a_sheared_volume_read_back() -> None:
    """No qform can hold a shear: the download leaves it unset rather than contradict the sform."""
    ct = ct_volume()
    sheared = ct.affine.copy()
    sheared[0, 2] = 4.0
    for affine, qform_code in ((ct.affine, 1), (sheared, 0)):
        data = nifti.nifti_bytes(Volume(ct.array, affine))
        assert int(nib.Nifti1Image.from_bytes(gzip.decompress(data)).header["qform_code"]) == qform_code
        np.testing.assert_allclose(volume_from_nifti(data, "ct", 1 << 30).affine, affine, atol=1e-4)
