"""NIfTI-1/2 from bytes (gzipped or not) to a `Volume`, refusing what would mislead a model."""

from __future__ import annotations

import gzip
import io
import zlib

import nibabel as nib
import numpy as np

from app.errors import NonFiniteVoxelsError, UnsupportedMediaError, ZipBombError
from app.ingest.sniff import sniff
from models.contract import ContractError, Volume


def gunzip_bounded(data: bytes, limit: int, field: str) -> bytes:
    """Decompress gzip `data`, refusing more than `limit` bytes of output (gzip bombs)."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = decompressor.decompress(data, limit + 1)
    except zlib.error as exc:
        raise UnsupportedMediaError(f"the gzip stream is corrupt ({exc})", field=field) from None
    if len(out) > limit:
        raise ZipBombError(f"the gzip stream expands to more than {limit} bytes", field=field)
    return out


def volume_from_nifti(data: bytes, field: str, max_bytes: int) -> Volume:
    """A 3D `Volume` from NIfTI bytes; a 4D image with one volume is squeezed to 3D."""
    if sniff(data) == "gzip":
        data = gunzip_bounded(data, max_bytes, field)
    if sniff(data) != "nifti":
        raise UnsupportedMediaError(
            "not a NIfTI image; send .nii, .nii.gz, a zip of one DICOM series or DICOM files",
            field=field,
        )
    try:
        image = (
            nib.Nifti2Image.from_bytes(data) if data[4:8] == b"n+2\x00" else nib.Nifti1Image.from_bytes(data)
        )
    except Exception as exc:  # nibabel raises several kinds for truncated or odd files
        raise UnsupportedMediaError(f"the NIfTI file cannot be read ({exc})", field=field) from None
    stored = image.get_data_dtype()
    if stored.kind not in "biuf":
        # Complex or RGB voxels cast to float32 would silently lose parts of each value.
        raise UnsupportedMediaError(
            f"voxels of type {stored} are not real scalars; send one real-valued channel", field=field
        )
    try:
        array = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as exc:  # truncated data, odd scaling
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
    affine = image.affine
    if affine is None or not np.all(np.isfinite(affine)):
        raise UnsupportedMediaError("the NIfTI header has no usable affine (sform/qform)", field=field)
    try:
        return Volume(array=array, affine=np.asarray(affine, dtype=np.float64))
    except ContractError as exc:
        raise UnsupportedMediaError(f"the NIfTI geometry is unusable: {exc.reason}", field=field) from None


def nifti_bytes(volume: Volume) -> bytes:
    """Gzipped NIfTI-1 bytes of `volume` (for downloads)."""
    image = nib.Nifti1Image(np.asarray(volume.array, dtype=np.float32), volume.affine)
    image.set_qform(volume.affine, code=1)
    image.set_sform(volume.affine, code=1)
    buffer = io.BytesIO()
    buffer.write(gzip.compress(image.to_bytes(), compresslevel=1))
    return buffer.getvalue()
