"""NIfTI-1/2 from bytes (gzipped or not) to a `Volume`, refusing what would mislead a model."""

from __future__ import annotations

import gzip
import io
import math
import re
import zlib
from typing import Any

import nibabel as nib
import numpy as np

from app.errors import NonFiniteVoxelsError, TooLargeError, UnsupportedMediaError, ZipBombError
from app.ingest.sniff import sniff
from models.contract import GeometryError, Volume

# Enough bytes for either header (NIfTI-1: 348, NIfTI-2: 540).
_HEADER_BYTES = 540
# What the voxels become: every modality is converted to float32.
_FLOAT32_BYTES = np.dtype(np.float32).itemsize
# Compressed input is fed to zlib in pieces: its `unused_data` copies what follows a member,
# which, for each member of a large multi-member stream, would copy the rest of the upload.
_GZIP_PIECE = 1 << 16
# Each gzip member costs a decoder: beyond a few, members must yield output on average (bgzip
# writes 64 KiB each), so a flood of empty 20-byte members cannot burn CPU for nothing.
_FREE_MEMBERS = 16
_MIN_BYTES_PER_MEMBER = 1024
_NON_ZERO = re.compile(rb"[^\x00]")
# sform and qform agree when they place voxels alike: sizes to 1e-3 relative, axis direction
# cosines to 1e-3 (0.06 degrees), origins to 0.01 mm (float32 rounding is far below these).
_SIZE_RTOL, _DIRECTION_ATOL, _ORIGIN_ATOL_MM = 1e-3, 1e-3, 0.01


def _inflate_member(data: bytes, pos: int, room: int, out: list[bytes], field: str) -> tuple[int, int]:
    """Append to `out` at most `room` bytes of the gzip member at `pos`: (the position after
    it, the bytes appended)."""
    view = memoryview(data)
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    produced = 0
    while not inflater.eof and produced < room:
        piece = view[pos : pos + _GZIP_PIECE]
        if not piece:
            raise UnsupportedMediaError("the gzip stream is truncated; send the complete file", field=field)
        try:
            chunk = inflater.decompress(piece, room - produced)
        except zlib.error as exc:
            raise UnsupportedMediaError(f"the gzip stream is corrupt ({exc})", field=field) from None
        out.append(chunk)
        produced += len(chunk)
        pos += len(piece) - len(inflater.unconsumed_tail) - len(inflater.unused_data)
    return pos, produced


def _inflate(data: bytes, most: int, field: str) -> bytes:
    """At most `most` bytes of the output of every member of the gzip stream `data` (bgzip,
    pigz --independent and `cat a.gz b.gz` write several; gzip and nibabel read them all)."""
    out: list[bytes] = []
    pos = size = members = 0
    while pos < len(data) and size < most:
        if members >= _FREE_MEMBERS + size // _MIN_BYTES_PER_MEMBER:
            raise UnsupportedMediaError(
                f"the gzip stream has over {members} members for {size} bytes; compress the file "
                "as one stream (gzip, pigz) or in bgzip blocks",
                field=field,
            )
        members += 1
        pos, produced = _inflate_member(data, pos, most - size, out, field)
        size += produced
        # Zeros may pad a member, as Python's gzip module accepts; anything else must be one.
        padding_end = _NON_ZERO.search(data, pos)
        pos = padding_end.start() if padding_end else len(data)
    return b"".join(out)


def gunzip_bounded(data: bytes, limit: int, field: str) -> bytes:
    """Decompress gzip `data`, refusing more than `limit` bytes of output (gzip bombs)."""
    out = _inflate(data, limit + 1, field)
    if len(out) > limit:
        raise ZipBombError(f"the gzip stream expands to more than {limit} bytes", field=field)
    return out


