"""A broad synthetic CT cohort for the liver and lesion segmenter: torsos and heads of every fit.

The grading benchmark (`training.data.synth_hcc`) draws one kind of scan: a 192 mm slab of
portal-venous abdomen on 3 mm voxels. A segmenter trained on it alone would meet its first
real CT unprepared: another contrast phase, lungs and heart above the liver, a pelvis below,
0.7 mm pixels, 5 mm slices, a liver cut by the field of view, or no liver at all. This
generator is broad on purpose (docs/segmenter.md says why each axis varies).

Following SynthSeg (Billot et al. 2023), a case is drawn in two steps: first a **label map**
of the anatomy, one integer of `LABELS` per tissue, then the **image drawn from the label
map**. Shapes and intensities are thus varied apart, and the masks are exact by construction.

1. Label map (`paint_labels`, then the lesions, then `smooth_deformation`):

   * Anatomy along the whole trunk, in the patient's own frame: lungs and heart above the
     diaphragm domes, a liver shaped as a wedge under the right dome (a large right lobe
     tapering to a thin left lobe across the midline, its surfaces warped by smooth noise),
     gallbladder, stomach, spleen, pancreas, kidneys (cortex and medulla), aorta, IVC and
     portal vein, vertebrae with discs, ribs, bowel (loops of a thin wall around fluid, gas
     or oral contrast, fat between them), the colon's frame around them (faeces mottled
     with gas), gluteal and iliacus muscles, pelvic bones, the uterus or the prostate and
     the bladder, a patient table; or a head and neck (no liver at all).
   * Field of view: the abdomen, the liver cut at its top or bottom, the chest only, the
     pelvis only, chest to pelvis, a narrow in-plane field that cuts the body's sides.
   * Lesions: none (a quarter of the torsos), or one to five anywhere in the liver, each its
     own label, the dominant one drawn by the grading benchmark's rules
     (`synth_hcc._lesion_params`), some with a necrotic core or an enhancing rim.
   * The whole map is then warped by a smooth random displacement of a few mm (nearest
     neighbour: labels move, none is invented).

2. Image (`draw_image`, then `_acquire`):

   * Contrast timing: unenhanced, arterial, portal-venous or delayed; each label's mean HU
     drawn from its tissue's range for that phase (`_HU`; fat, air, lung, bone and fluids
     from fixed ranges), every soft tissue shifted by one case-wide offset. Lesions are
     hypo- or hyper-attenuating relative to the liver as the phase makes them
     (`_LESION_DELTA`).
   * Texture inside each label (smooth noise: lung parenchyma, liver patchiness and
     steatosis, lesion heterogeneity), and partial volume at the boundaries (a blur of
     under a voxel).
   * Acquisition: pixels 0.6-3.5 mm, slices 0.6-5 mm (thicker ones blur along z), noise
     5-45 HU per voxel (dose, slice thickness and kernel together), padding outside the
     scan circle.

Cases are written as the HCC manifest layout (`ct`, `liver_mask` including the lesions,
`tumor_mask`; `grade` of the dominant lesion, empty without one), so the segmenter reads
them through the same reader as real cohorts; each case folder also holds its label map
(``labels.nii.gz``). Case i is drawn from ``SeedSequence(seed, spawn_key=(2, i))``: the same
whatever the number of cases or workers.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from training.data.phantom import GridSpec, centered_grid, smooth_noise, write_nifti
from training.data.splits import assign_splits
from training.data.synth_hcc import (
    GRADE_PROBABILITIES,
    GRADES,
    MANIFEST_COLUMNS,
    _lesion_params,
    run_jobs,
)

_COHORT_KEY = 2  # spawn-key prefix: never a case of the grading cohorts (0 and 1)
PHASES = ("unenhanced", "arterial", "portal", "delayed")
PHASE_PROBABILITIES = (0.2, 0.15, 0.5, 0.15)
# Fields of view and their shares: (name, probability).
FIELDS = (
    ("abdomen", 0.40),
    ("liver_cut_top", 0.1),
    ("liver_cut_bottom", 0.08),
    ("chest", 0.09),
    ("pelvis", 0.10),
    ("chest_abdomen_pelvis", 0.13),
    ("head", 0.10),
)
MAX_VOXELS = 24_000_000  # a case's stored grid; finer pixels get a smaller field or thicker slices

# One integer per tissue of the label map: every tissue the image draws apart gets its own.
LABELS: dict[str, int] = {
    "background": 0,  # air around the body
    "fat": 1,  # subcutaneous
    "skin": 2,
    "muscle": 3,  # body wall, diaphragm, paraspinal, psoas, neck
    "visceral_fat": 4,
    "lung": 5,
    "lung_vessel": 6,
    "mediastinum": 7,
    "myocardium": 8,
    "blood": 9,  # heart chambers, aorta, IVC
    "portal_vein": 10,
    "liver": 11,
    "liver_vessel": 12,  # veins inside the liver (and an intrahepatic IVC): part of the liver mask
    "gallbladder": 13,
    "stomach_wall": 14,
    "stomach_contents": 15,
    "bowel_wall": 16,
    "bowel_fluid": 17,
    "bowel_contrast": 18,  # oral contrast in some loops
    "gas": 19,  # stomach, bowel, sinuses
    "spleen": 20,
    "pancreas": 21,
    "kidney_cortex": 22,
    "kidney_medulla": 23,
    "bone_cortex": 24,  # vertebral shells and arches, ribs, pelvic bones
    "bone_marrow": 25,
    "disc": 26,
    "csf": 27,  # spinal canal, ventricles
    "bladder": 28,
    "brain": 29,
    "skull": 30,
    "table": 31,
    "lesion_1": 32,  # the dominant lesion
    "lesion_2": 33,
    "lesion_3": 34,
    "lesion_4": 35,
    "lesion_5": 36,
    "necrosis": 37,  # the dominant lesion's necrotic core
    "lesion_rim": 38,  # an enhancing rim, of any lesion
    "faeces": 39,  # the colon's content: stool mottled with gas
    "pelvic_organ": 40,  # uterus or prostate: enhancing soft tissue the size of a fist
}
LESION_LABELS = tuple(LABELS[f"lesion_{k}"] for k in range(1, 6))
TUMOR_LABELS = (*LESION_LABELS, LABELS["necrosis"], LABELS["lesion_rim"])
LIVER_LABELS = (LABELS["liver"], LABELS["liver_vessel"], *TUMOR_LABELS)

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
SHIFT_HU = 15.0  # bound of the case-wide soft-tissue offset (scanner calibration, patient size)
_STEATOSIS_HU = (15.0, 40.0)  # a fatty liver (15 % of cases) reads this much lower
# Lesion attenuation relative to liver, per phase: the share of hyper-attenuating lesions
# (arterial-phase HCC), and the (low, high) difference in HU of either kind.
_LESION_DELTA = {
    "unenhanced": (0.0, (10.0, 30.0)),
    "arterial": (0.55, (12.0, 55.0)),
    "portal": (0.0, (12.0, 50.0)),
    "delayed": (0.0, (12.0, 40.0)),
}


@dataclass(frozen=True)
class _Tone:
    """Where a label's mean HU comes from: its tissue's draw in `_HU` (None: no enhancement,
    no shift) plus a uniform draw in (low, high)."""

    tissue: str | None
    low: float
    high: float


# Mean HU of every label but the lesions (drawn relative to the liver, `_LESION_DELTA`).
_LABEL_HU: dict[str, _Tone] = {
    "background": _Tone(None, -1000, -1000),
    "fat": _Tone(None, -115, -85),
    "skin": _Tone("muscle", -10, -10),
    "muscle": _Tone("muscle", 0, 0),
    "visceral_fat": _Tone(None, -105, -80),
    "lung": _Tone(None, -880, -820),
    "lung_vessel": _Tone(None, -200, 40),  # vessels and partial volume of the smaller ones
    "mediastinum": _Tone(None, -90, 20),
    "myocardium": _Tone("myocardium", 0, 0),
    "blood": _Tone("blood", 0, 0),
    "portal_vein": _Tone("portal", 0, 0),
    "liver": _Tone("liver", 0, 0),  # minus the steatosis of a fatty liver
    "liver_vessel": _Tone("portal", -10, 10),
    "gallbladder": _Tone(None, 0, 22),
    "stomach_wall": _Tone("stomach_wall", 0, 0),
    "stomach_contents": _Tone(None, 5, 30),
    "bowel_wall": _Tone("bowel_wall", 0, 0),
    "bowel_fluid": _Tone(None, 5, 35),
    "bowel_contrast": _Tone(None, 180, 450),
    "gas": _Tone(None, -920, -830),
    "spleen": _Tone("spleen", 0, 0),
    "pancreas": _Tone("pancreas", 0, 0),
    "kidney_cortex": _Tone("kidney", 0, 0),
    "kidney_medulla": _Tone("medulla", 0, 0),
    "bone_cortex": _Tone(None, 600, 1100),
    "bone_marrow": _Tone(None, 140, 280),
    "disc": _Tone(None, 75, 95),
    "csf": _Tone(None, 2, 20),
    "bladder": _Tone(None, 3, 15),
    "brain": _Tone(None, 28, 40),
    "skull": _Tone(None, 900, 1500),
    "table": _Tone(None, 150, 500),
    "faeces": _Tone(None, -70, 30),
    # The myometrium and the prostate enhance like the bowel wall, a little more: in
    # enhanced phases they read as bright as a liver.
    "pelvic_organ": _Tone("bowel_wall", 5, 20),
}
# Texture inside a label: HU std of smooth noise about 8 mm across. Lung parenchyma, a mottled
# spleen, liver grain and trabecular bone vary most; every other tissue a little, so no organ
# is flat. Air outside the body and the table are left flat.
_TEXTURE_HU = {"background": 0.0, "table": 0.0, "lung": 25.0, "spleen": 5.0, "liver": 4.0, "brain": 3.0}
_TEXTURE_HU |= {"fat": 4.0, "bone_marrow": 25.0, "bone_cortex": 60.0, "skull": 80.0, "gas": 15.0}
_TEXTURE_HU |= {"faeces": 35.0}
_DEFAULT_TEXTURE_HU = 2.0


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
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), dtype=np.uint8))
    # ^ the uint8 label map (values of `LABELS`) the ct was drawn from, on the ct's grid


def torso_seed(seed: int, case_index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(int(seed), spawn_key=(_COHORT_KEY, int(case_index)))


def _substream(case_seed: np.random.SeedSequence, key: int) -> np.random.Generator:
    """An independent generator of the case, keyed below its own seed."""
    return np.random.default_rng(
        np.random.SeedSequence(case_seed.entropy, spawn_key=(*case_seed.spawn_key, key))
    )


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


@dataclass
class _Trunk:
    """What the trunk's painters share: the label map being painted and the body's frame."""

    canvas: _Canvas
    labels: np.ndarray
    a: np.ndarray  # left-right semi-axis of the body outline per slice (mm)
    b: np.ndarray  # antero-posterior semi-axis
    fat_mm: float
    body: np.ndarray
    chest: np.ndarray  # the cavity above the diaphragm
    abdomen: np.ndarray  # the cavity below it
    diaphragm: np.ndarray  # height of the diaphragm (mm) over the axial plane
    spine_v: np.ndarray  # antero-posterior centre of the vertebral bodies per slice (mm)
    bone: np.ndarray | None = None

    def paint(self, mask: np.ndarray, name: str) -> None:
        self.labels[mask] = LABELS[name]


def _body_semi_axes(canvas: _Canvas, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Left-right and antero-posterior semi-axes of the body outline at each slice (mm)."""
    size = rng.uniform(0.82, 1.2)
    w = canvas.w[0, 0, :]
    # Chest, waist, pelvis: a smooth profile along the trunk, then the case's own wobble.
    a = 158 + 14 * np.tanh((w - 60) / 80) - 8 * np.exp(-(((w + 160) / 90) ** 2)) + 10 * (w < -300)
    b = 115 + 8 * np.tanh((w - 80) / 80) + rng.uniform(-8, 14) * np.exp(-(((w + 150) / 120) ** 2))
    return (size * a * rng.uniform(0.92, 1.08)).astype(np.float32), (size * b).astype(np.float32)


