"""A broad synthetic CT cohort for the liver and lesion segmenter: torsos and heads of every fit.

The grading benchmark (`training.data.synth_hcc`) draws one kind of scan: a 192 mm slab of
portal-venous abdomen on 3 mm voxels. A segmenter trained on it alone would meet its first
real CT unprepared: another contrast phase, lungs and heart above the liver, a pelvis below,
0.7 mm pixels, 5 mm slices, a liver cut by the field of view, or no liver at all. This
generator is broad on purpose (docs/segmenter.md says why each axis varies):

* Anatomy along the whole trunk, in the patient's own frame: lungs and heart above the
  diaphragm domes, a liver shaped as a wedge under the right dome (a large right lobe
  tapering to a thin left lobe across the midline, its surfaces warped by smooth noise),
  gallbladder, stomach, spleen, pancreas, kidneys, aorta, IVC and portal vein, vertebrae
  with discs, ribs, bowel, pelvic bones and bladder; or a head and neck (no liver at all).
* Field of view: the abdomen, the liver cut at its top or bottom, the chest only, the
  pelvis only, chest to pelvis, a narrow in-plane field that cuts the body's sides.
* Acquisition: pixels 0.6-3.5 mm, slices 0.6-5 mm (thicker ones blur along z), noise
  5-45 HU per voxel (dose, slice thickness and kernel together), a patient table, padding
  outside the scan circle.
* Contrast timing: unenhanced, arterial, portal-venous or delayed, each organ's HU drawn
  from its range for that phase, then every soft tissue shifted by one case-wide offset.
* Lesions: none (a quarter of the torsos), or one to five anywhere in the liver, the dominant
  one drawn by the grading benchmark's rules (`synth_hcc._lesion_params`), hypo- or
  hyper-attenuating as the phase makes them, some with a necrotic core or an enhancing rim.

Cases are written as the HCC manifest layout (`ct`, `liver_mask` including the lesions,
`tumor_mask`; `grade` of the dominant lesion, empty without one), so the segmenter reads
them through the same reader as real cohorts. Case i is drawn from
``SeedSequence(seed, spawn_key=(2, i))``: the same whatever the number of cases or workers.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from training.data.phantom import GridSpec, centered_grid, smooth_noise, write_nifti
from training.data.synth_hcc import (
    GRADE_PROBABILITIES,
    GRADES,
    MANIFEST_COLUMNS,
    _lesion_params,
    assign_splits,
    run_jobs,
)

_COHORT_KEY = 2  # spawn-key prefix: never a case of the grading cohorts (0 and 1)
PHASES = ("unenhanced", "arterial", "portal", "delayed")
PHASE_PROBABILITIES = (0.2, 0.15, 0.5, 0.15)
# Fields of view and their shares: (name, probability).
FIELDS = (
    ("abdomen", 0.42),
    ("liver_cut_top", 0.1),
    ("liver_cut_bottom", 0.08),
    ("chest", 0.09),
    ("pelvis", 0.08),
    ("chest_abdomen_pelvis", 0.13),
    ("head", 0.10),
)
MAX_VOXELS = 24_000_000  # a case's stored grid; finer pixels get a smaller field or thicker slices

# HU of each tissue per phase: (low, high) of the case's draw.
_HU: dict[str, dict[str, tuple[float, float]]] = {
    "unenhanced": {
        "liver": (45, 68),
        "spleen": (38, 50),
        "kidney": (28, 38),
        "medulla": (28, 38),
        "pancreas": (32, 45),
        "blood": (35, 50),
        "portal": (35, 50),
        "myocardium": (38, 50),
        "bowel_wall": (30, 42),
        "stomach_wall": (30, 42),
        "muscle": (42, 58),
    },
    "arterial": {
        "liver": (62, 85),
        "spleen": (90, 140),
        "kidney": (150, 230),
        "medulla": (60, 100),
        "pancreas": (95, 130),
        "blood": (220, 380),
        "portal": (90, 140),
        "myocardium": (80, 110),
        "bowel_wall": (70, 110),
        "stomach_wall": (70, 110),
        "muscle": (48, 62),
    },
    "portal": {
        "liver": (95, 130),
        "spleen": (100, 130),
        "kidney": (140, 190),
        "medulla": (130, 180),
        "pancreas": (85, 115),
        "blood": (140, 200),
        "portal": (150, 210),
        "myocardium": (90, 120),
        "bowel_wall": (70, 100),
        "stomach_wall": (70, 100),
        "muscle": (50, 65),
    },
    "delayed": {
        "liver": (75, 100),
        "spleen": (80, 100),
        "kidney": (110, 150),
        "medulla": (120, 170),
        "pancreas": (70, 90),
        "blood": (95, 130),
        "portal": (95, 130),
        "myocardium": (75, 95),
        "bowel_wall": (55, 80),
        "stomach_wall": (55, 80),
        "muscle": (48, 62),
    },
}
# Lesion attenuation relative to liver, per phase: the share of hyper-attenuating lesions
# (arterial-phase HCC), and the (low, high) difference in HU of either kind.
_LESION_DELTA = {
    "unenhanced": (0.0, (10.0, 30.0)),
    "arterial": (0.55, (12.0, 55.0)),
    "portal": (0.0, (12.0, 50.0)),
    "delayed": (0.0, (12.0, 40.0)),
}


@dataclass
class TorsoCase:
    """One drawn case: CT in HU on its own grid, masks on that grid, what was drawn."""

    case_index: int
    ct: np.ndarray
    affine: np.ndarray
    liver: np.ndarray  # uint8, lesions included
    tumor: np.ndarray  # uint8
    grade: str  # of the dominant lesion; "" without a lesion
    params: dict[str, float | str] = field(default_factory=dict)


def torso_seed(seed: int, case_index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(int(seed), spawn_key=(_COHORT_KEY, int(case_index)))


class _Canvas:
    """The case's grid, with coordinates relative to the patient: ``u`` towards the
    patient's right, ``v`` anterior, ``w`` superior, in mm, origin on the right diaphragm
    dome above the body's centre line (RAS+ world = origin + (u, v, w))."""

    def __init__(self, grid: GridSpec, origin: np.ndarray) -> None:
        self.grid = grid
        x, y, z = grid.axes()
        self.shape = grid.shape
        # Read-only views of the full grid (no copies): every mask built from them is 3D.
        self.u = np.broadcast_to(x - np.float32(origin[0]), self.shape)
        self.v = np.broadcast_to(y - np.float32(origin[1]), self.shape)
        self.w = np.broadcast_to(z - np.float32(origin[2]), self.shape)

    def radius(self, center: tuple[float | np.ndarray, ...], semi: tuple[float, ...]) -> np.ndarray:
        """Normalised ellipsoid radius (< 1 inside); an infinite semi-axis ignores its axis."""
        total = np.zeros(self.shape, dtype=np.float32)
        for coord, c, s in zip((self.u, self.v, self.w), center, semi, strict=True):
            if np.isfinite(s):
                total += ((coord - np.float32(c)) / np.float32(s)) ** 2
        return np.sqrt(total)

    def noise(self, rng: np.random.Generator, scale_mm: float) -> np.ndarray:
        return smooth_noise(rng, self.grid, scale_mm)


