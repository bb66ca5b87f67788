"""PET in SUV: convert activity concentration (Bq/ml) to body-weight SUV when possible.

SUVbw = C(t) [Bq/ml] * weight [g] / D(t) [Bq], where D(t) is the injected dose decayed
from the injection time (RadiopharmaceuticalStartTime) to the time the images are
decay-corrected to (SeriesTime for DecayCorrection START, the usual case), with the
radionuclide half-life. Tissue density is taken as 1 g/ml. When a tag is missing the
values are left as they are and a warning says so: the model then sees unscaled PET.
"""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset

from models.contract import Volume


def _seconds(value: object) -> float | None:
    text = str(value or "").strip()
    if not text:
        return None
    for fmt in ("%H%M%S.%f", "%H%M%S", "%H%M"):
        try:
            t = datetime.strptime(text, fmt)
            return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6
        except ValueError:
            continue
    return None


def suv_factor(ds: Dataset) -> tuple[float | None, str]:
    """Factor turning the stored (rescaled) PET values into SUVbw, and why / why not."""
    units = str(ds.get("Units", "")).upper()
    if units == "GML":
        return 1.0, "PET already in SUVbw (Units GML)"
    if units not in ("BQML", ""):
        return None, f"PET units {units!r} cannot be converted to SUV; values used as they are"
    info = ds.get("RadiopharmaceuticalInformationSequence")
    item = info[0] if info else None
    weight = float(ds.get("PatientWeight") or 0)
    dose = float(item.get("RadionuclideTotalDose") or 0) if item is not None else 0.0
    half_life = float(item.get("RadionuclideHalfLife") or 0) if item is not None else 0.0
    start = _seconds(item.get("RadiopharmaceuticalStartTime")) if item is not None else None
    series = _seconds(ds.get("SeriesTime") or ds.get("AcquisitionTime"))
    if weight <= 0 or dose <= 0 or half_life <= 0 or start is None or series is None:
        return None, (
            "PET is in Bq/ml but patient weight, injected dose, half-life or times are missing; "
            "values were NOT converted to SUV and the prediction may be unreliable"
        )
    elapsed = (series - start) % 86400  # injection may be before midnight
    decayed = dose * math.exp(-math.log(2) * elapsed / half_life)
    return weight * 1000.0 / decayed, f"PET converted from Bq/ml to SUVbw (decay {elapsed / 60:.0f} min)"


def to_suv(volume: Volume, ds: Dataset) -> tuple[Volume, str | None, str]:
    """`volume` in SUVbw where possible; (volume, warning or None, note)."""
    factor, note = suv_factor(ds)
    if factor is None:
        return volume, note, note
    array = (volume.array * np.float32(factor)).astype(np.float32)
    return Volume(array, volume.affine), None, note
