"""Warnings about the input that the client should read beside the prediction.

Heuristics, documented so their limits are clear:

- Missing optional modalities (PET for `hcc`): the student was trained to answer without
  them, but with less information.
- Unusual spacing: a voxel side larger than 1.5 times the model grid's spacing (detail is
  lost when upsampling) or smaller than 0.3 mm (an unusual reconstruction). Sides no scan
  has (outside `models.contract.PLAUSIBLE_VOXEL_MM`) are refused by the input contract.
- Low dose (CT): noise is estimated in soft tissue (-100..200 HU) as the median absolute
  deviation of the image minus its 3x3 in-plane mean, scaled to a Gaussian sigma. Portal
  venous CT at routine dose has about 10-20 HU noise; above 30 HU suggests a low-dose or
  very thin-slice scan, where the student is less reliable (noise grows as 1/sqrt(dose)).
- No liver (`hcc`): fewer than 100 ml of voxels in the enhanced-liver range 60..160 HU
  means the field of view probably misses the liver, or the scan is another phase (an
  unenhanced liver reads about 55 HU).
- Small coverage: a volume spanning under a quarter of the model's field of view along a
  world axis (a single slice, a tight crop) leaves most of what the network sees empty.
- Not Hounsfield units (CT): nothing below -200 HU (no air, which nearly every body CT
  holds) with a quarter of the voxels above 700 HU (denser than bone marrow) is the
  signature of stored pixel values whose rescale intercept (-1024) was lost: air then reads
  about 0 and soft tissue about 1050. Values above 30000 are outside any CT range.
  Values spanning under 20 HU between their 0.5th and 99.5th percentiles are no CT at
  all (a binary mask, a z-scored image): a CT's noise alone spreads over tens of HU.
- Normalised MR: the model z-scores raw MR intensities inside the foreground (voxels above
  0) itself. Over 5 % of voxels below 0 means an image normalised already (z-scored, say):
  its negative half is read as background.
- Not SUV (PET): the model reads PET as body-weight SUV (liver about 2, tumours up to
  about 20, the bladder rarely above 100). A 99.9th percentile above 100 means activity
  concentration (Bq/ml, thousands) sent as is, or a wrong dose, weight or injection time.
"""

from __future__ import annotations

import numpy as np

from models.contract import Volume
from models.tasks import ModalityKind, TaskSpec

NOISE_WARN_HU = 30.0
LIVER_HU = (60.0, 160.0)
MIN_LIVER_ML = 100.0
MIN_COVERAGE = 0.25
MAX_CT_HU = 30000.0
MIN_CT_SPREAD_HU = 20.0
MAX_SUV = 100.0
MAX_NEGATIVE_MR = 0.05
NOISE_SLICES = 32
LIVER_LATTICE = 192
"""The input checks read real-size scans (512 x 512 x 600) on a sample: see `ct_noise_hu` and
`liver_ml`. Their numbers agree with the whole volume's within their own noise
(tests/app/test_fast_paths.py)."""
# Voxels up to this size (mm) are routine for each kind (5 mm CT slices, 4-6 mm PET), however
# fine the model grid (the lesion grid's 2 mm): only coarser ones, or coarser than 1.5 model
# voxels, are unusual.
ROUTINE_SPACING_MM: dict[ModalityKind, float] = {"ct": 5.0, "pet": 6.0, "mri": 3.75}


INTERIOR = (slice(1, -1),) * 3  # the voxels an eroded mask can hold


def _sum3(x: np.ndarray, axis: int) -> np.ndarray:
    """x[i - 1] + x[i] + x[i + 1] along `axis`, for the interior i (the axis shrinks by 2)."""
    n = x.shape[axis]

    def shifted(start: int) -> np.ndarray:
        return x[(slice(None),) * axis + (slice(start, n - 2 + start),)]

    out = shifted(0) + shifted(1)
    out += shifted(2)
    return out


