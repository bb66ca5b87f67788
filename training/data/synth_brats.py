"""Synthetic BraTS-like glioma cohort in the BraTS 2019 folder layout.

``<out>/HGG/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz`` and ``<out>/LGG/...``, ids like
``BraTS19_SYN_0001_1``. A head with scalp, skull, CSF, grey and white matter and ventricles;
MRI contrasts as in real scans (T1: WM > GM > CSF; T2: CSF > GM > WM; FLAIR: CSF dark).
Segmentation labels as in BraTS: 1 necrotic / non-enhancing core, 2 edema, 4 enhancing.

Grades (HGG : LGG about 3.4 : 1 as in BraTS 2019, or `lgg_fraction`) show through five
signs, each drawn from its own noisy aggressiveness: core size, edema extent (T2/FLAIR),
enhancement (T1ce: a rim, a focus or none), necrosis (dark on T1/T1ce, bright on T2, dark on
FLAIR) and mass effect. Each sequence sees some of them, so one sequence alone tells the grades
apart less well than all four, and neither does so perfectly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.data.phantom import GridSpec, centered_grid, ellipsoid_radius, smooth_noise, write_nifti
from training.data.synth_hcc import run_jobs

LGG_FRACTION = 1.0 / 4.4
"""BraTS 2019's share of LGG (76 of 335); a cohort may be drawn balanced instead, so that a
test split holds enough LGG to measure how often they are told apart."""
MODALITIES = ("t1", "t1ce", "t2", "flair")
# Tissue -> signal per modality (arbitrary scanner units, like BraTS's). Columns: MODALITIES.
SIGNAL = {
    "fat": (900, 900, 500, 600),
    "skull": (60, 60, 50, 40),
    "csf": (200, 200, 1000, 90),
    "gm": (500, 520, 620, 560),
    "wm": (700, 710, 420, 420),
    "edema": (430, 440, 860, 900),
    "core": (380, 400, 820, 760),  # non-enhancing tumour
    "necrosis": (250, 260, 960, 420),
    "enhancing": (420, 1500, 720, 700),  # enhances on T1ce only, brighter than fat
}
_COHORT_KEY = 2  # spawn-key prefix, distinct from the HCC cohorts


def _case_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(_COHORT_KEY, int(index))))


# How the grade shows (docs/benchmark.md): each sign k of a case reads an aggressiveness
# a_k = GRADE_SHIFT[k] * (+1 HGG, -1 LGG) + shared + own_k, shared ~ N(0, SHARED_SD) for the
# case and own_k ~ N(0, OWN_SD) for the sign. Signs seen by one sequence only are weak alone
# and add up across sequences; the shared term keeps all four from saturating.
GRADE_SHIFT = {"size": 0.4, "edema": 0.9, "enhancement": 1.1, "necrosis": 0.9, "mass_effect": 0.5}
SHARED_SD = 0.3
OWN_SD = 1.0


def _tumour_params(rng: np.random.Generator, hgg: bool) -> dict[str, float]:
    """Sizes in mm, each from its own aggressiveness (see GRADE_SHIFT)."""
    sign = 1.0 if hgg else -1.0
    shared = rng.normal(0.0, SHARED_SD)
    a = {k: shift * sign + shared + rng.normal(0.0, OWN_SD) for k, shift in GRADE_SHIFT.items()}
    core = float(np.clip(17 + 3.5 * a["size"], 8, 30))
    enhancement, necrosis = a["enhancement"], a["necrosis"]
    return {
        "core_mm": core,
        "edema_mm": core + float(np.clip(12 + 6 * a["edema"], 2, 32)),
        # Enhancement (T1ce only): a rim when strong, a small focus when faint, else none; so
        # some HGG do not enhance and some LGG do a little.
        "ring_mm": float(np.clip(2.5 + 1.5 * enhancement, 1.5, 7)) if enhancement > 0.3 else 0.0,
        "focus_mm": 3 + 3 * (enhancement + 0.4) if -0.4 < enhancement <= 0.3 else 0.0,
        "necrosis_frac": float(np.clip(0.35 + 0.2 * necrosis, 0.1, 0.8)) if necrosis > -0.3 else 0.0,
        "mass_effect_mm": float(np.clip(5 + 3 * a["mass_effect"], 0, 12)),
    }


def _warp(axes: tuple, center: np.ndarray, radius: float, amount: float) -> tuple:
    """Coordinates at which to sample normal anatomy so it is pushed away from the tumour."""
    d = [a - np.float32(c) for a, c in zip(axes, center, strict=True)]
    dist = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2) + 1e-3
    # Radial push, fading over about the tumour radius; the source point moves towards the centre.
    push = amount * np.exp(-np.maximum(dist - radius, 0) / max(radius, 1.0))
    scale = np.maximum(dist - push, 0.0) / dist
    return tuple(np.float32(c) + di * scale for c, di in zip(center, d, strict=True))


def _anatomy(grid: GridSpec, rng: np.random.Generator, axes: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Tissue index map over ("bg", "fat", "skull", "csf", "gm", "wm") and the head mask."""
    head_axes = np.array([rng.uniform(68, 76), rng.uniform(86, 94), rng.uniform(66, 74)])
    center = grid.center() + rng.uniform(-4, 4, size=3)
    bumps = 0.02 * smooth_noise(rng, grid, 40.0)
    r = ellipsoid_radius(axes, center, head_axes) + bumps
    scale = head_axes.mean()
    tissue = np.zeros(grid.shape, dtype=np.uint8)
    tissue[r < 1] = 1  # scalp fat
    tissue[r < 1 - 5 / scale] = 2  # skull
    tissue[r < 1 - 11 / scale] = 3  # subarachnoid CSF
    folds = 0.035 * smooth_noise(rng, grid, 10.0)  # gyri: a wavy grey-white boundary
    tissue[r < 1 - 14 / scale] = 4  # cortex
    tissue[r + folds < 1 - 22 / scale] = 5  # white matter
    for side in (-1, 1):
        ventricle = ellipsoid_radius(axes, center + np.array([side * 8, 5, 8]), (6, 22, 10)) < 1
        tissue[ventricle] = 3
    return tissue, r < 1