def _header(head: bytes, field: str) -> Any:
    """The NIfTI-1 or NIfTI-2 header at the start of `head`."""
    if sniff(head) != "nifti":
        raise UnsupportedMediaError(
            "not a NIfTI image; send .nii, .nii.gz, a zip of one DICOM series or DICOM files",
            field=field,
        )
    if head[344:348] == b"ni1\x00":
        # A .hdr of a .hdr/.img pair: its voxels are in a file that was not sent.
        raise UnsupportedMediaError(
            "this is the header of a .hdr/.img NIfTI pair; send a single-file .nii or .nii.gz", field=field
        )
    kind = nib.Nifti2Header if head[4:8] == b"n+2\x00" else nib.Nifti1Header
    try:
        # The fixed-size block only: extensions, if any, lie beyond the bytes at hand.
        return kind(head[: kind.template_dtype.itemsize], check=True)
    except Exception as exc:  # nibabel raises several kinds for odd headers
        raise UnsupportedMediaError(f"the NIfTI header cannot be read ({exc})", field=field) from None


def _voxel_count(header: Any, field: str) -> int:
    shape = tuple(int(n) for n in header.get_data_shape())
    if min(shape, default=0) < 1:
        raise UnsupportedMediaError(
            f"the NIfTI header's dimensions {shape} are not all positive; send a non-empty image",
            field=field,
        )
    return math.prod(shape)  # Python ints: NIfTI-2 dimensions overflow a numpy int64 product


def _check_claimed_size(header: Any, field: str, max_bytes: int) -> None:
    """Refuse, from the header alone, voxels whose float32 copy would exceed `max_bytes`: a
    few hundred bytes can claim a terabyte, and a small uint8 volume grows fourfold."""
    claimed = _voxel_count(header, field) * _FLOAT32_BYTES
    if claimed > max_bytes:
        raise TooLargeError(
            f"the NIfTI header claims {header.get_data_shape()} voxels, {claimed} bytes as float32, "
            f"over the limit of {max_bytes}; crop or downsample the image",
            field=field,
        )


def _check_voxels_present(header: Any, size: int, field: str) -> None:
    """Refuse a file that does not hold the voxels its header claims, before nibabel would
    allocate (and zero) the claimed size only to find them missing."""
    offset = int(header.get_data_offset())
    if offset < header.single_vox_offset:
        # nibabel would read the header's own bytes as voxels.
        raise UnsupportedMediaError(
            f"the NIfTI vox_offset {offset} points inside the header (at least "
            f"{header.single_vox_offset} in a single-file NIfTI); fix the header",
            field=field,
        )
    claimed = _voxel_count(header, field) * header.get_data_dtype().itemsize
    if offset + claimed > size:
        raise UnsupportedMediaError(
            f"the NIfTI file is truncated: its header claims {claimed} bytes of voxels from byte "
            f"{offset}, the file holds {size}; send the complete file",
            field=field,
        )


def _disagreement(sform: np.ndarray, qform: np.ndarray) -> str | None:
    """How `sform` and `qform` place voxels differently, or None when they agree."""
    sizes = np.linalg.norm(sform[:3, :3], axis=0), np.linalg.norm(qform[:3, :3], axis=0)
    if not np.allclose(*sizes, rtol=_SIZE_RTOL, atol=0.0):
        return f"voxel sizes {np.round(sizes[0], 3).tolist()} mm vs {np.round(sizes[1], 3).tolist()} mm"
    if np.all(sizes[0] > 0) and not np.allclose(
        sform[:3, :3] / sizes[0], qform[:3, :3] / sizes[1], rtol=0.0, atol=_DIRECTION_ATOL
    ):
        return "axis directions differ"
    if not np.allclose(sform[:3, 3], qform[:3, 3], rtol=0.0, atol=_ORIGIN_ATOL_MM):
        return f"origins {np.round(sform[:3, 3], 2).tolist()} vs {np.round(qform[:3, 3], 2).tolist()} mm"
    return None