def paint_labels(grid: GridSpec, origin: np.ndarray, rng: np.random.Generator, kind: str) -> np.ndarray:
    """The anatomy's label map (values of `LABELS`, uint8) on `grid`, for a field of view
    `kind` of `FIELDS`; `origin` is the right diaphragm dome (RAS+ mm), see `_Canvas`.
    Lesions are added by the caller; a patient table is under half the bodies."""
    canvas = _Canvas(grid, origin)
    labels = np.zeros(canvas.shape, dtype=np.uint8)
    if kind == "head":
        _paint_head(canvas, rng, labels)
    else:
        _paint_torso(canvas, rng, labels)
    if rng.random() < 0.5:
        _paint_table(canvas, labels)
    return labels


def _paint_table(canvas: _Canvas, labels: np.ndarray) -> None:
    """A flat table 12 mm behind the body's back, outside the body."""
    body = labels != LABELS["background"]
    rows = np.flatnonzero(body.any(axis=(0, 2)))
    if rows.size:
        back = float(canvas.v[0, rows, 0].min()) - 12
        labels[(np.abs(canvas.v - back) < 3) & ~body] = LABELS["table"]


def _paint_torso(canvas: _Canvas, rng: np.random.Generator, labels: np.ndarray) -> None:
    """A trunk, painted back to front: each tissue overwrites what it lies in."""
    trunk = _paint_wall(canvas, rng, labels)
    _paint_spine_and_ribs(trunk, rng)
    _paint_chest(trunk, rng)
    _paint_abdomen(trunk, rng)


