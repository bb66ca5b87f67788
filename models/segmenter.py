"""Localize, then grade: the segmenter that finds the organ and the lesion before any grade.

A study comes without masks. Each task's segmenter (MONAI residual U-Nets) labels the scan
(HCC: background, liver, lesion); the grader then reads the crop and the regions that mask
gives (`models.contract`, `models.region_graph`). Training, export and serving share this
module, so a served scan is brought onto the segmenter's grids exactly as a trained one was.
It is a cascade of two stages, as nnU-Net's is for livers:

1. ``coarse``: an RAS+-aligned grid of 3 mm voxels over the box of the reference image's
   foreground (the body, not the air around it) and a margin, at most ``max_shape``: the
   whole scan, so the organ is told from its neighbours (spleen, heart, a head).
2. ``fine``: 1.5 mm voxels over the box of the organ the coarse stage found and a margin:
   the organ's boundary and its lesions, small ones included, at twice the resolution.
   Without an organ there is no fine stage (and nothing to grade).

On each grid the image is resampled trilinearly and its intensities mapped by a piecewise
linear curve (`SegmenterSpec.intensity_knots`) that keeps soft tissue at most of the range
and still tells lung from fat and bone from contrast. Probabilities come from overlapping
``roi`` windows (`sliding_window`), so any scan size fits the networks, whatever runs them
(PyTorch in training, ONNX Runtime serving). `labels_from_probabilities` keeps the largest
connected organ, the lesions inside it, and drops specks; `summarize` measures what the
grade needs and where the scan cuts it.

No I/O here: arrays in, arrays out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from models.contract import (
    BACKGROUND,
    FOREGROUND_THRESHOLD,
    Grid,
    Volume,
    _index_box,
    _world_box,
    from_tensor_layout,
    resample,
    to_tensor_layout,
)
from models.registry import register_segmenter
from models.tasks import ModalityKind

_CONNECTED = ndimage.generate_binary_structure(3, 3)  # 26-connectivity


@dataclass(frozen=True)
class Stage:
    """One grid of the cascade.

    Attributes:
        spacing_mm: voxel size, (x, y, z).
        roi: the sliding window, (D, H, W) voxels (divisible by the network's strides).
        margin_mm: room kept around the box the grid covers (the body; the organ).
        max_shape: the largest grid, (x, y, z) voxels; a longer box keeps its centre.
    """

    spacing_mm: tuple[float, float, float]
    roi: tuple[int, int, int]
    margin_mm: float
    max_shape: tuple[int, int, int]


StageName = Literal["coarse", "fine"]
STAGES: tuple[StageName, ...] = ("coarse", "fine")


@dataclass(frozen=True)
class SegmenterSpec:
    """What a task's segmenter reads and labels.

    Attributes:
        task: the task whose grader it serves (`models.tasks`).
        labels: label names in logit order: background, the organ, then the lesion.
        modality: the image it reads (the task's reference modality).
        coarse, fine: the cascade's two grids (see the module notes).
        intensity_knots: (value in the modality's units, network input) pairs of the
            piecewise linear intensity map; values beyond the ends are clipped.
        min_lesion_ml: lesion components smaller than this are dropped as specks.
        lesion_threshold: the lesion's probability from which a voxel is lesion
            (`weigh_lesion`); None: where the lesion is the argmax. A trained segmenter's
            card sets it, chosen on validation: a faint lesion rarely wins the argmax.
    """

    task: str
    labels: tuple[str, ...]
    modality: str
    coarse: Stage
    fine: Stage
    intensity_knots: tuple[tuple[float, float], ...]
    min_lesion_ml: float
    lesion_threshold: float | None = None

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def label(self, name: str) -> int:
        return self.labels.index(name)

    def stage(self, name: StageName) -> Stage:
        return self.coarse if name == "coarse" else self.fine


HCC_SEGMENTER = SegmenterSpec(
    task="hcc",
    labels=("background", "liver", "lesion"),
    modality="ct",
    coarse=Stage(spacing_mm=(3.0, 3.0, 3.0), roi=(96, 96, 96), margin_mm=6.0, max_shape=(224, 224, 256)),
    # A liver is at most about 25 cm across: 192 voxels of 1.5 mm hold it with its margin.
    fine=Stage(spacing_mm=(1.5, 1.5, 1.5), roi=(96, 96, 96), margin_mm=12.0, max_shape=(192, 192, 192)),
    # Air to lung to fat: 15 % of the range; soft tissue -150..250 HU: 70 %; bone and
    # contrast above: the rest.
    intensity_knots=((-1000.0, 0.0), (-150.0, 0.15), (250.0, 0.85), (1500.0, 1.0)),
    min_lesion_ml=0.2,
)
SEGMENTERS: dict[str, SegmenterSpec] = {HCC_SEGMENTER.task: HCC_SEGMENTER}


def get_segmenter_spec(task: str) -> SegmenterSpec:
    try:
        return SEGMENTERS[task]
    except KeyError:
        raise ValueError(f"no segmenter for task {task!r}; known: {sorted(SEGMENTERS)}") from None


def spec_of_card(card: Mapping[str, Any]) -> SegmenterSpec:
    """The spec a trained segmenter runs with: its task's, with the lesion threshold its
    card names (`lesion_threshold`: a number, or absent for the argmax)."""
    spec = get_segmenter_spec(str(card.get("task")))
    threshold = card.get("lesion_threshold")
    if threshold is None:
        return spec
    if not isinstance(threshold, int | float) or not 0.0 < threshold < 1.0:
        raise ValueError(f"lesion_threshold must be a probability in (0, 1), got {threshold!r}")
    return replace(spec, lesion_threshold=float(threshold))


@register_segmenter
def hcc_segmenter(
    in_channels: int = 1,
    num_classes: int = 3,
    channels: tuple[int, ...] = (16, 32, 64, 128, 256),
    strides: tuple[int, ...] = (2, 2, 2, 2),
    num_res_units: int = 1,
    norm: str = "instance",
    dropout: float = 0.0,
) -> nn.Module:
    """MONAI's residual U-Net over the CT: logits (N, labels, D, H, W) on the input grid."""
    from monai.networks.nets import UNet  # MONAI loads in seconds: only when a segmenter is built

    return UNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=num_classes,
        channels=tuple(channels),
        strides=tuple(strides),
        num_res_units=num_res_units,
        norm=norm,
        dropout=dropout,
    )


# --------------------------------------------------------------------------- input


@dataclass(frozen=True)
class SegmenterInput:
    """The scan on the segmenter's grid: ``image`` float32 (1, D, H, W), and which of the
    grid's voxels the scan covers (``scanned`` bool (D, H, W)), so a cut organ is told from a
    small one."""

    image: np.ndarray
    scanned: np.ndarray
    grid: Grid


def normalize_intensity(values: np.ndarray, spec: SegmenterSpec) -> np.ndarray:
    """The piecewise linear map of `spec.intensity_knots`, clipped at both ends."""
    xs, ys = zip(*spec.intensity_knots, strict=True)
    return np.interp(values, xs, ys).astype(np.float32)


def _kind(spec: SegmenterSpec) -> ModalityKind:
    return "ct" if spec.modality == "ct" else "mri"


def box_grid(low: np.ndarray, high: np.ndarray, stage: Stage) -> Grid:
    """The RAS+-aligned grid of `stage` over the world box ``low..high`` (mm) and its margin."""
    spacing = np.asarray(stage.spacing_mm, dtype=np.float64)
    low, high = low - stage.margin_mm, high + stage.margin_mm
    shape = np.maximum(np.minimum(np.ceil((high - low) / spacing).astype(int), stage.max_shape), 1)
    center = (low + high) / 2.0
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    affine[:3, 3] = center - spacing * (shape - 1) / 2.0
    return Grid(shape=tuple(int(s) for s in shape), affine=affine)  # type: ignore[arg-type]


def coarse_grid(volume: Volume, spec: SegmenterSpec) -> Grid:
    """The coarse stage's grid: over the box of the image's foreground (the body)."""
    foreground = volume.array > FOREGROUND_THRESHOLD[_kind(spec)]
    if foreground.any():
        low, high = _world_box(volume.affine, *_index_box(foreground))
    else:
        low, high = volume.world_bounds()
    return box_grid(low, high, spec.coarse)


def fine_grid(organ: np.ndarray, grid: Grid, spec: SegmenterSpec) -> Grid:
    """The fine stage's grid: over the box of `organ` ((D, H, W) bool on `grid`, non-empty).

    An organ longer than the fine grid can hold (`Stage.max_shape` with its margin) is not
    one liver: the coarse stage joined it to a neighbour. Along such an axis the grid covers
    the stretch that holds the most of the organ, rather than the box's middle, where the
    bridge between the two lies.
    """
    organ_xyz = from_tensor_layout(organ)
    lo, hi = _index_box(organ_xyz)
    room_mm = np.asarray(spec.fine.max_shape) * np.asarray(spec.fine.spacing_mm) - 2 * spec.fine.margin_mm
    room = np.maximum((room_mm / np.asarray(grid.spacing)).astype(int), 1)  # voxels of `grid`
    for axis in np.flatnonzero(hi - lo + 1 > room):
        profile = organ_xyz.sum(axis=tuple(a for a in range(3) if a != axis))
        start = int(np.argmax(np.convolve(profile, np.ones(room[axis]), mode="valid")))
        lo[axis], hi[axis] = start, start + room[axis] - 1
    low, high = _world_box(grid.affine, lo, hi)
    return box_grid(low, high, spec.fine)


def scanned_voxels(volume: Volume, grid: Grid) -> np.ndarray:
    """(D, H, W) bool: the grid voxels whose centre lies inside the scanned volume."""
    to_source = (np.linalg.inv(volume.affine) @ grid.affine).astype(np.float32)
    axes = [np.arange(n, dtype=np.float32) for n in grid.shape]
    inside = np.ones(grid.shape, dtype=bool)
    for axis, size in enumerate(volume.array.shape):
        # The source index along `axis`, a sum of one term per grid axis: broadcast, not
        # an (3, N) index array times a matrix.
        row = to_source[axis]
        source = (
            (row[0] * axes[0] + row[3])[:, None, None]
            + (row[1] * axes[1])[None, :, None]
            + (row[2] * axes[2])[None, None, :]
        )
        inside &= (source >= -0.5) & (source <= size - 0.5)
    return to_tensor_layout(inside)


def segmenter_input(volume: Volume, spec: SegmenterSpec, grid: Grid | None = None) -> SegmenterInput:
    """The reference image on `grid` (default: the coarse stage's), intensities mapped."""
    grid = grid if grid is not None else coarse_grid(volume, spec)
    # Sampled up to the scan's faces: in the outer half voxel of the scan, trilinear sampling
    # would blend the last slice with the air beyond, and an organ the scan cuts would fade
    # before the face, where `summarize` looks for the cut; so the edge is extended
    # ("nearest", no padded copy of the scan), and everything beyond the faces set to air.
    air = BACKGROUND[_kind(spec)]
    on_grid = resample(volume.array, volume.affine, grid, order=1, mode="nearest")
    scanned = scanned_voxels(volume, grid)
    image = to_tensor_layout(normalize_intensity(on_grid, spec))
    image[~scanned] = normalize_intensity(np.array([air]), spec)[0]
    return SegmenterInput(image=image[None], scanned=scanned, grid=grid)


def only_scanned(probabilities: np.ndarray, scanned: np.ndarray) -> np.ndarray:
    """`probabilities` (L, D, H, W) with everything beyond the scan background: a mask
    claims nothing where nothing was imaged."""
    probabilities[0] = np.where(scanned, probabilities[0], 1.0)
    probabilities[1:] *= scanned
    return probabilities


def mask_on_grid(mask: Volume, grid: Grid) -> np.ndarray:
    """A label map resampled onto `grid` (nearest neighbour), (D, H, W) uint8."""
    on_grid = resample(mask.array.astype(np.float32), mask.affine, grid, order=0)
    return to_tensor_layout(np.rint(on_grid).astype(np.uint8))


# --------------------------------------------------------------------------- inference

Predictor = Callable[[torch.Tensor], torch.Tensor]


def sliding_window(predict: Predictor, image: np.ndarray, stage: Stage, overlap: float = 0.25) -> np.ndarray:
    """Softmax probabilities (L, D, H, W) float32 of `image` (1, D, H, W), window by window.

    `predict` maps a batch of windows (N, 1, *roi) to logits (N, L, *roi): a PyTorch network
    in training, an ONNX Runtime session when serving. Windows overlap by `overlap` and are
    blended with Gaussian weights (MONAI's `sliding_window_inference`).
    """
    from monai.inferers import sliding_window_inference

    with torch.no_grad():
        logits = sliding_window_inference(
            torch.from_numpy(np.ascontiguousarray(image[None], dtype=np.float32)),
            roi_size=stage.roi,
            sw_batch_size=1,
            predictor=predict,
            overlap=overlap,
            mode="gaussian",
        )
    assert isinstance(logits, torch.Tensor)
    return torch.softmax(logits[0].float(), dim=0).numpy()


def weigh_lesion(probabilities: np.ndarray, threshold: float | None) -> np.ndarray:
    """(L, D, H, W) probabilities with the lesion's odds multiplied by (1 - t) / t and the
    rest renormalised: a voxel whose lesion probability reaches `threshold` t now has it at
    one half or more, so every rule downstream (the argmax, the cut at one half of
    `labels_on_grid`) reads the threshold without knowing it. A prior shift (logit
    adjustment); None or 0.5 leaves them as they are."""
    if threshold is None or threshold == 0.5:
        return probabilities
    lesion = probabilities[-1]
    weight = (1.0 - threshold) / threshold
    scale = 1.0 / (1.0 + (weight - 1.0) * lesion)
    out = probabilities * scale[None]
    out[-1] *= weight
    return out.astype(probabilities.dtype, copy=False)


def labels_from_probabilities(probabilities: np.ndarray, spec: SegmenterSpec, grid: Grid) -> np.ndarray:
    """(D, H, W) uint8 labels: the argmax, cleaned.

    The organ is one piece: its largest 26-connected component is kept, holes filled (a
    lesion inside it is part of it). Lesions lie in the organ: lesion voxels outside it are
    dropped, then components under `spec.min_lesion_ml`.
    """
    labels = np.argmax(probabilities, axis=0).astype(np.uint8)
    organ_label, lesion_label = spec.label(spec.labels[1]), spec.label(spec.labels[-1])
    organ = _largest_component(labels > 0)
    organ = ndimage.binary_fill_holes(organ)
    lesion = organ & (labels == lesion_label)
    components, count = ndimage.label(lesion, structure=_CONNECTED)
    if count:
        voxel_ml = float(np.prod(grid.spacing)) / 1000.0
        sizes = np.bincount(components.ravel())[1:] * voxel_ml
        keep = np.flatnonzero(sizes >= spec.min_lesion_ml) + 1
        lesion = np.isin(components, keep)
    out = np.zeros(labels.shape, dtype=np.uint8)
    out[organ] = organ_label
    out[lesion] = lesion_label
    return out


@dataclass(frozen=True)
class Segmentation:
    """A scan segmented.

    overview: the scan on the coarse grid (what pictures of the case show).
    input: the scan on the grid of the labels (the fine one; the coarse one when no organ
    was found), with the probabilities (L, D, H, W) and cleaned labels (D, H, W) there.
    summary: what the labels say (`summarize`).
    """

    overview: SegmenterInput
    input: SegmenterInput
    probabilities: np.ndarray
    labels: np.ndarray
    summary: MaskSummary

    @property
    def grid(self) -> Grid:
        return self.input.grid

    def as_volume(self) -> Volume:
        """The labels as a `Volume` (``[x, y, z]``), the form a mask takes everywhere else."""
        return Volume(from_tensor_layout(self.labels), self.input.grid.affine)


def segment(predictors: Mapping[StageName, Predictor], volume: Volume, spec: SegmenterSpec) -> Segmentation:
    """The cascade of the module notes on one scan: coarse, then fine over the organ found.

    The fine stage's organ is kept inside the coarse one (one coarse voxel around it), so a
    neighbour the fine window shows (the spleen, the heart) cannot become the organ.
    """
    overview = segmenter_input(volume, spec)
    coarse = only_scanned(sliding_window(predictors["coarse"], overview.image, spec.coarse), overview.scanned)
    coarse_labels = labels_from_probabilities(coarse, spec, overview.grid)
    if not coarse_labels.any():
        return Segmentation(
            overview,
            overview,
            coarse,
            coarse_labels,
            summarize(coarse_labels, overview.grid, volume, organ_labelled=True),
        )
    fine_input = segmenter_input(volume, spec, fine_grid(coarse_labels > 0, overview.grid, spec))
    probabilities = weigh_lesion(
        sliding_window(predictors["fine"], fine_input.image, spec.fine), spec.lesion_threshold
    )
    allowed = ndimage.binary_dilation(coarse_labels > 0, _CONNECTED)
    inside = mask_on_grid(
        Volume(from_tensor_layout(allowed.astype(np.uint8)), overview.grid.affine), fine_input.grid
    )
    probabilities = only_scanned(probabilities, (inside > 0) & fine_input.scanned)
    labels = labels_from_probabilities(probabilities, spec, fine_input.grid)
    summary = summarize(labels, fine_input.grid, volume, organ_labelled=True)
    return Segmentation(overview, fine_input, probabilities, labels, summary)


def labels_on_grid(
    probabilities: np.ndarray, labels: np.ndarray, grid: Grid, target: Grid, slab: int = 32
) -> np.ndarray:
    """The cleaned labels of `grid` on another grid (the scan's own), ``[x, y, z]`` uint8.

    Nearest sampling would give the scan blocks of the segmenter's 3 mm voxels. Instead the
    organ's and the lesion's probabilities, zeroed beyond what `labels_from_probabilities`
    kept (and one voxel around it), are sampled trilinearly and cut at one half: boundaries
    as smooth as the network's own. The target is done `slab` slices at a time, so a
    512 x 512 x 600 scan never holds more than two float slabs.
    """
    kept_organ = ndimage.binary_dilation(labels > 0, _CONNECTED)
    lesion_label = len(probabilities) - 1
    kept_lesion = ndimage.binary_dilation(labels == lesion_label, _CONNECTED)
    organ = np.where(kept_organ, 1.0 - probabilities[0], 0.0).astype(np.float32)
    lesion = np.where(kept_lesion, probabilities[lesion_label], 0.0).astype(np.float32)
    maps = [from_tensor_layout(organ), from_tensor_layout(lesion)]
    out = np.zeros(target.shape, dtype=np.uint8)
    for start in range(0, target.shape[2], slab):
        stop = min(start + slab, target.shape[2])
        affine = target.affine.copy()
        affine[:3, 3] = target.affine[:3, :3] @ np.array([0.0, 0.0, start]) + target.affine[:3, 3]
        part = Grid(shape=(target.shape[0], target.shape[1], stop - start), affine=affine)
        organ_part, lesion_part = (resample(m, grid.affine, part, order=1) >= 0.5 for m in maps)
        block = organ_part.astype(np.uint8)
        block[organ_part & lesion_part] = lesion_label
        out[:, :, start:stop] = block
    return out


def _largest_component(mask: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(mask, structure=_CONNECTED)
    if count <= 1:
        return mask.astype(bool)
    sizes = np.bincount(components.ravel())[1:]
    return components == int(np.argmax(sizes)) + 1


# --------------------------------------------------------------------------- masks


def liver_and_lesion(
    labels: np.ndarray, organ_labelled: bool = False
) -> tuple[np.ndarray | None, np.ndarray]:
    """The organ (lesions included) and the lesion of a label map, as the service reads masks.

    A map with two or more labels is LiTS-style (liver 1, tumour 2): the organ is every
    non-zero voxel, the lesion the highest label. A binary map is the lesion alone; its
    organ is unknown (None). A segmenter's map (`organ_labelled`) always means organ 1 and
    lesion 2, even where it found no lesion, or nothing at all.
    """
    if organ_labelled:
        return labels > 0, labels == 2
    top = int(labels.max()) if labels.size else 0
    lesion = labels == top if top > 0 else np.zeros(labels.shape, dtype=bool)
    if top >= 2:
        return labels > 0, lesion
    return None, lesion


@dataclass(frozen=True)
class MaskSummary:
    """What a mask says about a case, in the units a radiologist reads.

    organ_ml: the organ with its lesions (None when the mask has no organ label).
    lesion_ml: all lesions; lesions_ml: each lesion (26-connected), largest first.
    lesion_center_mm: RAS+ centroid of the largest lesion (None without one).
    organ_cut: the scan's edges that cut the organ ("top", "bottom", "side"), if any.
    organ_cut_area_cm2: the organ's largest cross-section on an edge of the scan.
    lesion_cut: whether the scan's edge cuts the largest lesion.
    """

    organ_ml: float | None
    lesion_ml: float
    lesions_ml: tuple[float, ...]
    lesion_center_mm: tuple[float, float, float] | None
    organ_cut: tuple[str, ...]
    organ_cut_area_cm2: float
    lesion_cut: bool

    @property
    def lesions(self) -> int:
        return len(self.lesions_ml)


def summarize(
    labels: np.ndarray, grid: Grid, scan: Volume | None = None, organ_labelled: bool = False
) -> MaskSummary:
    """Volumes, lesion count and where the scan cuts the organ, of a (D, H, W) label map on
    `grid` (`liver_and_lesion` reads it). A cut is where the mask meets the faces of `scan`
    (default: the grid's own faces), wherever the grid lies: a SEG holds only the frames it
    draws on, and the top of those frames is not the top of the scan."""
    organ, lesion = liver_and_lesion(labels, organ_labelled)
    voxel_ml = float(np.prod(grid.spacing)) / 1000.0
    components, count = ndimage.label(lesion, structure=_CONNECTED)
    sizes = np.bincount(components.ravel())[1:] if count else np.zeros(0, dtype=np.int64)
    order = np.argsort(-sizes, kind="stable")
    center = None
    lesion_cut = False
    if scan is None:
        scanned = np.pad(np.ones(labels.shape, dtype=bool), 1, constant_values=False)
    else:
        scanned = scanned_voxels(scan, grid.padded(1))
    edge = _scan_edge(scanned)
    if count:
        largest = components == int(order[0]) + 1
        dhw = np.argwhere(largest).mean(axis=0)
        xyz = (grid.affine @ np.append(dhw[::-1], 1.0))[:3]
        center = (float(xyz[0]), float(xyz[1]), float(xyz[2]))
        lesion_cut = bool(np.any(largest & edge["any"]))
    cut: list[str] = []
    area_cm2 = 0.0
    if organ is not None:
        spacing = grid.spacing  # (x, y, z)
        for name, face_area_mm2 in (("top", spacing[0] * spacing[1]), ("bottom", spacing[0] * spacing[1])):
            on_face = organ & edge[name]
            if on_face.any():
                cut.append(name)
                area_cm2 = max(area_cm2, float(on_face.sum(axis=(1, 2)).max()) * face_area_mm2 / 100.0)
        if np.any(organ & edge["side"]):
            cut.append("side")
    return MaskSummary(
        organ_ml=float(organ.sum()) * voxel_ml if organ is not None else None,
        lesion_ml=float(lesion.sum()) * voxel_ml,
        lesions_ml=tuple(float(sizes[i]) * voxel_ml for i in order),
        lesion_center_mm=center,
        organ_cut=tuple(cut),
        organ_cut_area_cm2=area_cm2,
        lesion_cut=lesion_cut,
    )


def _scan_edge(padded: np.ndarray) -> dict[str, np.ndarray]:
    """The scanned voxels on the scan's top, bottom and side faces ((D, H, W) = (z, y, x)):
    those with an unscanned neighbour above, below, or in-plane. `padded` is what is scanned
    on the grid grown by one voxel on every side."""
    inner = (slice(1, -1),) * 3
    scanned = padded[inner]

    def neighbour_missing(axis: int, step: int) -> np.ndarray:
        view = list(inner)
        view[axis] = slice(1 + step, padded.shape[axis] - 1 + step)
        return scanned & ~padded[tuple(view)]

    top, bottom = neighbour_missing(0, 1), neighbour_missing(0, -1)
    side = (
        neighbour_missing(1, 1)
        | neighbour_missing(1, -1)
        | neighbour_missing(2, 1)
        | neighbour_missing(2, -1)
    )
    return {"top": top, "bottom": bottom, "side": side, "any": top | bottom | side}
