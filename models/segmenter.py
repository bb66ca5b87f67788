"""Localize, then grade: the segmenter that finds the organ and the lesion before any grade.

A study comes without masks. Each task's segmenter (MONAI networks) labels the scan; the
grader then reads the crop and the regions that mask gives (`models.contract`,
`models.region_graph`). Training, export and serving share this module, so a served scan is
brought onto the segmenter's grids exactly as a trained one was.

A task's labels are nested, each inside the one before it: HCC background, liver, lesion
(the lesion lies in the liver); BraTS background, edema, necrotic core, enhancing tumour
(whole tumour, tumour core, enhancing tumour, as BraTS scores them). So "label k or above"
is a region, and everything below works for any task by that one rule.

HCC is a cascade of two stages, as nnU-Net's is for livers:

1. ``coarse``: an RAS+-aligned grid of 3 mm voxels over the box of the reference image's
   foreground (the body, not the air around it) and a margin, at most ``max_shape``: the
   whole scan, so the organ is told from its neighbours (spleen, heart, a head).
2. ``fine``: 1.5 mm voxels over the box of the organ the coarse stage found and a margin:
   the organ's boundary and its lesions, small ones included, at twice the resolution.
   Without an organ there is no fine stage (and nothing to grade).

A brain fits one grid at the resolution BraTS is scored on: its segmenter has the coarse
stage only, over the head, reading whichever of the four sequences came (each a channel; a
missing one is zeros, as in training).

On each grid the images are resampled trilinearly; CT is mapped by a piecewise linear curve
(`SegmenterSpec.intensity_knots`) that keeps soft tissue at most of the range and still
tells lung from fat and bone from contrast, MRI (in scanner units) is z-scored over the
head. Probabilities come from overlapping ``roi`` windows (`sliding_window`), so any scan
size fits the networks, whatever runs them (PyTorch in training, ONNX Runtime serving).
`labels_from_probabilities` keeps the largest connected structure, what lies inside it, and
drops specks; `summarize` measures what the grade needs and where the scan cuts it.

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
    standardize_foreground,
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
        labels: label names in logit order, nested: background, then each label inside the
            one before it (see the module notes).
        modalities: the images it reads, one channel each, in channel order; the first
            present one places the grid. Any may be missing (its channel is zeros).
        kind: their imaging kind (the intensity mapping; what counts as foreground).
        coarse, fine: the cascade's grids (see the module notes); no fine stage: one grid.
        intensity_knots: CT only: (HU, network input) pairs of the piecewise linear
            intensity map; values beyond the ends are clipped. None: z-scored (MRI).
        min_lesion_ml: components of the last label smaller than this are dropped as specks.
        regions: the names of the nested regions "label k or above", k = 1, 2, ... (what
            Dice is reported on).
        values: the value each label has in a mask file (BraTS keeps its 0, 2, 1, 4);
            None: the label's index.
        aliases: (value, read as) pairs of older mask files (BraTS 2017's 3 is today's 1).
        has_organ: whether label 1 is an organ holding the lesions (HCC's liver), rather
            than a part of the lesion itself (BraTS' edema).
        lesion_threshold: the lesion's probability from which a voxel is lesion
            (`weigh_lesion`); None: where the lesion is the argmax. A trained segmenter's
            card sets it, chosen on validation: a faint lesion rarely wins the argmax.
    """

    task: str
    labels: tuple[str, ...]
    modalities: tuple[str, ...]
    kind: ModalityKind
    coarse: Stage
    fine: Stage | None
    intensity_knots: tuple[tuple[float, float], ...] | None
    min_lesion_ml: float
    regions: tuple[str, ...] = ("organ", "lesion")
    values: tuple[int, ...] | None = None
    aliases: tuple[tuple[int, int], ...] = ()
    has_organ: bool = True
    lesion_threshold: float | None = None

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return len(self.modalities)

    @property
    def stages(self) -> tuple[StageName, ...]:
        return STAGES if self.fine is not None else ("coarse",)

    def label(self, name: str) -> int:
        return self.labels.index(name)

    def stage(self, name: StageName) -> Stage:
        stage = self.coarse if name == "coarse" else self.fine
        if stage is None:
            raise ValueError(f"the {self.task} segmenter has no {name} stage")
        return stage

    def label_values(self) -> np.ndarray:
        """Label index -> the value it has in a mask file."""
        return np.asarray(self.values if self.values is not None else range(self.num_labels), dtype=np.uint8)

    def label_indices(self, values: np.ndarray) -> np.ndarray:
        """A mask's values -> label indices (`aliases` read as theirs; a value the spec does
        not know is background)."""
        lookup = np.zeros(256, dtype=np.uint8)
        lookup[self.label_values()] = np.arange(self.num_labels, dtype=np.uint8)
        for alias, value in self.aliases:
            lookup[alias] = lookup[value]
        return lookup[np.clip(values, 0, 255).astype(np.uint8)]