def _draw_hu(rng: np.random.Generator, phase: str) -> dict[str, float]:
    hu = {name: float(rng.uniform(*bounds)) for name, bounds in _HU[phase].items()}
    shift = float(rng.normal(0.0, 6.0))  # scanner calibration and patient size
    return {name: value + shift for name, value in hu.items()}


def _body_semi_axes(canvas: _Canvas, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Left-right and antero-posterior semi-axes of the body outline at each slice (mm)."""
    size = rng.uniform(0.82, 1.2)
    w = canvas.w[0, 0, :]
    # Chest, waist, pelvis: a smooth profile along the trunk, then the case's own wobble.
    a = 158 + 14 * np.tanh((w - 60) / 80) - 8 * np.exp(-(((w + 160) / 90) ** 2)) + 10 * (w < -300)
    b = 115 + 8 * np.tanh((w - 80) / 80) + rng.uniform(-8, 14) * np.exp(-(((w + 150) / 120) ** 2))
    return (size * a * rng.uniform(0.92, 1.08)).astype(np.float32), (size * b).astype(np.float32)


def _paint_torso(canvas: _Canvas, rng: np.random.Generator, phase: str) -> dict[str, np.ndarray]:
    """Paint a trunk into a new HU array; returns it with the liver mask and tissue maps."""
    u, v, w = canvas.u, canvas.v, canvas.w
    hu = np.full(canvas.shape, -1000.0, dtype=np.float32)
    tone = _draw_hu(rng, phase)
    a, b = _body_semi_axes(canvas, rng)
    fat_mm = rng.uniform(6, 38)
    wall_mm = rng.uniform(7, 13)
    body_r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    cavity_r = np.sqrt((u / (a - fat_mm - wall_mm)) ** 2 + (v / (b - fat_mm - wall_mm)) ** 2)
    body = body_r < 1 + 0.015 * canvas.noise(rng, 60)
    hu[body] = rng.uniform(-115, -85)  # subcutaneous fat
    hu[body & (body_r > 0.985)] = tone["muscle"] - 10  # skin
    wall = body & (np.sqrt((u / (a - fat_mm)) ** 2 + (v / (b - fat_mm)) ** 2) < 1)
    hu[wall] = tone["muscle"]
    cavity = cavity_r < 1
    hu[cavity] = rng.uniform(-105, -80)  # visceral fat, filled by organs below

    # Diaphragm: two domes; the right one is the origin, the left one lower.
    left_drop = rng.uniform(8, 30)
    curvature = rng.uniform(130, 190)
    dome_r = -((u - 70) ** 2 + (v + 5) ** 2) / (2 * curvature)
    dome_l = -left_drop - ((u + 75) ** 2 + (v + 5) ** 2) / (2 * curvature)
    diaphragm = np.maximum(dome_r, dome_l)
    chest = cavity & (w > diaphragm)
    abdomen = cavity & ~chest
    hu[cavity & (np.abs(w - diaphragm) < 3.5)] = tone["muscle"]  # the diaphragm itself

    # Spine, its canal and the posterior elements along the whole trunk.
    spine_v = -(b - fat_mm - wall_mm) + rng.uniform(26, 34)
    vertebra = np.sqrt((u / 21) ** 2 + ((v - spine_v) / 17) ** 2) < 1
    disc = np.cos(2 * np.pi * (w - rng.uniform(0, 32)) / 32.0) > 0.72
    canal = np.sqrt((u / 9) ** 2 + ((v - spine_v + 27) / 8) ** 2) < 1
    posterior = (np.sqrt((u / 16) ** 2 + ((v - spine_v + 30) / 13) ** 2) < 1) & ~canal
    marrow_hu, cortex_hu = rng.uniform(140, 280), rng.uniform(600, 1100)
    hu[vertebra] = np.where(disc[vertebra], 85.0, marrow_hu)
    shell = vertebra & (np.sqrt((u / 21) ** 2 + ((v - spine_v) / 17) ** 2) > 0.82) & ~disc
    hu[shell] = cortex_hu
    hu[posterior] = cortex_hu
    hu[canal] = rng.uniform(5, 20)
    paraspinal = (np.sqrt(((np.abs(u) - 32) / 22) ** 2 + ((v - spine_v + 18) / 20) ** 2) < 1) & body
    hu[paraspinal & ~canal & ~posterior & ~vertebra] = tone["muscle"]
    bone = vertebra | posterior

    # Ribs: thin bony arcs just inside the wall from the chest down to the upper abdomen.
    ring = np.abs(np.sqrt((u / (a - fat_mm - 4)) ** 2 + (v / (b - fat_mm - 4)) ** 2) - 1) < 0.04
    angle = np.arctan2(v / b, u / a)
    ribs = ring & (np.cos(2 * np.pi * (w + 18 * np.sin(angle)) / 26.0) > 0.55) & (w > -170) & (w < 260)
    ribs &= np.sin(angle) < 0.7  # costal cartilage, not bone, in front
    hu[ribs] = cortex_hu * rng.uniform(0.8, 1.0)
    bone |= ribs

    # Lungs, heart, great vessels above the domes.
    mediastinum = np.sqrt(((u + 8) / rng.uniform(32, 42)) ** 2 + ((v - spine_v - 70) / 78) ** 2) < 1
    heart_c = (rng.uniform(-35, -15), rng.uniform(15, 35), rng.uniform(55, 75))
    heart_s = (rng.uniform(55, 70), rng.uniform(45, 58), rng.uniform(50, 62))
    heart_r = canvas.radius(heart_c, heart_s)
    heart = (heart_r < 1) & chest
    lungs = chest & ~mediastinum & ~heart & ~bone & (w > diaphragm + 3)
    lung_texture = canvas.noise(rng, 12)
    hu[lungs] = rng.uniform(-880, -820) + 25 * lung_texture[lungs]
    lung_vessels = lungs & (np.abs(canvas.noise(rng, 25)) < 0.05)
    hu[lung_vessels] = rng.uniform(-200, 40)
    hu[chest & mediastinum & ~heart & ~bone] = rng.uniform(-90, 20)
    hu[heart] = tone["myocardium"]
    hu[heart & (heart_r < 0.78)] = tone["blood"]
    aorta = (np.sqrt(((u + 14) / 12) ** 2 + ((v - spine_v - 28) / 12) ** 2) < 1) & (w < 120) & (w > -300)
    ivc = (np.sqrt(((u - 22) / 12) ** 2 + ((v - spine_v - 36) / 10) ** 2) < 1) & (w < 10) & (w > -320)
    blood = aorta | ivc

    # Liver: a wedge under the right dome (see the module notes), its surfaces warped.
    warp = 12 * canvas.noise(rng, 55)
    lobe_height = rng.uniform(140, 200)
    left_reach = rng.uniform(20, 90)
    taper = rng.uniform(0.55, 0.85)
    inferior = -lobe_height + taper * np.maximum(120 - u, 0)
    liver = abdomen & (w < diaphragm - 4 + 0.3 * warp) & (w > inferior + warp)
    liver &= u > -left_reach + 0.4 * np.maximum(spine_v + 60 - v, 0) + 0.5 * warp
    liver &= v > spine_v + 6 + 0.25 * np.maximum(u - 40, 0) * (w < -60)  # lower right lobe behind
    liver &= ~bone & ~aorta

    # Organs around it, each carved out of the liver it would overlap.
    gb_c = (rng.uniform(35, 60), rng.uniform(25, 55), rng.uniform(-110, -70))
    gallbladder = (canvas.radius(gb_c, (14, 14, rng.uniform(25, 40))) < 1) & abdomen
    stomach_c = (rng.uniform(-75, -45), rng.uniform(0, 30), rng.uniform(-70, -35))
    stomach_r = canvas.radius(stomach_c, (rng.uniform(35, 55), rng.uniform(30, 45), rng.uniform(40, 65)))
    stomach = (stomach_r < 1 + 0.08 * canvas.noise(rng, 40)) & abdomen & ~liver
    spleen_c = (rng.uniform(-110, -85), spine_v + rng.uniform(20, 45), rng.uniform(-70, -30))
    spleen_r = canvas.radius(spleen_c, (rng.uniform(22, 34), rng.uniform(35, 55), rng.uniform(40, 60)))
    spleen = (spleen_r < 1 + 0.1 * canvas.noise(rng, 35)) & abdomen & ~stomach
    kidneys = np.zeros(canvas.shape, dtype=bool)
    medulla = np.zeros(canvas.shape, dtype=bool)
    for side, drop in ((1, rng.uniform(-150, -120)), (-1, rng.uniform(-140, -105))):
        kc = (side * rng.uniform(60, 78), spine_v + rng.uniform(8, 22), drop)
        kr = canvas.radius(kc, (rng.uniform(24, 30), rng.uniform(20, 26), rng.uniform(45, 60)))
        kidneys |= (kr < 1) & abdomen
        medulla |= (kr < 0.6) & abdomen
    pancreas_axis = np.sqrt(((v - spine_v - rng.uniform(45, 60)) / 11) ** 2 + ((w + 95) / 13) ** 2)
    pancreas = (pancreas_axis < 1 + 0.2 * canvas.noise(rng, 20)) & (u > -85) & (u < 35) & abdomen
    portal = (np.sqrt(((u - 25 + 0.6 * (w + 80)) / 7) ** 2 + ((v - spine_v - 50) / 7) ** 2) < 1) & (
        (w > -95) & (w < -55)
    )
    for organ in (gallbladder, kidneys, stomach, spleen):
        liver &= ~organ
    liver &= ~ivc if rng.random() < 0.5 else ~(ivc & (w < -60))  # intrahepatic IVC or not

    # Bowel fills the rest of the abdomen below the upper organs; the pelvis below it.
    lower = abdomen & ~liver & ~stomach & ~spleen & ~kidneys & ~pancreas & ~gallbladder & ~bone
    lower &= w < -60
    loops = canvas.noise(rng, rng.uniform(18, 30))
    content = canvas.noise(rng, 10)
    mesentery = loops > rng.uniform(0.3, 0.8)
    bowel = lower & ~mesentery
    hu[bowel] = tone["bowel_wall"]
    lumen = bowel & (np.abs(loops) < 0.35)
    hu[lumen] = np.where(content[lumen] > 0.6, -850.0, rng.uniform(5, 35))
    if rng.random() < 0.25:  # oral contrast in some loops
        hu[lumen & (content > -0.4) & (content < 0.2)] = rng.uniform(180, 450)
    psoas = (
        (
            np.sqrt(
                ((np.abs(u) - 38 - 0.08 * np.maximum(-w - 150, 0)) / 16) ** 2 + ((v - spine_v - 10) / 16) ** 2
            )
            < 1
        )
        & (w < -150)
        & abdomen
    )
    hu[psoas] = tone["muscle"]

    # Pelvis: iliac wings, sacrum, femoral heads, bladder.
    iliac = (np.abs(np.sqrt(((np.abs(u) - 20) / 105) ** 2 + ((v - spine_v - 25) / 60) ** 2) - 1) < 0.06) & (
        (w < -290) & (w > -420) & (v < spine_v + 50) & (np.abs(u) > 35)
    )
    femoral = canvas.radius((95, spine_v + 70, -440), (24, 24, 24)) < 1
    femoral |= canvas.radius((-95, spine_v + 70, -440), (24, 24, 24)) < 1
    bladder = (canvas.radius((0, spine_v + 110, -425), (rng.uniform(30, 55), 35, 35)) < 1) & abdomen
    pelvic_bone = (iliac | femoral) & body
    hu[pelvic_bone] = cortex_hu * rng.uniform(0.6, 0.9)
    hu[bladder & ~pelvic_bone] = rng.uniform(3, 15)
    bone |= pelvic_bone

    bone_hu = hu.copy()
    hu[kidneys] = tone["kidney"]
    hu[medulla] = tone["medulla"]
    hu[spleen] = tone["spleen"] + 5 * canvas.noise(rng, 15)[spleen]
    hu[pancreas & ~liver] = tone["pancreas"]
    hu[stomach] = tone["stomach_wall"]
    gastric = stomach & (stomach_r < 0.85)
    air_level = rng.uniform(0.0, 0.7)
    hu[gastric] = np.where(v[gastric] > stomach_c[1] + air_level * 30, -900.0, rng.uniform(5, 30))
    hu[gallbladder] = rng.uniform(0, 22)
    # Parenchyma is not uniform: perfusion and fat vary over centimetres (real livers spread
    # 10-20 HU before noise), and a fatty liver reads below the spleen. A lesion has to be
    # told from that, not from a flat organ.
    steatosis = rng.uniform(15, 40) if rng.random() < 0.15 else 0.0
    patchiness = rng.uniform(2, 8) * canvas.noise(rng, rng.uniform(30, 60))
    hu[liver] = tone["liver"] - steatosis + (4 * canvas.noise(rng, 8) + patchiness)[liver]
    vessel_fields = canvas.noise(rng, 40), canvas.noise(rng, 40)
    vessels = liver & (np.abs(vessel_fields[0]) < 0.1) & (np.abs(vessel_fields[1]) < 0.1)
    hu[vessels] = tone["portal"] + rng.uniform(-10, 10)
    hu[blood] = tone["blood"]
    hu[portal] = tone["portal"]
    # Bone goes last: organs painted after it must not cover a rib or a vertebra.
    hu[bone] = bone_hu[bone]
    return {"hu": hu, "liver": liver & ~bone, "body": body, "bone": bone}


def _paint_head(canvas: _Canvas, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A head and neck: skull, brain, ventricles, neck muscles and spine; no liver."""
    u, v, w = canvas.u, canvas.v, canvas.w
    hu = np.full(canvas.shape, -1000.0, dtype=np.float32)
    semi = (rng.uniform(66, 78), rng.uniform(85, 100), rng.uniform(75, 90))
    head_r = canvas.radius((0, 0, 0), semi)
    scalp = head_r < 1
    skull = head_r < 0.97
    brain = head_r < 0.9
    hu[scalp] = rng.uniform(20, 45)
    hu[skull] = rng.uniform(900, 1500)
    hu[brain] = rng.uniform(28, 40) + 3 * canvas.noise(rng, 10)[brain]
    ventricles = (canvas.radius((0, 5, 10), (12, 30, 18)) < 1) & brain
    hu[ventricles] = rng.uniform(2, 12)
    sinus = canvas.radius((0, 70, -45), (22, 18, 20)) < 1
    hu[sinus & skull] = -900.0
    neck = (np.sqrt((u / 55) ** 2 + ((v + 10) / 60) ** 2) < 1) & (w < -50)
    hu[neck & ~scalp] = rng.uniform(45, 60)
    cervical = (np.sqrt((u / 12) ** 2 + ((v + 20) / 12) ** 2) < 1) & (w < -40)
    hu[cervical] = rng.uniform(300, 700)
    return {"hu": hu, "liver": np.zeros(canvas.shape, dtype=bool), "body": scalp | neck, "bone": skull}


def _z_window(kind: str, rng: np.random.Generator) -> tuple[float, float]:
    """Bottom and top of the scanned slab (mm from the right dome; superior is +)."""
    windows: dict[str, Callable[[], tuple[float, float]]] = {
        "abdomen": lambda: (rng.uniform(-330, -200), rng.uniform(15, 90)),
        "liver_cut_top": lambda: (rng.uniform(-330, -220), rng.uniform(-90, -30)),
        "liver_cut_bottom": lambda: (rng.uniform(-110, -50), rng.uniform(40, 140)),
        "chest": lambda: (rng.uniform(-20, 60), rng.uniform(220, 300)),
        "pelvis": lambda: (rng.uniform(-480, -440), rng.uniform(-260, -190)),
        "chest_abdomen_pelvis": lambda: (rng.uniform(-480, -420), rng.uniform(180, 280)),
        "head": lambda: (rng.uniform(-160, -90), rng.uniform(80, 110)),
    }
    return windows[kind]()


def _acquisition(
    rng: np.random.Generator, kind: str, extent_z: float
) -> tuple[tuple[float, float, float], float]:
    """Voxel size (x, y, z) and the in-plane field of view (mm) of the case's scan."""
    pixel = float(np.exp(rng.uniform(np.log(0.6), np.log(3.5))))
    thickness = float(
        rng.choice([0.6, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0], p=[0.05, 0.1, 0.1, 0.1, 0.1, 0.15, 0.2, 0.2])
    )
    fov = rng.uniform(230, 300) if kind == "head" else rng.uniform(300, 500)
    # Keep the stored grid bounded: a fine pixel with thin slices over a long slab is thinned.
    while (fov / pixel) ** 2 * (extent_z / thickness) > MAX_VOXELS:
        if thickness < 5.0:
            thickness = min(5.0, thickness * 1.5)
        else:
            pixel *= 1.25
    return (pixel, pixel, thickness), fov


def _lesions(
    canvas: _Canvas,
    rng: np.random.Generator,
    hu: np.ndarray,
    liver: np.ndarray,
    liver_hu: float,
    phase: str,
) -> tuple[np.ndarray, str, dict[str, float]]:
    """Paint none or 1-5 lesions into the liver; returns the lesion mask, its grade, params."""
    tumor = np.zeros(canvas.shape, dtype=bool)
    if rng.random() < 1 / 4 or liver.sum() < 50:
        return tumor, "", {"lesions": 0}
    grade = int(rng.choice(3, p=GRADE_PROBABILITIES))
    params = _lesion_params(rng, grade)
    count = 1 + int(rng.choice(5, p=[0.55, 0.2, 0.12, 0.08, 0.05]))
    sites = np.argwhere(liver[::2, ::2, ::2]) * 2
    radii = [params["radius_mm"]] + [float(rng.uniform(4, 20)) for _ in range(count - 1)]
    for index, radius in enumerate(radii):
        ijk = sites[rng.integers(len(sites))]
        center = (float(canvas.u[ijk[0], 0, 0]), float(canvas.v[0, ijk[1], 0]), float(canvas.w[0, 0, ijk[2]]))
        irregular = params["irregularity"] if index == 0 else rng.uniform(0.0, 0.15)
        r = canvas.radius(center, (radius, radius * rng.uniform(0.8, 1.2), radius * rng.uniform(0.8, 1.2)))
        near = r < 1.6
        shape = np.zeros(canvas.shape, dtype=bool)
        distortion = canvas.noise(rng, max(radius * 0.8, 8.0))
        shape[near] = r[near] < 1 + irregular * distortion[near]
        lesion = shape & liver
        if not lesion.any():
            continue
        brighter, (low, high) = _LESION_DELTA[phase]
        delta = rng.uniform(low, high) * (1.0 if rng.random() < brighter else -1.0)
        heterogeneity = params["heterogeneity_hu"] if index == 0 else rng.uniform(2, 10)
        grain = canvas.noise(rng, 6.0)
        hu[lesion] = liver_hu + delta + heterogeneity * grain[lesion]
        if index == 0 and params["necrosis_fraction"] > 0:
            hu[lesion & (r < params["necrosis_fraction"])] = rng.uniform(10, 30)
        if rng.random() < 0.2 and phase in ("arterial", "portal"):  # enhancing rim
            hu[lesion & (r > 0.8)] = liver_hu + rng.uniform(10, 40)
        tumor |= lesion
    return tumor, GRADES[grade], {"lesions": float(count), "radius_mm": params["radius_mm"]}


def generate_torso_case(seed: int, case_index: int, field_of_view: str | None = None) -> TorsoCase:
    """Draw one case (see the module notes); the same (seed, index) gives the same case.

    `field_of_view` (one of `FIELDS`) replaces the drawn one; the rest of the draw is kept.
    """
    rng = np.random.default_rng(torso_seed(seed, case_index))
    names = [name for name, _ in FIELDS]
    kind = str(rng.choice(names, p=[p for _, p in FIELDS]))
    if field_of_view is not None:
        if field_of_view not in names:
            raise ValueError(f"field_of_view must be one of {names}, got {field_of_view!r}")
        kind = field_of_view
    phase = str(rng.choice(PHASES, p=PHASE_PROBABILITIES))
    bottom, top = _z_window(kind, rng)
    spacing, fov = _acquisition(rng, kind, top - bottom)
    origin = np.array([rng.uniform(-25, 25), rng.uniform(-60, 40), rng.uniform(-900, -600)])
    shape = (
        round(fov / spacing[0]),
        round(fov * rng.uniform(0.85, 1.0) / spacing[1]),
        max(round((top - bottom) / spacing[2]), 1),
    )
    center = origin + np.array([rng.uniform(-15, 15), rng.uniform(-10, 25), (bottom + top) / 2])
    grid = centered_grid(shape, spacing, tuple(center), flip_xy=bool(rng.random() < 0.5))  # type: ignore[arg-type]
    canvas = _Canvas(grid, origin)
    painted = _paint_head(canvas, rng) if kind == "head" else _paint_torso(canvas, rng, phase)
    hu, liver = painted["hu"], painted["liver"]
    liver_hu = float(np.median(hu[liver])) if liver.any() else 0.0
    tumor, grade, lesion_params = _lesions(canvas, rng, hu, liver, liver_hu, phase)
    if rng.random() < 0.5:  # the patient table under the body
        table = (
            np.abs(
                canvas.v - (canvas.v[0, :, 0][np.flatnonzero(painted["body"].any(axis=(0, 2)))].min() - 12)
            )
            < 3
        )
        hu[table & ~painted["body"]] = rng.uniform(150, 500)
    ct = _acquire(hu, spacing, rng)
    if rng.random() < 0.4:  # padding outside the scan circle
        radius = np.sqrt(canvas.u**2 + (canvas.v - float(canvas.v[0, :, 0].mean())) ** 2)
        ct[radius > fov * 0.5] = float(rng.choice([-1024.0, -2048.0, -3024.0]))
    params: dict[str, float | str] = {"field": kind, "phase": phase, **lesion_params}
    params.update(spacing_x=spacing[0], spacing_z=spacing[2], fov_mm=fov)
    return TorsoCase(
        case_index, ct, grid.affine, (liver | tumor).astype(np.uint8), tumor.astype(np.uint8), grade, params
    )


def _acquire(hu: np.ndarray, spacing: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """Slice profile, reconstruction kernel and noise on the stored grid; whole HU."""
    kernel_mm = rng.uniform(0.6, 1.4)  # in-plane resolution of the reconstruction
    sigma = [kernel_mm / spacing[0] / 2.355, kernel_mm / spacing[1] / 2.355, spacing[2] / 2.355 * 0.8]
    blurred = ndimage.gaussian_filter(hu, sigma, mode="nearest")
    noise_hu = float(np.exp(rng.uniform(np.log(5.0), np.log(45.0))))
    white = rng.standard_normal(hu.shape).astype(np.float32)
    grain = ndimage.gaussian_filter(white, (rng.uniform(0.5, 1.2), rng.uniform(0.5, 1.2), 0.4))
    grain /= max(float(grain.std()), 1e-6)
    air = hu < -950
    ct = blurred + noise_hu * grain * np.where(air, 0.5, 1.0)
    return np.rint(ct).astype(np.int16)


def _write_case(job: tuple) -> dict[str, str]:
    seed, index, out_dir, field_of_view = job
    case = generate_torso_case(seed, index, field_of_view)
    cid = f"torso{index:04d}"
    folder = Path(out_dir) / cid
    folder.mkdir(parents=True, exist_ok=True)
    write_nifti(folder / "ct.nii.gz", case.ct, case.affine)
    write_nifti(folder / "liver.nii.gz", case.liver, case.affine)
    write_nifti(folder / "tumor.nii.gz", case.tumor, case.affine)
    row = dict.fromkeys(MANIFEST_COLUMNS, "")
    row.update(
        case_id=cid,
        ct=f"{cid}/ct.nii.gz",
        liver_mask=f"{cid}/liver.nii.gz",
        tumor_mask=f"{cid}/tumor.nii.gz",
        grade=case.grade,
        dose="1",
    )
    row.update({f"_{key}": str(value) for key, value in case.params.items()})
    return row


def write_torso_cohort(
    out_dir: str | Path,
    n_cases: int,
    seed: int,
    *,
    fields: Sequence[str] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Generate `n_cases` broad cases under `out_dir` and write ``manifest.csv``.

    `fields` (names of `FIELDS`) gives case i the field of view ``fields[i % len(fields)]``
    instead of a drawn one: e.g. a cohort of scans without a liver (chest, pelvis, head).

    The manifest has the HCC columns (`training.data.readers`) plus what each case drew
    (``field``, ``phase``, ``lesions``, spacing), for reports that break results down by them.
    """
    if n_cases < 1:
        raise ValueError(f"n_cases must be at least 1, got n_cases={n_cases}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(int(seed), i, str(out), fields[i % len(fields)] if fields else None) for i in range(n_cases)]
    rows = run_jobs(_write_case, jobs, workers, progress, "torso")
    splits = assign_splits([row["_field"] for row in rows], seed)
    extra = sorted({key for row in rows for key in row if key.startswith("_")})
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*MANIFEST_COLUMNS, *(key[1:] for key in extra)])
        writer.writeheader()
        for row, split in zip(rows, splits, strict=True):
            writer.writerow(
                {
                    **{k: v for k, v in row.items() if not k.startswith("_")},
                    "split": split,
                    **{key[1:]: row.get(key, "") for key in extra},
                }
            )
    return manifest