def _paint_wall(canvas: _Canvas, rng: np.random.Generator, labels: np.ndarray) -> _Trunk:
    """Skin, subcutaneous fat, the muscular wall, the cavity's fat and the diaphragm."""
    u, v, w = canvas.u, canvas.v, canvas.w
    a, b = _body_semi_axes(canvas, rng)
    fat_mm = rng.uniform(6, 38)
    wall_mm = rng.uniform(7, 13)
    body_r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    body = body_r < 1 + 0.015 * canvas.noise(rng, 60)
    labels[body] = LABELS["fat"]
    labels[body & (body_r > 0.985)] = LABELS["skin"]
    labels[body & (np.sqrt((u / (a - fat_mm)) ** 2 + (v / (b - fat_mm)) ** 2) < 1)] = LABELS["muscle"]
    inner_a, inner_b = a - fat_mm - wall_mm, b - fat_mm - wall_mm
    cavity = np.sqrt((u / inner_a) ** 2 + (v / inner_b) ** 2) < 1
    labels[cavity] = LABELS["visceral_fat"]  # filled by organs below
    # Diaphragm: two domes; the right one is the origin, the left one lower.
    left_drop = rng.uniform(8, 30)
    curvature = rng.uniform(130, 190)
    dome_r = -((u - 70) ** 2 + (v + 5) ** 2) / (2 * curvature)
    dome_l = -left_drop - ((u + 75) ** 2 + (v + 5) ** 2) / (2 * curvature)
    diaphragm = np.maximum(dome_r, dome_l)
    chest = cavity & (w > diaphragm)
    labels[cavity & (np.abs(w - diaphragm) < 3.5)] = LABELS["muscle"]  # the diaphragm itself
    spine_v = -inner_b + rng.uniform(26, 34)  # per slice: the spine follows the back
    return _Trunk(canvas, labels, a, b, fat_mm, body, chest, cavity & ~chest, diaphragm, spine_v)