HCC_SEGMENTER = SegmenterSpec(
    task="hcc",
    labels=("background", "liver", "lesion"),
    modalities=("ct",),
    kind="ct",
    coarse=Stage(spacing_mm=(3.0, 3.0, 3.0), roi=(96, 96, 96), margin_mm=6.0, max_shape=(224, 224, 256)),
    # A liver is at most about 25 cm across: 192 voxels of 1.5 mm hold it with its margin.
    fine=Stage(spacing_mm=(1.5, 1.5, 1.5), roi=(96, 96, 96), margin_mm=12.0, max_shape=(192, 192, 192)),
    # Air to lung to fat: 15 % of the range; soft tissue -150..250 HU: 70 %; bone and
    # contrast above: the rest.
    intensity_knots=((-1000.0, 0.0), (-150.0, 0.15), (250.0, 0.85), (1500.0, 1.0)),
    min_lesion_ml=0.2,
)
BRATS_SEGMENTER = SegmenterSpec(
    task="brats",
    # BraTS' labels 2, 1 and 4, nested: whole tumour > tumour core > enhancing tumour.
    labels=("background", "edema", "necrotic", "enhancing"),
    modalities=("t1", "t1ce", "t2", "flair"),
    kind="mri",
    # The grid BraTS students read (2.5 mm); 200 x 240 x 200 mm holds any adult head, and
    # one window covers it.
    coarse=Stage(spacing_mm=(2.5, 2.5, 2.5), roi=(80, 96, 80), margin_mm=5.0, max_shape=(80, 96, 80)),
    fine=None,
    intensity_knots=None,
    # An enhancing focus is 3 mm across or more (0.1 ml); smaller is noise.
    min_lesion_ml=0.05,
    regions=("whole_tumour", "tumour_core", "enhancing_tumour"),
    values=(0, 2, 1, 4),
    aliases=((3, 1),),
    has_organ=False,
)
SEGMENTERS: dict[str, SegmenterSpec] = {spec.task: spec for spec in (HCC_SEGMENTER, BRATS_SEGMENTER)}


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


def residual_unet(
    in_channels: int,
    num_classes: int,
    channels: tuple[int, ...],
    strides: tuple[int, ...],
    num_res_units: int,
    norm: str,
    dropout: float,
) -> nn.Module:
    """MONAI's residual U-Net: logits (N, labels, D, H, W) on the input grid."""
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
    """The residual U-Net over the CT."""
    return residual_unet(in_channels, num_classes, channels, strides, num_res_units, norm, dropout)


@register_segmenter
def brats_segmenter(
    in_channels: int = 4,
    num_classes: int = 4,
    channels: tuple[int, ...] = (16, 32, 64, 128),
    strides: tuple[int, ...] = (2, 2, 2),
    num_res_units: int = 1,
    norm: str = "instance",
    dropout: float = 0.0,
) -> nn.Module:
    """The residual U-Net over the four sequences. Not SegResNet: with 8 initial filters it
    had not learned the enhancing rim after 400 steps (validation Dice 0.0 with a softmax,
    0.07 with one sigmoid per region), where this U-Net drew it on its training windows by
    step 60 (docs/segmenter.md)."""
    return residual_unet(in_channels, num_classes, channels, strides, num_res_units, norm, dropout)


