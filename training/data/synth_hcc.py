"""Synthetic HCC-like cohort: portal-venous CT, FDG and 11C-acetate PET, liver and tumour masks.

The rules (docs/benchmark.md, DESIGN.md "The synthetic benchmark") fix what a grade means:

* CT: one dominant lesion whose size, margin irregularity, internal heterogeneity, necrotic
  core and hypo-attenuation all grow with grade, driven by a per-case "aggressiveness" that
  mixes the grade with a large shared noise term, so CT separates grades only moderately.
* PET (the strong signal): FDG tumour-to-liver ratio rises with grade, acetate falls.
* Grades about 25% well, 45% moderate, 30% poor.

Each case is drawn from ``SeedSequence(seed, spawn_key=(cohort, index))``: the same seed and
index give the same case whatever the number of workers or cases.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from training.data.lowdose import DEFAULT_I0, simulate_low_dose
from training.data.phantom import (
    GridSpec,
    centered_grid,
    ellipsoid_radius,
    gaussian_blur_mm,
    smooth_noise,
    write_nifti,
)
from training.data.splits import assign_splits

GRADES: tuple[str, ...] = ("well", "moderate", "poor")
GRADE_PROBABILITIES = (0.25, 0.45, 0.30)
EXTERNAL_DOSES: tuple[float, ...] = (1.0, 0.5, 0.25, 0.1, 0.05)
MANIFEST_COLUMNS = (
    "case_id",
    "ct",
    "pet_fdg",
    "pet_act",
    "liver_mask",
    "tumor_mask",
    "grade",
    "split",
    "dose",
)
# Default geometry: the field of view must hold a whole abdomen, and the body must fit in the
# model grid (96 x 96 x 48 voxels of 4 mm = 384 x 384 x 192 mm).
CT_SHAPE = (128, 128, 64)
CT_FOV_MM = (384.0, 384.0, 192.0)
PET_FWHM_MM = 6.0
# Spawn-key prefixes: internal and external cohorts never share a case.
_COHORT_KEY = {False: 0, True: 1}

# Per-grade tumour-to-liver uptake ratios (geometric means) and their log-normal spread.
FDG_TLR = (1.3, 2.0, 3.2)
ACETATE_TLR = (2.4, 1.6, 1.05)
PET_TLR_LOG_SD = 0.17


@dataclass
class HccCase:
    """One generated case: images in their own units (HU, SUV) on their own grids.

    ``volumes`` and ``affines`` are keyed by modality (``ct``, ``pet_fdg``, ``pet_act``; the
    external cohort has CT only); ``masks`` (``liver`` including the tumour, ``tumor``) lie on
    the CT grid. ``params`` records the drawn lesion parameters.
    """

    case_index: int
    grade: str
    dose: float
    volumes: dict[str, np.ndarray]
    affines: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    params: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> int:
        return GRADES.index(self.grade)


@dataclass
class _Phantom:
    """Noise-free CT in HU with the tissue maps PET activity is painted from."""

    grid: GridSpec
    hu: np.ndarray
    tissue: dict[str, np.ndarray]
    liver: np.ndarray
    tumor: np.ndarray
    necrosis: np.ndarray
    grade: int
    params: dict[str, float]


def case_seed(seed: int | np.random.SeedSequence, case_index: int, external: bool) -> np.random.SeedSequence:
    """The SeedSequence of one case, independent of how many cases or workers there are."""
    if isinstance(seed, np.random.SeedSequence):
        entropy, prefix = seed.entropy, tuple(seed.spawn_key)
    else:
        entropy, prefix = int(seed), ()
    return np.random.SeedSequence(entropy, spawn_key=(*prefix, _COHORT_KEY[external], int(case_index)))


def _child_rng(ss: np.random.SeedSequence, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, *key)))


def ct_grid(rng: np.random.Generator, external: bool, shape: tuple[int, int, int] | None) -> GridSpec:
    """The CT grid of a case: table offset, voxel size and (external) orientation vary."""
    center = (rng.uniform(-20, 20), rng.uniform(-20, 20), rng.uniform(-950, -850))
    if external:
        # Another scanner: finer in-plane sampling, 2.5 or 5 mm slices, stored LPS-wise.
        inplane = rng.uniform(2.3, 2.7)
        thickness = float(rng.choice([2.5, 5.0]))
        default = (round(384 / inplane), round(384 / inplane), round(190 / thickness))
        flip = True
    else:
        inplane, thickness = rng.uniform(2.85, 3.0), 3.0
        default, flip = CT_SHAPE, False
    spacing = (inplane, inplane, thickness)
    if shape is not None:
        # Same field of view on fewer voxels, for tiny test cohorts.
        spacing = tuple(s * d / n for s, d, n in zip(spacing, default, shape, strict=True))  # type: ignore[assignment]
        default = shape
    return centered_grid(default, spacing, center, flip_xy=flip)  # type: ignore[arg-type]


def _lesion_params(rng: np.random.Generator, grade: int) -> dict[str, float]:
    """Lesion descriptors; a shared aggressiveness term makes them overlap across grades."""
    shared = rng.normal(0.0, 1.0)

    def aggressiveness() -> float:
        return float(np.clip(grade + shared + rng.normal(0.0, 0.6), -1.0, 3.5))

    return {
        "radius_mm": float(np.clip(13.0 + 5.0 * aggressiveness(), 7.0, 38.0)),
        "irregularity": float(np.clip(0.06 + 0.06 * aggressiveness(), 0.0, 0.35)),
        "heterogeneity_hu": float(np.clip(5.0 + 4.0 * aggressiveness(), 2.0, 22.0)),
        "contrast_hu": float(np.clip(12.0 + 9.0 * aggressiveness(), 4.0, 45.0)),
        "necrosis_fraction": float(
            np.clip(0.2 + 0.12 * aggressiveness(), 0.15, 0.65)
            if rng.random() < (0.1, 0.35, 0.7)[grade]
            else 0.0
        ),
        "satellites": float(rng.integers(1, 4) if rng.random() < (0.0, 0.08, 0.45)[grade] else 0),
    }


def _body(grid: GridSpec, rng: np.random.Generator, hu: np.ndarray, tissue: dict[str, np.ndarray]) -> dict:
    """Fat, abdominal wall, viscera, spine, ribs, aorta and IVC, painted into `hu` in place."""
    x, y, z = grid.axes()
    cx, cy = rng.uniform(-10, 10), rng.uniform(-10, 10)
    a, b = rng.uniform(140, 172), rng.uniform(100, 125)
    fat_mm, wall_mm = rng.uniform(10, 30), rng.uniform(8, 14)
    body = ellipsoid_radius((x, y, z), (cx, cy, 0), (a, b, np.inf)) < 1
    inner_wall = ellipsoid_radius((x, y, z), (cx, cy, 0), (a - fat_mm, b - fat_mm, np.inf)) < 1
    viscera = (
        ellipsoid_radius((x, y, z), (cx, cy, 0), (a - fat_mm - wall_mm, b - fat_mm - wall_mm, np.inf)) < 1
    )
    hu[body] = -100.0
    hu[inner_wall] = 50.0
    # Viscera: a mixture of mesenteric fat and bowel, with a few gas pockets.
    mix = smooth_noise(rng, grid, 30.0)
    gas = smooth_noise(rng, grid, 15.0)
    visceral = np.where(mix > 0.4, -90.0, 35.0).astype(np.float32)
    visceral[gas > 2.3] = -850.0
    hu[viscera] = visceral[viscera]
    tissue["fat"] = body & ~inner_wall | (viscera & (mix > 0.4))
    tissue["muscle"] = inner_wall & ~viscera
    tissue["bowel"] = viscera & (mix <= 0.4)

    spine_y = cy - b + fat_mm + wall_mm + 22.0
    paraspinal = (ellipsoid_radius((x, y, z), (cx - 32, spine_y - 8, 0), (22, 18, np.inf)) < 1) | (
        ellipsoid_radius((x, y, z), (cx + 32, spine_y - 8, 0), (22, 18, np.inf)) < 1
    )
    hu[paraspinal] = 50.0
    tissue["muscle"] |= paraspinal
    r_vert = ellipsoid_radius((x, y, z), (cx, spine_y + 5, 0), (19, 16, np.inf))
    posterior = ellipsoid_radius((x, y, z), (cx, spine_y - 20, 0), (14, 6, np.inf)) < 1
    hu[r_vert < 1] = 700.0
    hu[r_vert < 0.8] = 220.0  # cancellous bone inside the cortical shell
    hu[posterior] = 700.0
    tissue["marrow"] = r_vert < 0.8
    # Ribs: short bone arcs just inside the wall, oblique so each slice cuts a few of them.
    angle = np.arctan2((y - cy) / b, (x - cx) / a)
    r_body = ellipsoid_radius((x, y, z), (cx, cy, 0), (a - fat_mm - 3, b - fat_mm - 3, np.inf))
    ribs = (np.abs(r_body - 1.0) < 0.035) & (np.cos(9 * angle + z / 14.0) > 0.75) & (np.sin(angle) > -0.55)
    hu[ribs] = 700.0

    aorta_c = (cx - 18, spine_y + 34)
    aorta = ellipsoid_radius((x, y, z), (*aorta_c, 0), (11, 11, np.inf)) < 1
    ivc = ellipsoid_radius((x, y, z), (cx + 22, spine_y + 38, 0), (12, 9, np.inf)) < 1
    tissue["blood"] = aorta | ivc
    return {"cx": cx, "cy": cy, "a": a, "b": b, "spine_y": spine_y, "body": body, "aorta": aorta, "ivc": ivc}


def _organs(
    grid: GridSpec,
    rng: np.random.Generator,
    hu: np.ndarray,
    tissue: dict[str, np.ndarray],
    body: dict,
    external: bool,
) -> tuple[np.ndarray, float]:
    """Kidneys, spleen, liver with portal and hepatic vessels; returns the liver mask and its HU."""
    x, y, z = grid.axes()
    cx, cy, b, spine_y = body["cx"], body["cy"], body["b"], body["spine_y"]
    zc = grid.center()[2] + rng.uniform(-12, 12) + 12.0
    # Late (external) phase: darker liver, vessels barely brighter than parenchyma.
    liver_hu = rng.normal(90.0, 6.0) if external else rng.normal(106.0, 4.0)
    vessel_hu = liver_hu + (rng.uniform(15, 30) if external else rng.uniform(45, 65))
    blood_hu = vessel_hu + rng.uniform(5, 25)

    kidneys = np.zeros(grid.shape, dtype=bool)
    for side in (-1, 1):
        kidney_c = (cx + side * 62, spine_y + 8, zc - rng.uniform(55, 75))
        kidneys |= ellipsoid_radius((x, y, z), kidney_c, (24, 20, 45)) < 1
    hu[kidneys] = 150.0 if not external else 130.0
    spleen_c = (cx - rng.uniform(80, 95), cy - rng.uniform(15, 35), zc + rng.uniform(-10, 10))
    spleen = ellipsoid_radius((x, y, z), spleen_c, (35, 45, 50)) < 1 + 0.1 * smooth_noise(rng, grid, 40.0)
    spleen &= body["body"] & ~(hu > 500)
    hu[spleen] = liver_hu + rng.uniform(0, 10)

    liver_c = (cx + rng.uniform(45, 60), cy + rng.uniform(-5, 15), zc)
    semi = (rng.uniform(78, 92), rng.uniform(68, 82), rng.uniform(70, 85))
    shape_noise = smooth_noise(rng, grid, 50.0)
    inside = ellipsoid_radius((x, y, z), (cx, cy, 0), (body["a"] - 35, b - 32, np.inf)) < 1
    liver = (ellipsoid_radius((x, y, z), liver_c, semi) < 1 + 0.12 * shape_noise) & inside
    liver &= ~(hu > 500) & ~body["ivc"] & ~kidneys
    texture = smooth_noise(rng, grid, 8.0)
    hu[liver] = liver_hu + 4.0 * texture[liver]
    # Vessels: where two independent smooth fields both cross zero, a branching tube network.
    f1, f2 = smooth_noise(rng, grid, 45.0), smooth_noise(rng, grid, 45.0)
    vessels = liver & (np.abs(f1) < 0.12) & (np.abs(f2) < 0.12)
    hu[vessels] = vessel_hu
    hu[body["aorta"] | body["ivc"]] = blood_hu

    tissue.update(kidney=kidneys, spleen=spleen, liver=liver)
    for name in ("fat", "muscle", "bowel"):
        tissue[name] &= ~(liver | spleen | kidneys)
    return liver, float(liver_hu)


def _lesion(
    grid: GridSpec,
    rng: np.random.Generator,
    hu: np.ndarray,
    liver: np.ndarray,
    liver_hu: float,
    params: dict[str, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Paint the dominant lesion and satellites into `hu`; returns (tumour, necrosis) masks."""
    x, y, z = grid.axes()
    radius = params["radius_mm"]
    center = _point_in(liver, grid, rng, margin_mm=0.6 * radius)
    distortion = smooth_noise(rng, grid, max(radius * 0.8, 8.0))
    r = ellipsoid_radius((x, y, z), center, (radius, radius * rng.uniform(0.85, 1.15), radius))
    tumor = (r < 1 + params["irregularity"] * distortion) & liver
    for _ in range(int(params["satellites"])):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        sat_c = np.asarray(center) + direction * radius * rng.uniform(1.4, 2.2)
        tumor |= (ellipsoid_radius((x, y, z), sat_c, (1, 1, 1)) < rng.uniform(4, 8)) & liver
    necrosis = tumor & (r < params["necrosis_fraction"] * (1 + 0.3 * distortion))

    grain = smooth_noise(rng, grid, 6.0)
    lesion_hu = liver_hu - params["contrast_hu"] + params["heterogeneity_hu"] * grain
    hu[tumor] = lesion_hu[tumor]
    hu[necrosis] = rng.uniform(12, 30) + 4.0 * grain[necrosis]
    return tumor, necrosis