def _paint_spine_and_ribs(t: _Trunk, rng: np.random.Generator) -> None:
    """Vertebrae with discs, canal and arches, paraspinal muscles, ribs; sets ``t.bone``."""
    u, v, w = t.canvas.u, t.canvas.v, t.canvas.w
    spine_v = t.spine_v
    vertebra_r = np.sqrt((u / 21) ** 2 + ((v - spine_v) / 17) ** 2)
    vertebra = vertebra_r < 1
    disc = np.cos(2 * np.pi * (w - rng.uniform(0, 32)) / 32.0) > 0.72
    canal = np.sqrt((u / 9) ** 2 + ((v - spine_v + 27) / 8) ** 2) < 1
    posterior = (np.sqrt((u / 16) ** 2 + ((v - spine_v + 30) / 13) ** 2) < 1) & ~canal
    paraspinal = (np.sqrt(((np.abs(u) - 32) / 22) ** 2 + ((v - spine_v + 18) / 20) ** 2) < 1) & t.body
    t.paint(paraspinal & ~canal & ~posterior & ~vertebra, "muscle")
    t.paint(vertebra, "bone_marrow")
    t.paint(vertebra & disc, "disc")
    t.paint(vertebra & (vertebra_r > 0.82) & ~disc, "bone_cortex")  # the vertebral body's shell
    t.paint(posterior, "bone_cortex")
    t.paint(canal, "csf")
    # Ribs: thin bony arcs just inside the wall from the chest down to the upper abdomen.
    a, b, fat_mm = t.a, t.b, t.fat_mm
    ring = np.abs(np.sqrt((u / (a - fat_mm - 4)) ** 2 + (v / (b - fat_mm - 4)) ** 2) - 1) < 0.04
    angle = np.arctan2(v / b, u / a)
    ribs = ring & (np.cos(2 * np.pi * (w + 18 * np.sin(angle)) / 26.0) > 0.55) & (w > -170) & (w < 260)
    ribs &= np.sin(angle) < 0.7  # costal cartilage, not bone, in front
    t.paint(ribs, "bone_cortex")
    t.bone = vertebra | posterior | ribs


def _paint_chest(t: _Trunk, rng: np.random.Generator) -> None:
    """Lungs with their vessels, mediastinum and heart above the domes."""
    u, v, w = t.canvas.u, t.canvas.v, t.canvas.w
    assert t.bone is not None
    mediastinum = np.sqrt(((u + 8) / rng.uniform(32, 42)) ** 2 + ((v - t.spine_v - 70) / 78) ** 2) < 1
    heart_c = (rng.uniform(-35, -15), rng.uniform(15, 35), rng.uniform(55, 75))
    heart_s = (rng.uniform(55, 70), rng.uniform(45, 58), rng.uniform(50, 62))
    heart_r = t.canvas.radius(heart_c, heart_s)
    heart = (heart_r < 1) & t.chest
    lungs = t.chest & ~mediastinum & ~heart & ~t.bone & (w > t.diaphragm + 3)
    t.paint(lungs, "lung")
    t.paint(lungs & (np.abs(t.canvas.noise(rng, 25)) < 0.05), "lung_vessel")
    t.paint(t.chest & mediastinum & ~heart & ~t.bone, "mediastinum")
    t.paint(heart, "myocardium")
    t.paint(heart & (heart_r < 0.78), "blood")  # the chambers


def _paint_abdomen(t: _Trunk, rng: np.random.Generator) -> None:
    """Liver and the organs around it, bowel and pelvis; bone is painted back last."""
    assert t.bone is not None
    u, v, w = t.canvas.u, t.canvas.v, t.canvas.w
    spine_v = t.spine_v
    aorta = (np.sqrt(((u + 14) / 12) ** 2 + ((v - spine_v - 28) / 12) ** 2) < 1) & (w < 120) & (w > -300)
    ivc = (np.sqrt(((u - 22) / 12) ** 2 + ((v - spine_v - 36) / 10) ** 2) < 1) & (w < 10) & (w > -320)
    liver = _liver_region(t, rng) & ~aorta
    organs = _upper_organs(t, rng, liver)
    for name in ("gallbladder", "kidney", "stomach", "spleen"):  # each carved out of the liver
        liver &= ~organs[name]
    liver &= ~ivc if rng.random() < 0.5 else ~(ivc & (w < -60))  # intrahepatic IVC or not
    occupied = liver | t.bone
    for organ in organs.values():
        occupied |= organ
    pelvic_bone = _paint_bowel_and_pelvis(t, rng, occupied)
    saved = t.labels.copy()  # bone goes back last: no organ may cover a rib or a vertebra
    bone = t.bone | pelvic_bone
    _paint_upper_organs(t, rng, organs, liver)
    t.paint(liver, "liver")
    vessel_fields = t.canvas.noise(rng, 40), t.canvas.noise(rng, 40)
    t.paint(liver & (np.abs(vessel_fields[0]) < 0.1) & (np.abs(vessel_fields[1]) < 0.1), "liver_vessel")
    portal = (np.sqrt(((u - 25 + 0.6 * (w + 80)) / 7) ** 2 + ((v - spine_v - 50) / 7) ** 2) < 1) & (
        (w > -95) & (w < -55)
    )
    # A vessel inside the liver is labelled as the liver's own: the liver mask keeps it.
    for vessel, name in ((aorta | ivc, "blood"), (portal, "portal_vein")):
        t.paint(vessel & ~liver, name)
        t.paint(vessel & liver, "liver_vessel")
    t.labels[bone] = saved[bone]


def _liver_region(t: _Trunk, rng: np.random.Generator) -> np.ndarray:
    """A wedge under the right dome (see the module notes), its surfaces warped."""
    assert t.bone is not None
    u, v, w = t.canvas.u, t.canvas.v, t.canvas.w
    warp = 12 * t.canvas.noise(rng, 55)
    lobe_height = rng.uniform(140, 200)
    left_reach = rng.uniform(20, 90)
    taper = rng.uniform(0.55, 0.85)
    inferior = -lobe_height + taper * np.maximum(120 - u, 0)
    liver = t.abdomen & (w < t.diaphragm - 4 + 0.3 * warp) & (w > inferior + warp)
    liver &= u > -left_reach + 0.4 * np.maximum(t.spine_v + 60 - v, 0) + 0.5 * warp
    # The back of the right lobe (its bare area) lies against the posterior wall beside the
    # spine, behind the vertebral body's front: a convex surface, not a plane through the
    # spine. Lower down the right kidney takes that place (carved out by the caller).
    bare_area = rng.uniform(20, 45) * np.clip((u - 30) / 30, 0, 1)
    back = t.spine_v + 6 - bare_area + 0.25 * np.maximum(u - 40, 0) * (w < -60) + 0.3 * warp
    liver &= v > back
    return liver & ~t.bone & (t.labels != LABELS["muscle"])  # nor the paraspinal muscles