def _tumour(
    grid: GridSpec, rng: np.random.Generator, axes: tuple, params: dict[str, float], brain: np.ndarray
) -> np.ndarray:
    """BraTS label map (0, 1, 2, 4) of a lesion in one hemisphere."""
    center = grid.center() + np.array(
        [rng.choice([-1, 1]) * rng.uniform(22, 38), rng.uniform(-30, 30), rng.uniform(0, 25)]
    )
    r = ellipsoid_radius(axes, center, (1.0, 1.0, 1.0))
    shape = smooth_noise(rng, grid, 12.0)
    seg = np.zeros(grid.shape, dtype=np.uint8)
    seg[r < params["edema_mm"] * (1 + 0.2 * shape)] = 2
    core = r < params["core_mm"] * (1 + 0.12 * shape)
    seg[core] = 1
    if params["ring_mm"] > 0:
        # Enhancing rim around a necrotic centre (label 1 covers necrosis too in BraTS).
        seg[core & (r > params["core_mm"] * (1 + 0.12 * shape) - params["ring_mm"])] = 4
    if params["focus_mm"] > 0:
        seg[ellipsoid_radius(axes, center + rng.uniform(-5, 5, 3), (1, 1, 1)) < params["focus_mm"]] = 4
    seg[~brain] = 0
    return seg


def _images(
    grid: GridSpec, rng: np.random.Generator, tissue: np.ndarray, seg: np.ndarray, necrosis: np.ndarray
) -> dict[str, np.ndarray]:
    names = ("bg", "fat", "skull", "csf", "gm", "wm")
    label_tissue = {2: "edema", 1: "core", 4: "enhancing"}
    bias = 1.0 + 0.08 * smooth_noise(rng, grid, 120.0)  # coil sensitivity
    texture = smooth_noise(rng, grid, 5.0)
    images = {}
    for m, modality in enumerate(MODALITIES):
        lut = np.array([0.0] + [SIGNAL[n][m] for n in names[1:]], dtype=np.float32)
        image = lut[tissue]
        for label, name in label_tissue.items():
            image[seg == label] = SIGNAL[name][m]
        image[necrosis] = SIGNAL["necrosis"][m]
        tumour = seg > 0
        image[tumour] *= 1.0 + 0.06 * texture[tumour]
        gain = rng.uniform(0.75, 1.25)
        noise = rng.normal(0.0, 0.025 * SIGNAL["wm"][m], size=grid.shape).astype(np.float32)
        image = (image * bias * gain + noise) * (tissue > 0)
        images[modality] = np.maximum(image, 0.0).astype(np.float32)
    return images