def _point_in(mask: np.ndarray, grid: GridSpec, rng: np.random.Generator, margin_mm: float) -> np.ndarray:
    """A random RAS point of `mask` at least about `margin_mm` from its edge (or its deepest point)."""
    # Every other voxel is plenty to place a lesion, and 8x cheaper.
    depth = ndimage.distance_transform_edt(mask[::2, ::2, ::2], sampling=2 * np.array(grid.spacing))
    candidates = np.argwhere(depth >= min(margin_mm, float(depth.max()) * 0.7))
    ijk = 2 * candidates[rng.integers(len(candidates))]
    return grid.affine[:3, :3] @ ijk + grid.affine[:3, 3]


def _make_phantom(ss: np.random.SeedSequence, external: bool, shape: tuple[int, int, int] | None) -> _Phantom:
    rng = _child_rng(ss, 0)
    grade = int(rng.choice(3, p=GRADE_PROBABILITIES))
    params = _lesion_params(rng, grade)
    grid = ct_grid(rng, external, shape)
    hu = np.full(grid.shape, -1000.0, dtype=np.float32)
    tissue: dict[str, np.ndarray] = {}
    body = _body(grid, rng, hu, tissue)
    liver, liver_hu = _organs(grid, rng, hu, tissue, body, external)
    tumor, necrosis = _lesion(grid, rng, hu, liver, liver_hu, params)
    params["tumor_volume_ml"] = float(tumor.sum() * np.prod(grid.spacing) / 1000.0)
    return _Phantom(grid, hu, tissue, liver, tumor, necrosis, grade, params)