def _upper_organs(t: _Trunk, rng: np.random.Generator, liver: np.ndarray) -> dict[str, np.ndarray]:
    """Masks of the organs around the liver (stomach content and kidney medulla included)."""
    canvas, abdomen, spine_v = t.canvas, t.abdomen, t.spine_v
    u, v, w = canvas.u, canvas.v, canvas.w
    gb_c = (rng.uniform(35, 60), rng.uniform(25, 55), rng.uniform(-110, -70))
    gallbladder = (canvas.radius(gb_c, (14, 14, rng.uniform(25, 40))) < 1) & abdomen
    stomach_c = (rng.uniform(-75, -45), rng.uniform(0, 30), rng.uniform(-70, -35))
    stomach_r = canvas.radius(stomach_c, (rng.uniform(35, 55), rng.uniform(30, 45), rng.uniform(40, 65)))
    stomach = (stomach_r < 1 + 0.08 * canvas.noise(rng, 40)) & abdomen & ~liver
    gastric = stomach & (stomach_r < 0.85)
    gastric_gas = gastric & (v > stomach_c[1] + rng.uniform(0.0, 0.7) * 30)  # gas rises to the front
    spleen_c = (rng.uniform(-110, -85), spine_v + rng.uniform(20, 45), rng.uniform(-70, -30))
    spleen_r = canvas.radius(spleen_c, (rng.uniform(22, 34), rng.uniform(35, 55), rng.uniform(40, 60)))
    spleen = (spleen_r < 1 + 0.1 * canvas.noise(rng, 35)) & abdomen & ~stomach
    kidney = np.zeros(canvas.shape, dtype=bool)
    medulla = np.zeros(canvas.shape, dtype=bool)
    for side, drop in ((1, rng.uniform(-150, -120)), (-1, rng.uniform(-140, -105))):
        kc = (side * rng.uniform(60, 78), spine_v + rng.uniform(8, 22), drop)
        kr = canvas.radius(kc, (rng.uniform(24, 30), rng.uniform(20, 26), rng.uniform(45, 60)))
        kidney |= (kr < 1) & abdomen
        medulla |= (kr < 0.6) & abdomen
    pancreas_axis = np.sqrt(((v - spine_v - rng.uniform(45, 60)) / 11) ** 2 + ((w + 95) / 13) ** 2)
    pancreas = (pancreas_axis < 1 + 0.2 * canvas.noise(rng, 20)) & (u > -85) & (u < 35) & abdomen
    return {
        "gallbladder": gallbladder,
        "stomach": stomach,
        "gastric": gastric,
        "gastric_gas": gastric_gas,
        "spleen": spleen,
        "kidney": kidney,
        "medulla": medulla,
        "pancreas": pancreas,
    }


def _paint_upper_organs(
    t: _Trunk, rng: np.random.Generator, organs: dict[str, np.ndarray], liver: np.ndarray
) -> None:
    """Organs around the liver, in the order they overlap (the later one on top)."""
    t.paint(organs["kidney"], "kidney_cortex")
    t.paint(organs["medulla"], "kidney_medulla")
    t.paint(organs["spleen"], "spleen")
    t.paint(organs["pancreas"] & ~liver, "pancreas")
    t.paint(organs["stomach"], "stomach_wall")
    t.paint(organs["gastric"], "stomach_contents")
    t.paint(organs["gastric_gas"], "gas")
    t.paint(organs["gallbladder"], "gallbladder")