# --------------------------------------------------------------------------- input


@dataclass(frozen=True)
class SegmenterInput:
    """The scan on the segmenter's grid: ``image`` float32 (channels, D, H, W), which of the
    grid's voxels the reference image covers (``scanned`` bool (D, H, W)), so a cut organ is
    told from a small one, and which channel the reference image is (of what ``kind``)."""

    image: np.ndarray
    scanned: np.ndarray
    grid: Grid
    reference: int = 0
    kind: ModalityKind = "ct"

    def picture(self) -> np.ndarray:
        """The reference image's channel in [0, 1], for pictures: CT's intensity curve is
        already there; MRI's z-scores from -2 to 4 (dark CSF to enhancement) are mapped."""
        channel = self.image[self.reference]
        if self.kind == "ct":
            return channel
        return np.clip((channel + 2.0) / 6.0, 0.0, 1.0)


Scan = Volume | Mapping[str, Volume]
"""What a segmenter reads: the study's volumes by modality, or one volume of its first."""


def scans_of(scan: Scan, spec: SegmenterSpec) -> dict[str, Volume]:
    """The spec's modalities that `scan` holds, in channel order (the first is the reference)."""
    if isinstance(scan, Volume):
        return {spec.modalities[0]: scan}
    present = {name: scan[name] for name in spec.modalities if name in scan}
    if not present:
        raise ValueError(f"the {spec.task} segmenter reads {list(spec.modalities)}, got {sorted(scan)}")
    return present


def reference_scan(scan: Scan, spec: SegmenterSpec) -> Volume:
    """The image whose foreground places the grid and whose faces cut the organ."""
    return next(iter(scans_of(scan, spec).values()))


def normalize_intensity(values: np.ndarray, spec: SegmenterSpec) -> np.ndarray:
    """CT: the piecewise linear map of `spec.intensity_knots`, clipped at both ends; MRI:
    z-scored over the foreground (`models.contract.standardize_foreground`)."""
    if spec.intensity_knots is None:
        return standardize_foreground(values)
    xs, ys = zip(*spec.intensity_knots, strict=True)
    return np.interp(values, xs, ys).astype(np.float32)


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
    foreground = volume.array > FOREGROUND_THRESHOLD[spec.kind]
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
    fine = spec.stage("fine")
    organ_xyz = from_tensor_layout(organ)
    lo, hi = _index_box(organ_xyz)
    room_mm = np.asarray(fine.max_shape) * np.asarray(fine.spacing_mm) - 2 * fine.margin_mm
    room = np.maximum((room_mm / np.asarray(grid.spacing)).astype(int), 1)  # voxels of `grid`
    for axis in np.flatnonzero(hi - lo + 1 > room):
        profile = organ_xyz.sum(axis=tuple(a for a in range(3) if a != axis))
        start = int(np.argmax(np.convolve(profile, np.ones(room[axis]), mode="valid")))
        lo[axis], hi[axis] = start, start + room[axis] - 1
    low, high = _world_box(grid.affine, lo, hi)
    return box_grid(low, high, fine)


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


