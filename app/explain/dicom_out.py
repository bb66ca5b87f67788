"""DICOM outputs a PACS viewer can open beside the source study.

- DICOM input: a highdicom Parametric Map (float attention per voxel) on the reference
  series' own frames, referencing it (same study, frame of reference and geometry).
- Other input: a Secondary Capture of the PNG overlay (no source to reference).
"""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from models.contract import Volume

SOFTWARE = "REACT-KD Serve 0.1 (research use only)"


# Type 2 attributes highdicom copies from the source; empty when the source lacks them.
_TYPE2 = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _complete(ds: Dataset) -> Dataset:
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def parametric_map(attention: Volume, sources: list[Dataset], description: str) -> bytes:
    """Parametric Map of `attention` (on the grid of the reference series) referencing `sources`."""
    sources = [_complete(ds) for ds in sources]
    frames = np.ascontiguousarray(np.transpose(attention.array, (2, 1, 0))).astype(np.float32)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="ATTN",
        lut_explanation="CBAM3D spatial attention",
        unit=codes.UCUM.NoUnits,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
    )
    pm = hd.pm.ParametricMap(
        source_images=sources,
        pixel_array=frames,
        series_instance_uid=hd.UID(),
        series_number=9901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="REACT-KD",
        manufacturer_model_name="reactkd-serve",
        software_versions=SOFTWARE,
        device_serial_number="0",
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        window_center=0.5,
        window_width=1.0,
        series_description=description[:64],
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    buffer = io.BytesIO()
    pm.save_as(buffer)
    return buffer.getvalue()


def secondary_capture(png: bytes, description: str, study_uid: str | None) -> bytes:
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    sc = hd.sc.SCImage(
        pixel_array=rgb,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        study_instance_uid=study_uid or hd.UID(),
        series_instance_uid=hd.UID(),
        sop_instance_uid=hd.UID(),
        series_number=9902,
        instance_number=1,
        manufacturer="REACT-KD",
        patient_orientation=("L", "P"),
        series_description=description[:64],
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    buffer = io.BytesIO()
    sc.save_as(buffer)
    return buffer.getvalue()