def _paint_bowel_and_pelvis(t: _Trunk, rng: np.random.Generator, occupied: np.ndarray) -> np.ndarray:
    """Bowel loops and the colon below the upper organs, psoas, the pelvis and its organs;
    returns the pelvic bone."""
    canvas, spine_v = t.canvas, t.spine_v
    u, v, w = canvas.u, canvas.v, canvas.w
    lower = t.abdomen & ~occupied & (w < -60)
    loops = canvas.noise(rng, rng.uniform(18, 30))
    folds = canvas.noise(rng, rng.uniform(20, 30))
    content = canvas.noise(rng, 10)
    limit = rng.uniform(0.3, 0.8)
    bowel = lower & (loops < limit)  # the rest is mesentery (visceral fat)
    # Real bowel is a wall of 2-3 mm around gas, fluid or faeces, its loops apart by fat; a
    # solid blob of wall would look like a liver. So the bowel is cut into loops along the
    # sheets of `folds` (fat in the middle, wall on both sides), with a wall where it meets
    # the mesentery, and the rest is lumen.
    wall = bowel & ((np.abs(folds) < 0.16) | (loops > limit - 0.12))
    t.paint(bowel, "bowel_wall")
    t.paint(bowel & (np.abs(folds) < 0.06), "visceral_fat")
    lumen = bowel & ~wall
    t.paint(lumen, "bowel_fluid")
    t.paint(lumen & (content > 0.6), "gas")
    if rng.random() < 0.25:  # oral contrast in some loops
        t.paint(lumen & (content > -0.4) & (content < 0.2), "bowel_contrast")
    _paint_colon(t, rng, lower, content)
    psoas_u = np.abs(u) - 38 - 0.08 * np.maximum(-w - 150, 0)
    psoas = (np.sqrt((psoas_u / 16) ** 2 + ((v - spine_v - 10) / 16) ** 2) < 1) & (w < -150) & t.abdomen
    t.paint(psoas, "muscle")
    # Gluteal muscles behind and beside the pelvis, below the iliac crests: large muscles a
    # pelvis-only scan is full of, and which must not be taken for a liver.
    gluteal_r = np.sqrt(((np.abs(u) - rng.uniform(60, 80)) / 48) ** 2 + ((v - spine_v + 25) / 38) ** 2)
    t.paint((gluteal_r < 1) & (w < -320) & t.body, "muscle")
    # Pelvis: iliac wings lined by the iliacus muscle, femoral heads (a cortical shell
    # around marrow), the uterus or the prostate, the bladder (up to 700 ml).
    iliac_r = np.sqrt(((np.abs(u) - 20) / 105) ** 2 + ((v - spine_v - 25) / 60) ** 2)
    in_wings = (w < -290) & (w > -420) & (v < spine_v + 50) & (np.abs(u) > 35)
    iliac = (np.abs(iliac_r - 1) < 0.06) & in_wings
    t.paint((iliac_r < 0.94) & (iliac_r > 0.74) & in_wings & t.abdomen, "muscle")  # iliacus
    femoral_r = np.minimum(
        canvas.radius((95, spine_v + 70, -440), (24, 24, 24)),
        canvas.radius((-95, spine_v + 70, -440), (24, 24, 24)),
    )
    if rng.random() < 0.5:  # a uterus above and behind the bladder
        centre = (rng.uniform(-15, 15), spine_v + rng.uniform(60, 80), rng.uniform(-410, -380))
        semi = (rng.uniform(28, 45), rng.uniform(22, 35), rng.uniform(35, 55))
    else:  # a prostate below it
        centre, semi = (0.0, spine_v + rng.uniform(85, 100), -470.0), tuple(rng.uniform(16, 24, size=3))
    pelvic_organ = (canvas.radius(centre, semi) < 1 + 0.08 * canvas.noise(rng, 30)) & t.abdomen
    t.paint(pelvic_organ, "pelvic_organ")
    bladder_semi = (rng.uniform(30, 65), rng.uniform(30, 50), rng.uniform(28, 50))
    bladder = (canvas.radius((0, spine_v + 110, -425), bladder_semi) < 1) & t.abdomen
    pelvic_bone = (iliac | (femoral_r < 1)) & t.body
    t.paint(bladder & ~pelvic_bone, "bladder")
    t.paint(pelvic_bone, "bone_cortex")
    t.paint(pelvic_bone & (femoral_r < 0.75), "bone_marrow")
    return pelvic_bone


def _paint_colon(t: _Trunk, rng: np.random.Generator, lower: np.ndarray, content: np.ndarray) -> None:
    """The colon's frame: ascending on the right flank from the caecum to under the liver,
    transverse across the front, descending on the left flank, then the rectum in front
    of the sacrum. A tube of 20-30 mm radius, its course warped, a 3 mm wall around
    faeces mottled with gas (or fluid), painted over the small bowel."""
    canvas, spine_v = t.canvas, t.spine_v
    u, v, w = canvas.u, canvas.v, canvas.w
    warp = 10 * canvas.noise(rng, 60)
    radius = rng.uniform(20, 30)
    flank = float(np.median(t.a)) - t.fat_mm - rng.uniform(45, 60)  # the colon's distance from the midline
    flexure = rng.uniform(-160, -120)  # height of the transverse colon
    transverse_v = rng.uniform(10, 40)
    sagging = flexure - rng.uniform(20, 60) * (1 - (u / flank) ** 2)  # lowest in the middle
    rectum_u = rng.uniform(-20, 5)
    far = np.float32(np.inf)
    limbs = (
        # ascending (the patient's right, u > 0) and descending (left) limbs
        ((w < flexure) & (w > -330), np.hypot(u - flank + warp, v - spine_v - 35 + warp)),
        ((w < flexure + 30) & (w > -340), np.hypot(u + flank + warp, v - spine_v - 30 + warp)),
        # transverse, from one flank to the other, sagging in the middle
        (np.abs(u) < flank, np.hypot(v - transverse_v + warp, w - sagging + warp)),
        # sigmoid and rectum
        (w < -300, np.hypot(u - rectum_u + warp, v - spine_v - 40 + warp)),
    )
    distance = np.full(canvas.shape, far, dtype=np.float32)
    for where, limb in limbs:
        np.minimum(distance, np.where(where, limb, far), out=distance)
    colon = lower & (distance < radius) & (w > -480)
    t.paint(colon, "bowel_wall")
    lumen = colon & (distance < radius - 3)
    t.paint(lumen, "faeces" if rng.random() < 0.8 else "bowel_fluid")
    t.paint(lumen & (content > 0.3), "gas")