# Background SUV per tissue for each tracer; the tumour is set relative to liver.
_PET_SUV = {
    "pet_fdg": {
        "fat": 0.35,
        "muscle": 0.8,
        "bowel": 1.3,
        "marrow": 1.3,
        "blood": 1.7,
        "kidney": 3.0,
        "spleen": 1.9,
    },
    "pet_act": {
        "fat": 0.3,
        "muscle": 0.7,
        "bowel": 1.6,
        "marrow": 1.0,
        "blood": 0.8,
        "kidney": 2.0,
        "spleen": 1.5,
    },
}
_LIVER_SUV = {"pet_fdg": (2.2, 0.25), "pet_act": (1.7, 0.2)}


def _pet(
    phantom: _Phantom, tracer: str, rng: np.random.Generator, tlr: float
) -> tuple[np.ndarray, np.ndarray]:
    """One PET tracer in SUV on its own coarser grid: painted, blurred 6 mm, resampled, noisy."""
    liver_suv = max(rng.normal(*_LIVER_SUV[tracer]), 0.8)
    activity = np.zeros(phantom.grid.shape, dtype=np.float32)
    for name, tissue_suv in _PET_SUV[tracer].items():
        activity[phantom.tissue[name]] = tissue_suv * rng.uniform(0.85, 1.15)
    activity[phantom.liver] = liver_suv
    activity[phantom.tumor] = liver_suv * tlr
    activity[phantom.necrosis] = 0.4

    # PET grid: its own voxel size and origin, covering the CT field of view.
    ct = phantom.grid
    spacing = max(4.0, 1.3 * max(ct.spacing[:2])) + rng.uniform(0.0, 1.0)
    fov = np.array(ct.shape) * np.array(ct.spacing)
    shape = tuple(int(np.ceil(f / spacing)) for f in fov)
    center = ct.center() + rng.uniform(-6.0, 6.0, size=3)
    grid = centered_grid(shape, (spacing, spacing, spacing), tuple(center))  # type: ignore[arg-type]
    to_ct = np.linalg.inv(ct.affine) @ grid.affine
    # Both grids are axis-aligned, so the map is a diagonal (zoom and shift: the fast path).
    suv = ndimage.affine_transform(
        activity, np.diag(to_ct[:3, :3]), offset=to_ct[:3, 3], output_shape=grid.shape, order=1, cval=0.0
    )
    # Blurring on the coarser PET grid is 3-4x cheaper than on the CT grid, and the same
    # resolution results, since the blur is wider than either voxel.
    suv = gaussian_blur_mm(suv, PET_FWHM_MM, grid.spacing)
    # Counting noise, correlated over about a voxel as in reconstructed PET.
    noise = ndimage.gaussian_filter(rng.standard_normal(grid.shape).astype(np.float32), 0.7)
    noise /= max(float(noise.std()), 1e-6)
    suv = suv + rng.uniform(0.10, 0.16) * np.sqrt(np.maximum(suv, 0.0)) * noise
    return np.maximum(suv, 0.0).astype(np.float32), grid.affine