def segmenter_input(scan: Scan, spec: SegmenterSpec, grid: Grid | None = None) -> SegmenterInput:
    """The images on `grid` (default: the coarse stage's over the reference image), one
    channel per modality of the spec (zeros where one is missing), intensities mapped."""
    scans = scans_of(scan, spec)
    reference = next(iter(scans.values()))
    grid = grid if grid is not None else coarse_grid(reference, spec)
    # Sampled up to the scan's faces: in the outer half voxel of the scan, trilinear sampling
    # would blend the last slice with the air beyond, and an organ the scan cuts would fade
    # before the face, where `summarize` looks for the cut; so the edge is extended
    # ("nearest", no padded copy of the scan), and everything beyond the faces set to air.
    image = np.zeros((spec.channels, *grid.shape[::-1]), dtype=np.float32)
    scanned = scanned_voxels(reference, grid)
    for channel, name in enumerate(spec.modalities):
        if name not in scans:
            continue
        volume = scans[name]
        on_grid = to_tensor_layout(resample(volume.array, volume.affine, grid, order=1, mode="nearest"))
        inside = scanned if volume is reference else scanned_voxels(volume, grid)
        on_grid[~inside] = BACKGROUND[spec.kind]
        image[channel] = normalize_intensity(on_grid, spec)
    reference_channel = spec.modalities.index(next(iter(scans)))
    return SegmenterInput(image, scanned, grid, reference_channel, spec.kind)


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
    """Softmax probabilities (L, D, H, W) float32 of `image` (channels, D, H, W), window by
    window.

    `predict` maps a batch of windows (N, channels, *roi) to logits (N, L, *roi): a PyTorch
    network in training, an ONNX Runtime session when serving. Windows overlap by `overlap`
    and are blended with Gaussian weights (MONAI's `sliding_window_inference`).
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
    """(D, H, W) uint8 label indices: the argmax, cleaned.

    What label 1 bounds (the organ; the whole tumour) is one piece: its largest 26-connected
    component is kept, its holes filled with label 1 (a lesion inside the liver is part of
    it), and nothing outside it. Components of the last label (the lesion; the enhancing
    tumour) under `spec.min_lesion_ml` are specks: they take the label before it.
    """
    labels = np.argmax(probabilities, axis=0).astype(np.uint8)
    whole = ndimage.binary_fill_holes(_largest_component(labels > 0))
    labels = np.where(whole, np.maximum(labels, 1), 0).astype(np.uint8)
    last = spec.num_labels - 1
    components, count = ndimage.label(labels == last, structure=_CONNECTED)
    if count:
        voxel_ml = float(np.prod(grid.spacing)) / 1000.0
        sizes = np.bincount(components.ravel())[1:] * voxel_ml
        specks = np.isin(components, np.flatnonzero(sizes < spec.min_lesion_ml) + 1)
        labels[specks] = last - 1
    return labels


@dataclass(frozen=True)
class Segmentation:
    """A scan segmented.

    overview: the scan on the coarse grid (what pictures of the case show).
    input: the scan on the grid of the labels (the fine one; the coarse one when no organ
    was found or the task has one grid), with the probabilities (L, D, H, W) and cleaned
    label indices (D, H, W) there.
    summary: what the labels say (`summarize`).
    """

    overview: SegmenterInput
    input: SegmenterInput
    probabilities: np.ndarray
    labels: np.ndarray
    summary: MaskSummary
    spec: SegmenterSpec

    @property
    def grid(self) -> Grid:
        return self.input.grid

    def as_volume(self) -> Volume:
        """The labels as a `Volume` (``[x, y, z]``) of mask values (BraTS' 1, 2, 4), the form
        a mask takes everywhere else."""
        return Volume(from_tensor_layout(self.spec.label_values()[self.labels]), self.input.grid.affine)

    def labels_ml(self) -> dict[str, float]:
        """Each label's volume (`labels_ml`)."""
        return labels_ml(self.labels, self.grid, self.spec)


def labels_ml(labels: np.ndarray, grid: Grid, spec: SegmenterSpec) -> dict[str, float]:
    """Each label's volume (ml) in a (D, H, W) map of label indices on `grid`, background
    left out: BraTS' edema, necrotic core and enhancing tumour; HCC's liver and lesion."""
    voxel_ml = float(np.prod(grid.spacing)) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=spec.num_labels)
    return {name: float(counts[k]) * voxel_ml for k, name in enumerate(spec.labels) if k}