def _paint_head(canvas: _Canvas, rng: np.random.Generator, labels: np.ndarray) -> None:
    """A head and neck: scalp, skull, brain, ventricles, sinus, neck muscles and spine; no liver."""
    u, v, w = canvas.u, canvas.v, canvas.w
    semi = (rng.uniform(66, 78), rng.uniform(85, 100), rng.uniform(75, 90))
    head_r = canvas.radius((0, 0, 0), semi)
    scalp, skull, brain = head_r < 1, head_r < 0.97, head_r < 0.9
    labels[scalp] = LABELS["skin"]
    labels[skull] = LABELS["skull"]
    labels[brain] = LABELS["brain"]
    labels[(canvas.radius((0, 5, 10), (12, 30, 18)) < 1) & brain] = LABELS["csf"]  # ventricles
    labels[(canvas.radius((0, 70, -45), (22, 18, 20)) < 1) & skull] = LABELS["gas"]  # a sinus
    neck = (np.sqrt((u / 55) ** 2 + ((v + 10) / 60) ** 2) < 1) & (w < -50)
    labels[neck & ~scalp] = LABELS["muscle"]
    cervical_r = np.sqrt((u / 12) ** 2 + ((v + 20) / 12) ** 2)
    cervical = (cervical_r < 1) & (w < -40)
    labels[cervical] = LABELS["bone_cortex"]
    labels[cervical & (cervical_r < 0.7)] = LABELS["bone_marrow"]


def _paint_lesions(
    canvas: _Canvas, rng: np.random.Generator, labels: np.ndarray, phase: str
) -> tuple[str, dict[str, float], dict[int, float]]:
    """Paint none or 1-5 lesions into the liver's labels, each its own label so the image
    can give each its own attenuation. Returns the grade of the dominant one, what was drawn,
    and each lesion label's heterogeneity (HU, for `draw_image`)."""
    liver = np.isin(labels, LIVER_LABELS)
    if rng.random() < 1 / 4 or liver.sum() < 50:
        return "", {"lesions": 0}, {}
    grade = int(rng.choice(3, p=GRADE_PROBABILITIES))
    params = _lesion_params(rng, grade)
    count = 1 + int(rng.choice(5, p=[0.55, 0.2, 0.12, 0.08, 0.05]))
    sites = np.argwhere(liver[::2, ::2, ::2]) * 2
    radii = [params["radius_mm"]] + [float(rng.uniform(4, 20)) for _ in range(count - 1)]
    heterogeneity: dict[int, float] = {}
    for index, radius in enumerate(radii):
        ijk = sites[rng.integers(len(sites))]
        center = (float(canvas.u[ijk[0], 0, 0]), float(canvas.v[0, ijk[1], 0]), float(canvas.w[0, 0, ijk[2]]))
        irregular = params["irregularity"] if index == 0 else rng.uniform(0.0, 0.15)
        r = canvas.radius(center, (radius, radius * rng.uniform(0.8, 1.2), radius * rng.uniform(0.8, 1.2)))
        near = r < 1.6
        shape = np.zeros(canvas.shape, dtype=bool)
        distortion = canvas.noise(rng, max(radius * 0.8, 8.0))
        shape[near] = r[near] < 1 + irregular * distortion[near]
        lesion = shape & liver  # a later lesion may cover an earlier one: both stay tumour
        if not lesion.any():
            continue
        label = LESION_LABELS[index]
        labels[lesion] = label
        heterogeneity[label] = params["heterogeneity_hu"] if index == 0 else rng.uniform(2, 10)
        if index == 0 and params["necrosis_fraction"] > 0:
            labels[lesion & (r < params["necrosis_fraction"])] = LABELS["necrosis"]
        if rng.random() < 0.2 and phase in ("arterial", "portal"):  # an enhancing rim
            labels[lesion & (r > 0.8)] = LABELS["lesion_rim"]
    return GRADES[grade], {"lesions": float(count), "radius_mm": params["radius_mm"]}, heterogeneity


def smooth_deformation(
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    max_mm: float = 5.0,
    scale_mm: float = 60.0,
) -> np.ndarray:
    """Warp a label map by a smooth random displacement of at most `max_mm` (SynthSeg's
    shape variation): each voxel takes the label found up to `max_mm` away, by nearest
    neighbour, so no label value is invented. A label too thin to survive the warp anywhere
    is put back where it was, so every label of the input stays in the output."""
    grid = GridSpec(labels.shape, spacing, (0.0, 0.0, 0.0))  # type: ignore[arg-type]
    fields = [smooth_noise(rng, grid, scale_mm) for _ in range(3)]
    # Scale the field so that its longest displacement is a random share of the bound.
    longest = float(np.sqrt(fields[0] ** 2 + fields[1] ** 2 + fields[2] ** 2).max())
    gain = rng.uniform(0.5, 1.0) * max_mm / max(longest, 1e-6)
    warped = np.empty_like(labels)
    nx, ny, nz = labels.shape
    chunk = max(1, 2_000_000 // max(nx * ny, 1))  # a few slices at a time bounds the memory
    for z0 in range(0, nz, chunk):
        z1 = min(z0 + chunk, nz)
        index = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(z0, z1), indexing="ij")
        coords = [
            i + f[:, :, z0:z1] * np.float32(gain / s) for i, f, s in zip(index, fields, spacing, strict=True)
        ]
        warped[:, :, z0:z1] = ndimage.map_coordinates(labels, coords, order=0, mode="nearest")
    before = np.bincount(labels.ravel(), minlength=256) > 0
    after = np.bincount(warped.ravel(), minlength=256) > 0
    for value in np.flatnonzero(before & ~after):
        warped[labels == value] = value
    return warped


