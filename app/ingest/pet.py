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

# Images are acquired within a few half-lives of the injection (FDG: about one); past this
# many the decayed dose is a rounding error and the factor would be huge or infinite.
MAX_HALF_LIVES = 10


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
    item = item if item is not None else Dataset()
    weight = _positive(ds, "PatientWeight")
    dose = _positive(item, "RadionuclideTotalDose")
    half_life = _positive(item, "RadionuclideHalfLife")
    start = _seconds(item.get("RadiopharmaceuticalStartTime"))
    series = _seconds(ds.get("SeriesTime") or ds.get("AcquisitionTime"))
    if weight is None or dose is None or half_life is None or start is None or series is None:
        return None, (
            "PET is in Bq/ml but patient weight, injected dose, half-life or times are missing or "
            "malformed; values were NOT converted to SUV and the prediction may be unreliable"
        )
    elapsed = (series - start) % 86400  # injection may be before midnight
    if elapsed > MAX_HALF_LIVES * half_life:
        return None, (
            f"PET is in Bq/ml but {elapsed / 3600:.1f} h from injection to the series is over "
            f"{MAX_HALF_LIVES} half-lives ({half_life:g} s): the half-life or times are wrong; values "
            "were NOT converted to SUV and the prediction may be unreliable"
        )
    decayed = dose * math.exp(-math.log(2) * elapsed / half_life)
    return weight * 1000.0 / decayed, f"PET converted from Bq/ml to SUVbw (decay {elapsed / 60:.0f} min)"


def _positive(ds: Dataset, keyword: str) -> float | None:
    """A header number that is finite and above 0, else None ('70kg', NaN, 0 and -1 are not)."""
    try:  # pydicom converts a DS value when it is first read, and raises on '70kg'
        value = ds.get(keyword)
        number = float(str(value).strip()) if value is not None else math.nan
    except (ValueError, TypeError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def to_suv(volume: Volume, ds: Dataset) -> tuple[Volume, str | None, str]:
    """`volume` in SUVbw where possible; (volume, warning or None, note)."""
    factor, note = suv_factor(ds)
    if factor is None:
        return volume, note, note
    array = (volume.array * np.float32(factor)).astype(np.float32)
    return Volume(array, volume.affine), None, note