def generate_brats_case(
    seed: int,
    case_index: int,
    *,
    shape: tuple[int, int, int] = (240, 240, 155),
    spacing: float = 1.0,
    lgg_fraction: float = LGG_FRACTION,
    skull_stripped: bool = False,
) -> tuple[str, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """One case: ``(grade "HGG"|"LGG", {modality: image}, seg uint8, affine)``, deterministic
    in (seed, index, lgg_fraction). `skull_stripped`: everything outside the brain (scalp,
    skull) is 0, as real BraTS scans ship; the same case otherwise."""
    rng = _case_rng(seed, case_index)
    hgg = bool(rng.random() < 1.0 - lgg_fraction)
    params = _tumour_params(rng, hgg)
    # Stored LPS-wise with the origin of the BraTS grid, like the real NIfTIs.
    grid = centered_grid(shape, (spacing, spacing, spacing), (0.0, 0.0, 0.0), flip_xy=True)
    axes = grid.axes()
    tumour_rng = np.random.default_rng(rng.integers(2**63))
    _, brain_probe = _anatomy(grid, np.random.default_rng(0), axes)
    seg = _tumour(grid, tumour_rng, axes, params, brain_probe)
    center = np.array(
        [float(np.mean(a[seg > 0])) if (seg > 0).any() else 0.0 for a in np.broadcast_arrays(*axes)]
    )
    warped = _warp(axes, center, params["core_mm"], params["mass_effect_mm"])
    tissue, _ = _anatomy(grid, rng, warped)
    seg[tissue < 3] = 0  # the tumour stays inside the brain
    core = seg == 1
    necrosis = core & (
        ellipsoid_radius(axes, center, (1, 1, 1)) < params["core_mm"] * params["necrosis_frac"]
    )
    images = _images(grid, rng, tissue, seg, necrosis)
    if skull_stripped:
        brain = tissue >= 3  # CSF, grey and white matter, ventricles
        images = {name: image * brain for name, image in images.items()}
    return ("HGG" if hgg else "LGG"), images, seg, grid.affine


def _write_case(job: tuple) -> str:
    seed, index, shape, spacing, lgg_fraction, stripped_fraction, out = job
    # Its own stream: a cohort without stripped cases draws exactly the cases it did before.
    stripped = bool(np.random.default_rng([seed, index, 7]).random() < stripped_fraction)
    grade, images, seg, affine = generate_brats_case(
        seed, index, shape=shape, spacing=spacing, lgg_fraction=lgg_fraction, skull_stripped=stripped
    )
    case_id = f"BraTS19_SYN_{index + 1:04d}_1"
    folder = Path(out) / grade / case_id
    folder.mkdir(parents=True, exist_ok=True)
    for modality, image in images.items():
        write_nifti(folder / f"{case_id}_{modality}.nii.gz", np.rint(image).astype(np.float32), affine)
    write_nifti(folder / f"{case_id}_seg.nii.gz", seg, affine)
    return grade


def write_brats_cohort(
    out_dir: str | Path,
    n_cases: int,
    seed: int,
    *,
    workers: int | None = None,
    progress: bool = True,
    shape: tuple[int, int, int] = (240, 240, 155),
    spacing: float = 1.0,
    lgg_fraction: float = LGG_FRACTION,
    skull_stripped: float = 0.0,
) -> Path:
    """Write `n_cases` BraTS-like cases under `out_dir` (BraTS 2019 layout); returns `out_dir`.

    Args:
        out_dir: destination root (``HGG/`` and ``LGG/`` are created in it).
        n_cases: number of cases.
        seed: cohort seed; case i is the same whatever `n_cases` and `workers` are.
        workers: processes (default: all cores).
        progress: show a tqdm progress bar.
        shape: grid (x, y, z) voxels; the default is the BraTS grid. Tests use e.g. (60, 60, 40).
        spacing: isotropic voxel size in mm (use ~4 mm with a small shape to keep the head).
        lgg_fraction: the chance that a case is LGG (default BraTS 2019's; 0.5 balanced).
        skull_stripped: the chance that a case is skull-stripped, as real BraTS scans are.
    """
    if n_cases < 1:
        raise ValueError(f"n_cases must be at least 1, got n_cases={n_cases}")
    if spacing <= 0:
        raise ValueError(f"spacing must be positive, got spacing={spacing}")
    if not 0.0 <= lgg_fraction <= 1.0:
        raise ValueError(f"lgg_fraction must be in [0, 1], got lgg_fraction={lgg_fraction}")
    if not 0.0 <= skull_stripped <= 1.0:
        raise ValueError(f"skull_stripped must be in [0, 1], got skull_stripped={skull_stripped}")
    out = Path(out_dir)
    for grade in ("HGG", "LGG"):
        (out / grade).mkdir(parents=True, exist_ok=True)
    jobs = [
        (int(seed), i, tuple(shape), float(spacing), float(lgg_fraction), float(skull_stripped), str(out))
        for i in range(n_cases)
    ]
    run_jobs(_write_case, jobs, workers, progress, "brats")
    return out