def _check_orientation(header: Any, field: str) -> None:
    """Refuse a NIfTI whose voxel-to-world mapping is unknown or ambiguous: nibabel takes the
    sform (else the qform, else a guess from pixdim), other readers may take the qform."""
    try:
        sform, sform_code = header.get_sform(coded=True)
        qform, qform_code = header.get_qform(coded=True)
    except Exception as exc:  # a qform with negative pixdim, say
        raise UnsupportedMediaError(f"the NIfTI sform/qform cannot be read ({exc})", field=field) from None
    if not sform_code and not qform_code:
        raise UnsupportedMediaError(
            "the NIfTI carries no orientation (qform_code and sform_code are 0), so left and right "
            "are unknown; write the scanner affine with sform_code or qform_code 1",
            field=field,
        )
    if not sform_code or not qform_code:
        return
    if not (np.all(np.isfinite(sform)) and np.all(np.isfinite(qform))):
        raise UnsupportedMediaError("the NIfTI header has no usable affine (sform/qform)", field=field)
    difference = _disagreement(sform, qform)
    if difference:
        raise UnsupportedMediaError(
            f"the NIfTI sform and qform disagree ({difference}), so readers differ on where each "
            "voxel is; write the correct affine to both, or set qform_code to 0 to keep the sform",
            field=field,
        )


def _image(data: bytes, field: str) -> Any:
    try:
        return (
            nib.Nifti2Image.from_bytes(data) if data[4:8] == b"n+2\x00" else nib.Nifti1Image.from_bytes(data)
        )
    except Exception as exc:  # nibabel raises several kinds for truncated or odd files
        raise UnsupportedMediaError(f"the NIfTI file cannot be read ({exc})", field=field) from None


def _voxels(image: Any, field: str) -> np.ndarray:
    stored = image.get_data_dtype()
    if stored.kind not in "biuf":
        # Complex or RGB voxels cast to float32 would silently lose parts of each value.
        raise UnsupportedMediaError(
            f"voxels of type {stored} are not real scalars; send one real-valued channel", field=field
        )
    try:
        array = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as exc:  # odd scaling
        raise UnsupportedMediaError(f"the NIfTI file cannot be read ({exc})", field=field) from None
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise UnsupportedMediaError(
            f"expected a 3D image, got shape {array.shape}; send one volume per modality", field=field
        )
    if not np.all(np.isfinite(array)):
        raise NonFiniteVoxelsError(
            "the image contains NaN or infinite voxels; fix or mask them before sending", field=field
        )
    return array


def volume_from_nifti(data: bytes, field: str, max_bytes: int) -> Volume:
    """A 3D `Volume` from NIfTI bytes; a 4D image with one volume is squeezed to 3D."""
    gzipped = sniff(data) == "gzip"
    # The header's claim is judged first, before a gzip stream is inflated.
    head = _inflate(data, _HEADER_BYTES, field) if gzipped else data[:_HEADER_BYTES]
    # The header as written: a loaded image's header has vox_offset reset to 0.
    header = _header(head, field)
    _check_claimed_size(header, field, max_bytes)
    if gzipped:
        data = gunzip_bounded(data, max_bytes, field)
    _check_voxels_present(header, len(data), field)
    _check_orientation(header, field)
    image = _image(data, field)
    array = _voxels(image, field)
    affine = image.affine
    if affine is None or not np.all(np.isfinite(affine)):
        raise UnsupportedMediaError("the NIfTI header has no usable affine (sform/qform)", field=field)
    try:
        return Volume(array=array, affine=np.asarray(affine, dtype=np.float64))
    except GeometryError as exc:
        raise UnsupportedMediaError(f"the NIfTI geometry is unusable: {exc.reason}", field=field) from None


def nifti_bytes(volume: Volume) -> bytes:
    """Gzipped NIfTI-1 bytes of `volume` (for downloads)."""
    image = nib.Nifti1Image(np.asarray(volume.array, dtype=np.float32), volume.affine)
    image.set_sform(volume.affine, code=1)
    image.set_qform(volume.affine, code=1)
    if _disagreement(image.get_sform(), image.get_qform()):
        # A qform cannot hold a shear: leave it unset rather than contradict the sform.
        image.set_qform(volume.affine, code=0)
    buffer = io.BytesIO()
    buffer.write(gzip.compress(image.to_bytes(), compresslevel=1))
    return buffer.getvalue()