def in_plane_residual(array: np.ndarray, z_axis: int = 2) -> np.ndarray:
    """`array - ndimage.uniform_filter(array, size=3 in-plane, 1 along z_axis)`, on the
    interior voxels.

    Sums of shifted views, only where the noise estimate looks (an eroded mask is False on
    the border), in place where possible: several times faster than scipy, which filters
    each line through a float64 buffer after padding the volume.
    """
    first, second = (axis for axis in range(3) if axis != z_axis)
    residual = _sum3(_sum3(array, first), second)
    residual *= np.asarray(-1.0 / 9.0, dtype=array.dtype)
    residual += array[tuple(slice(None) if axis == z_axis else slice(1, -1) for axis in range(3))]
    return residual[tuple(slice(1, -1) if axis == z_axis else slice(None) for axis in range(3))]


def eroded_interior(mask: np.ndarray) -> np.ndarray:
    """`ndimage.binary_erosion(mask)[1:-1, 1:-1, 1:-1]` (6-connected), by shifted views."""
    core = mask[INTERIOR].copy()
    for axis in range(3):
        for shift in (slice(None, -2), slice(2, None)):
            view = list(INTERIOR)
            view[axis] = shift
            core &= mask[tuple(view)]
    return core


def ct_noise_hu(volume: Volume, max_slices: int = NOISE_SLICES) -> float | None:
    """Robust noise estimate (HU) in soft tissue, or None when too little soft tissue.

    Read on at most `max_slices` slices spread evenly along z, each with its two neighbours
    (what the eroded mask looks at): the voxels it reads are exactly those the whole volume
    would give on those slices, a sample of thousands that gives the median to well under a HU.
    """
    # Shifted views add fastest along the slow axes of a C-ordered array: NIfTI's
    # Fortran-ordered (x, y, z) arrays are viewed as C-ordered (z, y, x), at no cost.
    fortran = volume.array.flags.f_contiguous and not volume.array.flags.c_contiguous
    array, z_axis = (volume.array.T, 0) if fortran else (volume.array, 2)
    if min(array.shape) < 3:
        return None
    depth = array.shape[z_axis]
    centres = np.unique(np.linspace(1, depth - 2, min(max_slices, depth - 2)).round().astype(int))
    parts = []
    for k in centres:
        # float32: sums of an int16 CT's shifted views would overflow.
        slab = array[(slice(None),) * z_axis + (slice(k - 1, k + 2),)].astype(np.float32)
        soft = (slab > -100) & (slab < 200)
        parts.append(in_plane_residual(slab, z_axis)[eroded_interior(soft)])
    values = np.concatenate(parts)
    if values.size < 500:
        return None
    # `values` is our own copy: the medians may reorder it, and the deviations overwrite it.
    values -= np.median(values, overwrite_input=True)
    mad = float(np.median(np.abs(values, out=values), overwrite_input=True))
    # residual of a 3x3 mean has variance sigma^2 * (1 - 1/9); MAD -> sigma by 1.4826.
    return 1.4826 * mad / np.sqrt(1 - 1 / 9)


def liver_ml(volume: Volume, max_side: int = LIVER_LATTICE) -> float:
    """Millilitres of voxels in the liver range, counted on a lattice of at most `max_side`
    voxels along each side of a slice, each lattice voxel standing for those it skips."""
    lo, hi = LIVER_HU
    steps = [max(1, round(n / max_side)) for n in volume.array.shape[:2]]
    lattice = volume.array[:: steps[0], :: steps[1], :]
    voxel_ml = float(np.prod(volume.spacing)) * steps[0] * steps[1] / 1000.0
    return float(((lattice >= lo) & (lattice <= hi)).sum()) * voxel_ml