def _photons(ss: np.random.SeedSequence, external: bool) -> float:
    """Full-dose photons: the external scanner runs at a lower, case-varying tube current."""
    return DEFAULT_I0 * (_child_rng(ss, 3).uniform(0.45, 0.8) if external else 1.0)


def generate_hcc_case(
    seed: int | np.random.SeedSequence,
    case_index: int,
    *,
    external: bool = False,
    dose: float = 1.0,
    shape: tuple[int, int, int] | None = None,
) -> HccCase:
    """Generate one case; the same (seed, case_index, external) always gives the same case.

    Args:
        seed: cohort seed (an int or a SeedSequence).
        case_index: index of the case within the cohort.
        external: draw from the shifted external cohort (other scanner, late phase, CT only).
        dose: CT dose as a fraction of the full dose, in (0, 1].
        shape: CT grid (x, y, z) voxels keeping the default field of view (None: default).
    """
    return _generate(case_seed(seed, case_index, external), case_index, external, (dose,), shape)[0]


def _generate(
    ss: np.random.SeedSequence,
    case_index: int,
    external: bool,
    doses: Sequence[float],
    shape: tuple[int, int, int] | None,
) -> list[HccCase]:
    """One phantom acquired at each of `doses` (the anatomy and PET are shared)."""
    phantom = _make_phantom(ss, external, shape)
    masks = {"liver": phantom.liver.astype(np.uint8), "tumor": phantom.tumor.astype(np.uint8)}
    pet_vol: dict[str, np.ndarray] = {}
    pet_aff: dict[str, np.ndarray] = {}
    if not external:
        rng = _child_rng(ss, 1)
        ratios = {
            "pet_fdg": FDG_TLR[phantom.grade] * float(np.exp(rng.normal(0.0, PET_TLR_LOG_SD))),
            "pet_act": ACETATE_TLR[phantom.grade] * float(np.exp(rng.normal(0.0, PET_TLR_LOG_SD))),
        }
        for tracer, tlr in ratios.items():
            pet_vol[tracer], pet_aff[tracer] = _pet(phantom, tracer, rng, tlr)
            phantom.params[f"{tracer}_tlr"] = tlr
    photons = _photons(ss, external)
    cases = []
    for dose in doses:
        # The noise of each dose level has its own stream, keyed by the dose in 1/1000 steps.
        noise_rng = _child_rng(ss, 2, round(dose * 1000))
        ct = simulate_low_dose(phantom.hu, phantom.grid.spacing, dose, noise_rng, i0=photons)
        cases.append(
            HccCase(
                case_index=case_index,
                grade=GRADES[phantom.grade],
                dose=float(dose),
                volumes={"ct": ct, **pet_vol},
                affines={"ct": phantom.grid.affine, **pet_aff},
                masks=masks,
                params=dict(phantom.params),
            )
        )
    return cases