def segment(predictors: Mapping[StageName, Predictor], scan: Scan, spec: SegmenterSpec) -> Segmentation:
    """The cascade of the module notes on one scan: coarse, then fine over the organ found
    (a task with one grid stops after the coarse stage).

    The fine stage's organ is kept inside the coarse one (one coarse voxel around it), so a
    neighbour the fine window shows (the spleen, the heart) cannot become the organ.
    """
    overview = segmenter_input(scan, spec)
    coarse = only_scanned(sliding_window(predictors["coarse"], overview.image, spec.coarse), overview.scanned)
    if spec.fine is None:
        coarse = weigh_lesion(coarse, spec.lesion_threshold)
    coarse_labels = labels_from_probabilities(coarse, spec, overview.grid)
    if spec.fine is None or not coarse_labels.any():
        return _segmentation(spec, overview, overview, coarse, coarse_labels, scan)
    fine_input = segmenter_input(scan, spec, fine_grid(coarse_labels > 0, overview.grid, spec))
    probabilities = weigh_lesion(
        sliding_window(predictors["fine"], fine_input.image, spec.fine), spec.lesion_threshold
    )
    allowed = ndimage.binary_dilation(coarse_labels > 0, _CONNECTED)
    inside = mask_on_grid(
        Volume(from_tensor_layout(allowed.astype(np.uint8)), overview.grid.affine), fine_input.grid
    )
    probabilities = only_scanned(probabilities, (inside > 0) & fine_input.scanned)
    labels = labels_from_probabilities(probabilities, spec, fine_input.grid)
    return _segmentation(spec, overview, fine_input, probabilities, labels, scan)


def _segmentation(
    spec: SegmenterSpec,
    overview: SegmenterInput,
    on: SegmenterInput,
    probabilities: np.ndarray,
    labels: np.ndarray,
    scan: Scan,
) -> Segmentation:
    # Without an organ, the lesion is everything labelled (the whole tumour).
    summarized = labels if spec.has_organ else (labels > 0).astype(np.uint8)
    summary = summarize(summarized, on.grid, reference_scan(scan, spec), organ_labelled=spec.has_organ)
    return Segmentation(overview, on, probabilities, labels, summary, spec)


def labels_on_grid(
    probabilities: np.ndarray, labels: np.ndarray, grid: Grid, target: Grid, slab: int = 32
) -> np.ndarray:
    """The cleaned label indices of `grid` on another grid (the scan's own), ``[x, y, z]``
    uint8.

    Nearest sampling would give the scan blocks of the segmenter's 3 mm voxels. Instead each
    nested region (label k or above: the organ, then the lesion; the whole tumour, the core,
    the enhancing tumour), its probability zeroed beyond what `labels_from_probabilities`
    kept (and one voxel around it), is sampled trilinearly and cut at one half: boundaries
    as smooth as the network's own. The target is done `slab` slices at a time, so a
    512 x 512 x 600 scan never holds more than a few float slabs.
    """
    regions = []
    for k in range(1, len(probabilities)):
        kept = ndimage.binary_dilation(labels >= k, _CONNECTED)
        regions.append(
            from_tensor_layout(np.where(kept, probabilities[k:].sum(axis=0), 0.0).astype(np.float32))
        )
    out = np.zeros(target.shape, dtype=np.uint8)
    for start in range(0, target.shape[2], slab):
        stop = min(start + slab, target.shape[2])
        affine = target.affine.copy()
        affine[:3, 3] = target.affine[:3, :3] @ np.array([0.0, 0.0, start]) + target.affine[:3, 3]
        part = Grid(shape=(target.shape[0], target.shape[1], stop - start), affine=affine)
        inside = np.ones(part.shape, dtype=bool)
        block = np.zeros(part.shape, dtype=np.uint8)
        for k, region in enumerate(regions, start=1):
            inside &= resample(region, grid.affine, part, order=1) >= 0.5
            block[inside] = k
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