def label_hu_ranges(phase: str) -> dict[str, tuple[float, float]]:
    """The (low, high) of each label's mean HU in `phase`, before the case-wide shift (at most
    `SHIFT_HU` either way, soft tissues only). Lesion labels are not listed: they are drawn
    relative to the liver (`_LESION_DELTA`)."""
    ranges = {}
    for name, tone in _LABEL_HU.items():
        low, high = _HU[phase][tone.tissue] if tone.tissue else (0.0, 0.0)
        ranges[name] = (low + tone.low, high + tone.high)
    low, high = ranges["liver"]
    ranges["liver"] = (low - _STEATOSIS_HU[1], high)
    return ranges


def _label_means(rng: np.random.Generator, phase: str) -> np.ndarray:
    """Mean HU of every label value (a lookup table of 256), drawn for one case."""
    shift = float(np.clip(rng.normal(0.0, 6.0), -SHIFT_HU, SHIFT_HU))  # calibration, patient size
    tone = {name: float(rng.uniform(*bounds)) + shift for name, bounds in _HU[phase].items()}
    means = np.zeros(256, dtype=np.float32)
    for name, rule in _LABEL_HU.items():
        base = tone[rule.tissue] if rule.tissue else 0.0
        means[LABELS[name]] = base + rng.uniform(rule.low, rule.high)
    # A fatty liver reads below the spleen; lesions are seen against the liver as it is.
    if rng.random() < 0.15:
        means[LABELS["liver"]] -= rng.uniform(*_STEATOSIS_HU)
    liver_hu = float(means[LABELS["liver"]])
    brighter, (low, high) = _LESION_DELTA[phase]
    for label in LESION_LABELS:
        delta = rng.uniform(low, high) * (1.0 if rng.random() < brighter else -1.0)
        means[label] = liver_hu + delta
    means[LABELS["necrosis"]] = rng.uniform(10, 30)
    means[LABELS["lesion_rim"]] = liver_hu + rng.uniform(10, 40)
    return means


def draw_image(
    labels: np.ndarray,
    rng: np.random.Generator,
    phase: str,
    *,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    heterogeneity: Mapping[int, float] | None = None,
) -> np.ndarray:
    """The noise-free HU image (float32) of a label map: each label's mean HU drawn for
    `phase`, smooth texture inside each label, partial volume at the boundaries.

    `spacing` (mm) sizes the texture; `heterogeneity` (lesion label -> HU) is each lesion's
    grain, as `_paint_lesions` drew it (else 2-10 HU).
    """
    means = _label_means(rng, phase)
    fine = np.zeros(256, dtype=np.float32)
    for name in LABELS:
        fine[LABELS[name]] = _TEXTURE_HU.get(name, _DEFAULT_TEXTURE_HU)
    # Parenchyma is not uniform: perfusion and fat vary over centimetres (real livers spread
    # 10-20 HU before noise). A lesion has to be told from that, not from a flat organ.
    patchy = np.zeros(256, dtype=np.float32)
    patchy[LABELS["liver"]] = rng.uniform(2, 8)
    grainy = np.zeros(256, dtype=np.float32)
    for label in LESION_LABELS:
        grainy[label] = (heterogeneity or {}).get(label, rng.uniform(2, 10))
    grid = GridSpec(labels.shape, spacing, (0.0, 0.0, 0.0))  # type: ignore[arg-type]
    hu = means[labels]
    for table, scale_mm in ((fine, 8.0), (patchy, rng.uniform(30, 60)), (grainy, 6.0)):
        hu += table[labels] * smooth_noise(rng, grid, scale_mm)
    # Partial volume: a voxel averages the tissues it straddles (a blur under a voxel).
    return ndimage.gaussian_filter(hu, rng.uniform(0.3, 0.6), mode="nearest").astype(np.float32)


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


def generate_torso_case(seed: int, case_index: int, field_of_view: str | None = None) -> TorsoCase:
    """Draw one case (see the module notes); the same (seed, index) gives the same case.

    `field_of_view` (one of `FIELDS`) replaces the drawn one; the rest of the draw is kept.
    """
    case_seed = torso_seed(seed, case_index)
    rng = np.random.default_rng(case_seed)
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
    # Shape and appearance draw from streams of their own: a change to the painters leaves a
    # case's HU draws alone, and a label map can be drawn again with other intensities.
    shape_rng, image_rng = (_substream(case_seed, key) for key in (1, 2))
    # The label map first: anatomy, lesions, then one smooth warp of it all.
    labels = paint_labels(grid, origin, shape_rng, kind)
    grade, lesion_params, heterogeneity = _paint_lesions(canvas, shape_rng, labels, phase)
    labels = smooth_deformation(labels, shape_rng, spacing=grid.spacing)
    # Then the image drawn from it, and the scanner's view of that image.
    hu = draw_image(labels, image_rng, phase, spacing=grid.spacing, heterogeneity=heterogeneity)
    ct = _acquire(hu, spacing, rng)
    if rng.random() < 0.4:  # padding outside the scan circle
        radius = np.sqrt(canvas.u**2 + (canvas.v - float(canvas.v[0, :, 0].mean())) ** 2)
        ct[radius > fov * 0.5] = float(rng.choice([-1024.0, -2048.0, -3024.0]))
    params: dict[str, float | str] = {"field": kind, "phase": phase, **lesion_params}
    params.update(spacing_x=spacing[0], spacing_z=spacing[2], fov_mm=fov)
    return TorsoCase(
        case_index,
        ct,
        grid.affine,
        liver=np.isin(labels, LIVER_LABELS).astype(np.uint8),
        tumor=np.isin(labels, TUMOR_LABELS).astype(np.uint8),
        grade=grade,
        params=params,
        labels=labels,
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
    write_nifti(folder / "labels.nii.gz", case.labels, case.affine)  # the map the ct was drawn from
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