def case_id(case_index: int, external: bool, dose: float, n_doses: int) -> str:
    """``hcc0007`` or, one row per dose, ``ext0007_d25`` (dose in percent)."""
    base = f"{'ext' if external else 'hcc'}{case_index:04d}"
    return f"{base}_d{round(dose * 100):02d}" if (external or n_doses > 1) else base


def _write_case(job: tuple) -> list[dict[str, str]]:
    """Worker: generate one case at every dose, write its files, return its manifest rows."""
    seed, index, external, doses, shape, out_dir = job
    rows = []
    for case in _generate(case_seed(seed, index, external), index, external, doses, shape):
        cid = case_id(index, external, case.dose, len(doses))
        folder = Path(out_dir) / cid
        folder.mkdir(parents=True, exist_ok=True)
        row = dict.fromkeys(MANIFEST_COLUMNS, "")
        for name, array in case.volumes.items():
            write_nifti(folder / f"{name}.nii.gz", _stored(name, array), case.affines[name])
            row[name] = f"{cid}/{name}.nii.gz"
        for name, mask in case.masks.items():
            write_nifti(folder / f"{name}.nii.gz", mask, case.affines["ct"])
            row[f"{name}_mask"] = f"{cid}/{name}.nii.gz"
        row.update(case_id=cid, grade=case.grade, dose=f"{case.dose:g}")
        rows.append(row)
    return rows