def input_warnings(volumes: dict[str, Volume], task: TaskSpec) -> list[str]:
    warnings = []
    for name, volume in volumes.items():
        spacing = volume.spacing
        coarse = max(max(task.spacing_mm) * 1.5, ROUTINE_SPACING_MM[task.kind_of(name)])
        if max(spacing) > coarse or min(spacing) < 0.3:
            warnings.append(
                f"{name}: unusual voxel spacing {tuple(round(s, 2) for s in spacing)} mm "
                f"(model grid {task.spacing_mm} mm)"
            )
        coverage = coverage_warning(volume, task)
        if coverage:
            warnings.append(f"{name}: {coverage}")
        units = units_warning(volume, task.kind_of(name))
        if units:
            warnings.append(f"{name}: {units}")
    ct = volumes.get("ct") if "ct" in task.modalities else None
    if ct is not None:
        noise = ct_noise_hu(ct)
        if noise is not None and noise > NOISE_WARN_HU:
            warnings.append(
                f"ct: soft-tissue noise about {noise:.0f} HU suggests a low-dose scan; "
                "the prediction is less reliable"
            )
        if task.name == "hcc" and liver_ml(ct) < MIN_LIVER_ML:
            warnings.append(
                f"ct: under {MIN_LIVER_ML:.0f} ml of tissue in the liver range {LIVER_HU} HU; "
                "the field of view may miss the liver, or the scan is not portal-venous (the phase the "
                "model was trained on)"
            )
    return warnings


def units_warning(volume: Volume, kind: ModalityKind) -> str | None:
    """A warning when the values do not look like the units the network expects for `kind`."""
    check = {"ct": hounsfield_warning, "pet": suv_warning, "mri": mr_units_warning}[kind]
    return check(volume)


def coverage_warning(volume: Volume, task: TaskSpec) -> str | None:
    """A warning when the volume spans under `MIN_COVERAGE` of the model grid on some axis."""
    low, high = volume.world_bounds()
    extent = high - low
    grid = np.array(task.shape[::-1], dtype=np.float64) * np.array(task.spacing_mm)  # (x, y, z)
    if np.all(extent >= MIN_COVERAGE * grid):
        return None
    return (
        f"the image covers {' x '.join(f'{e:.0f}' for e in extent)} mm of the model's "
        f"{' x '.join(f'{g:.0f}' for g in grid)} mm field of view; most of what the network sees "
        "is empty, so the prediction is unreliable"
    )


def _sample(volume: Volume, voxels: int = 200_000) -> np.ndarray:
    """About `voxels` voxels on a regular lattice: enough for percentiles, a few ms at most."""
    step = max(1, round((volume.array.size / voxels) ** (1 / 3)))
    return volume.array[::step, ::step, ::step].ravel()


def hounsfield_warning(volume: Volume) -> str | None:
    """A warning when CT values do not look like Hounsfield units (see the module notes)."""
    sample = _sample(volume)
    low, high, top = np.percentile(sample, [0.5, 75.0, 99.5])
    peak = float(sample.max())  # not the minimum: padding outside the scan circle can be -32768
    if peak > MAX_CT_HU:
        return (
            f"values reach {peak:.3g}, beyond any CT range in Hounsfield units; the prediction is unreliable"
        )
    spread = float(top - low)
    if spread < MIN_CT_SPREAD_HU:
        return (
            f"the values span {spread:.3g} (0.5th to 99.5th percentile): any CT holds tens of HU of "
            "noise alone; this looks like a mask or a normalised image, not Hounsfield units; the "
            "prediction is unreliable"
        )
    if low > -200.0 and high > 700.0:
        return (
            f"no air (nothing below -200 HU) and a quarter of the voxels above {high:.0f} HU: the "
            "values look like stored pixel values without the rescale intercept (air should read "
            "about -1000 HU); the prediction is unreliable"
        )
    return None


def suv_warning(volume: Volume) -> str | None:
    """A warning when PET values are far above any SUV (see the module notes)."""
    peak = float(np.percentile(_sample(volume), 99.9))
    if peak <= MAX_SUV:
        return None
    return (
        f"the 99.9th percentile is {peak:.3g}, far above any SUV (the model reads body-weight "
        "SUV): was activity concentration (Bq/ml) sent, or are the dose, weight or injection "
        "time wrong? The prediction is unreliable"
    )


def mr_units_warning(volume: Volume) -> str | None:
    """A warning when an MR looks normalised already (see the module notes)."""
    negative = float(np.mean(_sample(volume) < 0))
    if negative <= MAX_NEGATIVE_MR:
        return None
    return (
        f"{negative:.0%} of voxels are negative: the image looks normalised already, and the "
        "model reads voxels at or below 0 as background; send raw intensities"
    )