def run_jobs(worker, jobs: list, workers: int | None, progress: bool, desc: str, spawn: bool = False) -> list:
    """Run `worker` over `jobs` in a process pool (or inline for one worker), results in job order.

    `spawn` starts fresh interpreters: workers that run torch or ONNX Runtime need it, since
    a forked copy of a multi-threaded parent can deadlock in its thread pools.
    """
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got workers={workers}")
    bar = tqdm(total=len(jobs), desc=desc, unit="case", disable=not progress)
    results: list = [None] * len(jobs)
    if workers == 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            results[i] = worker(job)
            bar.update()
    else:
        # fork: workers only run numpy/scipy, and unlike spawn it needs no __main__ guard in
        # the caller's script; spawn where fork does not exist.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() and not spawn else "spawn"
        ctx = multiprocessing.get_context(method)
        with ctx.Pool(min(workers, len(jobs))) as pool:
            for i, result in pool.imap_unordered(_indexed, [(worker, i, job) for i, job in enumerate(jobs)]):
                results[i] = result
                bar.update()
    bar.close()
    return results


def _indexed(item: tuple) -> tuple[int, object]:
    worker, index, job = item
    return index, worker(job)


def write_hcc_cohort(
    out_dir: str | Path,
    n_cases: int,
    seed: int,
    *,
    external: bool = False,
    doses: Sequence[float] | None = None,
    workers: int | None = None,
    progress: bool = True,
    shape: tuple[int, int, int] | None = None,
) -> Path:
    """Generate `n_cases` HCC-like cases under `out_dir` and write ``manifest.csv``.

    Args:
        out_dir: destination folder (created).
        n_cases: number of cases (each external case gives one row per dose).
        seed: cohort seed; case i is the same whatever `n_cases` and `workers` are.
        external: the shifted external cohort (CT only, all split ``test``).
        doses: CT dose levels; default ``(1.0,)``, or 100/50/25/10/5 % when `external`.
        workers: processes (default: all cores).
        progress: show a tqdm progress bar.
        shape: CT grid (x, y, z) voxels for small test cohorts (the field of view is kept).

    Returns:
        Path to the manifest CSV.
    """
    if n_cases < 1:
        raise ValueError(f"n_cases must be at least 1, got n_cases={n_cases}")
    doses = tuple(doses) if doses is not None else (EXTERNAL_DOSES if external else (1.0,))
    for dose in doses:
        if not 0.0 < dose <= 1.0:
            raise ValueError(f"every dose must be in (0, 1], got dose={dose}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(int(seed), i, external, doses, shape, str(out)) for i in range(n_cases)]
    desc = "hcc external" if external else "hcc"
    rows = [row for case_rows in run_jobs(_write_case, jobs, workers, progress, desc) for row in case_rows]

    if external:
        splits = ["test"] * len(rows)
    else:
        per_case = assign_splits(_case_grades(rows, len(doses)), seed)
        splits = [s for s in per_case for _ in doses]
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        for row, split in zip(rows, splits, strict=True):
            writer.writerow({**row, "split": split})
    return manifest


def _case_grades(rows: list[dict[str, str]], n_doses: int) -> list[str]:
    """One grade per case from rows laid out case-major, `n_doses` rows per case."""
    return [rows[i]["grade"] for i in range(0, len(rows), n_doses)]


def _stored(name: str, array: np.ndarray) -> np.ndarray:
    """float32 as written; CT rounded to whole HU as scanners store it (and 3x smaller gzipped)."""
    return np.rint(array).astype(np.float32) if name == "ct" else array.astype(np.float32)
