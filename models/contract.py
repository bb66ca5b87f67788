"""The input contract: how scans of any geometry become the tensor a model sees.

Training and serving both call `prepare_input`, so a served tensor is built exactly as a
trained one. The steps:

1. Every modality arrives as a `Volume`: a 3D array indexed ``[i, j, k]`` and a 4x4 affine
   that maps voxel indices to RAS+ millimetres (the NIfTI convention; DICOM's LPS is
   converted by the reader).
2. A model grid is laid out in RAS+ with the task's spacing and shape, centred on the
   centre of the reference modality's foreground (body for CT, head for MRI), so no mask
   is needed at serving time; or, on a task's ``lesion`` grid, on the lesion of a mask
   (`lesion_center`), which must then be given.
3. Each present modality is resampled onto that grid through its own affine (PET on its
   coarser grid lands on the same voxels as CT), trilinear, with the modality's background
   value outside its field of view.
4. Intensities are normalised per kind: CT windowed to ``task.ct_window_hu`` and scaled to
   [0, 1]; PET in SUV divided by ``task.pet_suv_scale`` (about liver uptake, so lesions read
   as 1-4, on the scale of the CT channel) and clipped to [0, 4]; MRI z-scored inside the
   non-zero foreground.
5. Missing modalities become zero channels and a 0 in ``present``.

Array layouts: a `Volume` and a `Grid` are indexed ``[x, y, z]``; tensors are ``[D, H, W]``
= ``[z, y, x]``. `to_tensor_layout` and `from_tensor_layout` convert between them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from models.tasks import ModalityKind, TaskSpec

# Value a modality takes where nothing was imaged, in its own units.
BACKGROUND: dict[ModalityKind, float] = {"ct": -1024.0, "pet": 0.0, "mri": 0.0}
# Voxels above this (in the modality's units) count as foreground for centring the grid.
FOREGROUND_THRESHOLD: dict[ModalityKind, float] = {"ct": -500.0, "pet": 0.05, "mri": 1e-6}
# Voxel sides no scan of a person has: clinical reconstructions run from about 0.25 mm
# (thin-slice CT) to 10 mm (thick MR slices), five times either way. Outside, the header is
# wrong (metres read as millimetres, a lost pixdim), and the image would be resampled to a
# smear or a speck, a prediction from nothing.
PLAUSIBLE_VOXEL_MM = (0.05, 50.0)


class ContractError(ValueError):
    """An input that cannot be brought onto the model grid; `field` names the culprit.

    Raised as one of the subclasses below, each a kind of mistake a client can act on; the
    service maps each class (never the message) to its problem type (`app.errors`)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class GeometryError(ContractError):
    """Voxels that cannot be placed in space: not 3D, empty, a singular or non-finite affine,
    a voxel size no scan has."""


class NonFiniteError(ContractError):
    """NaN or infinite values in an image or a mask."""


class UnknownModalityError(ContractError):
    """A modality the task does not have."""


class MissingModalityError(ContractError):
    """A subset of modalities the task does not allow: a required one, or every one, missing."""


class MissingMaskError(ContractError):
    """A lesion-grid model given no lesion mask."""


class MaskError(ContractError):
    """A lesion mask that cannot place the grid: no lesion voxel, or a lesion outside the image."""


class NotAVolumeError(ContractError):
    """A slice, a handful of slices, or a slab too thin to hold the organ: nothing to grade."""

    def __init__(self, field: str, reason: str, slices: int, extent_mm: float) -> None:
        super().__init__(field, reason)
        self.slices = slices
        self.extent_mm = extent_mm


# Fewer voxels than this along an axis is a slice or a handful of them, whatever their size.
MIN_SLICES = 8


@dataclass(frozen=True)
class Volume:
    """A 3D scalar image: ``array[i, j, k]`` with ``affine @ [i, j, k, 1]`` in RAS+ mm."""

    array: np.ndarray
    affine: np.ndarray

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise GeometryError("volume", f"expected a 3D array, got shape {self.array.shape}")
        if min(self.array.shape) < 1:
            raise GeometryError("volume", f"empty array of shape {self.array.shape}")
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise GeometryError("affine", "expected a finite 4x4 matrix")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
            raise GeometryError("affine", "singular: voxel axes are degenerate")
        object.__setattr__(self, "affine", affine)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along i, j, k in millimetres."""
        x, y, z = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(x), float(y), float(z)

    def world_bounds(self, where: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Lowest and highest RAS+ corner (mm) of the box holding every voxel (or every voxel
        `where` is True, which must hold one), edges included."""
        if where is None:
            return _world_box(self.affine, np.zeros(3), np.array(self.array.shape) - 1.0)
        return _world_box(self.affine, *_index_box(where))


@dataclass(frozen=True)
class Grid:
    """A voxel grid: ``shape`` is (x, y, z) voxel counts, ``affine`` maps indices to RAS+."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        x, y, z = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(x), float(y), float(z)

    def with_shape(self, shape: tuple[int, int, int]) -> Grid:
        """The grid covering the same field of view with `shape` voxels (for coarser maps)."""
        factors = np.array(self.shape, dtype=np.float64) / np.array(shape, dtype=np.float64)
        affine = self.affine.copy()
        affine[:3, :3] = self.affine[:3, :3] * factors
        # Voxel centres move: the first voxel of the coarse grid is centred on the block
        # of fine voxels it covers.
        affine[:3, 3] = self.affine[:3, :3] @ ((factors - 1.0) / 2.0) + self.affine[:3, 3]
        return Grid(shape=tuple(int(s) for s in shape), affine=affine)  # type: ignore[arg-type]

    def padded(self, voxels: int = 1) -> Grid:
        """The grid grown by `voxels` on every side (same spacing and orientation)."""
        affine = self.affine.copy()
        affine[:3, 3] = self.affine[:3, :3] @ np.full(3, -float(voxels)) + self.affine[:3, 3]
        return Grid(shape=tuple(s + 2 * voxels for s in self.shape), affine=affine)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ModelInput:
    """What a model is fed for one case, and where its voxels lie."""

    image: np.ndarray  # float32 [M, D, H, W]
    present: np.ndarray  # float32 [M], 1 where the modality was given
    grid: Grid
    used: tuple[str, ...]
    missing: tuple[str, ...]


def to_tensor_layout(array_xyz: np.ndarray) -> np.ndarray:
    """``[x, y, z]`` -> ``[D, H, W]`` (= ``[z, y, x]``)."""
    return np.ascontiguousarray(np.transpose(array_xyz, (2, 1, 0)))


def from_tensor_layout(array_dhw: np.ndarray) -> np.ndarray:
    """``[D, H, W]`` -> ``[x, y, z]``."""
    return np.ascontiguousarray(np.transpose(array_dhw, (2, 1, 0)))


def _world_box(affine: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest RAS+ corner (mm) of the voxels ``lo..hi`` (indices), edges included."""
    edges = [(a - 0.5, b + 0.5) for a, b in zip(lo, hi, strict=True)]
    corners = np.array(np.meshgrid(*edges, indexing="ij")).reshape(3, -1)
    world = affine[:3, :3] @ corners + affine[:3, 3:]
    return world.min(axis=1), world.max(axis=1)


def _index_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest index of `mask`'s set voxels along each axis (it must have one).

    From the mask's projection on each axis: no index list of every voxel is built.
    """
    lo, hi = np.zeros(3, dtype=np.intp), np.zeros(3, dtype=np.intp)
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        lo[axis], hi[axis] = hit[0], hit[-1]
    return lo, hi


def foreground_bounds(volume: Volume, kind: ModalityKind) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest RAS+ corner (mm) of the foreground's box (the volume's if none)."""
    foreground = volume.array > FOREGROUND_THRESHOLD[kind]
    if not foreground.any():
        return volume.world_bounds()
    return _world_box(volume.affine, *_index_box(foreground))


def foreground_center(volume: Volume, kind: ModalityKind) -> np.ndarray:
    """RAS+ centre (mm) of the bounding box of the foreground, or of the volume if none."""
    foreground = volume.array > FOREGROUND_THRESHOLD[kind]
    if foreground.any():
        lo, hi = _index_box(foreground)
    else:
        lo = np.zeros(3)
        hi = np.array(volume.array.shape, dtype=np.float64) - 1.0
    center_ijk = np.append((lo + hi) / 2.0, 1.0)
    return (volume.affine @ center_ijk)[:3]


def lesion_center(mask: Volume, labels: Literal["highest", "nonzero"] = "highest") -> np.ndarray:
    """RAS+ centroid (mm) of the largest connected lesion of a label map.

    The lesion is the mask's highest label present (``labels="highest"``: the tumour of a
    liver 1 / tumour 2 map, or a binary mask) or every non-zero label (``"nonzero"``). Of
    several lesions the largest (26-connected) is the one graded: satellites and a second
    primary would otherwise pull the centre between them.

    Raises:
        MaskError: the mask has no lesion voxel.
    """
    array = mask.array
    if labels == "highest":
        top = float(array.max()) if array.size else 0.0
        lesion = array == top if top > 0 else np.zeros(array.shape, dtype=bool)
    else:
        lesion = array > 0
    if not lesion.any():
        raise MaskError("mask", "has no lesion voxel to centre the model's grid on")
    # Label only the lesion's bounding box: masks are mostly background.
    lo, hi = _index_box(lesion)
    box = tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi, strict=True))
    components, count = ndimage.label(lesion[box], structure=np.ones((3, 3, 3), dtype=bool))
    largest = int(np.argmax(np.bincount(components.ravel())[1:])) + 1 if count > 1 else 1
    index = np.argwhere(components == largest).mean(axis=0) + lo
    return (mask.affine @ np.append(index, 1.0))[:3]


def model_grid(task: TaskSpec, center_mm: np.ndarray) -> Grid:
    """The task's RAS+-aligned grid centred on `center_mm`."""
    shape_xyz = (task.shape[2], task.shape[1], task.shape[0])
    spacing = np.array(task.spacing_mm, dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    affine[:3, 3] = np.asarray(center_mm, dtype=np.float64) - spacing * (np.array(shape_xyz) - 1) / 2.0
    return Grid(shape=shape_xyz, affine=affine)


def _axis_permutation(matrix: np.ndarray) -> list[int] | None:
    """For each grid axis the one source axis it moves along, if `matrix` is a scaled permutation.

    True of every grid-aligned scan (any flips or axis order), the usual case: the model
    grid is RAS-aligned and so are nearly all NIfTI and axial DICOM volumes.
    """
    nonzero = matrix != 0.0
    if not (np.all(nonzero.sum(axis=0) == 1) and np.all(nonzero.sum(axis=1) == 1)):
        return None
    return [int(np.flatnonzero(nonzero[:, axis])[0]) for axis in range(3)]


_SLAB_ELEMENTS = 1 << 22
"""Values of a pass computed at once: 16 MB float32 temporaries (smaller slabs cost time:
1 << 20 made a 512 x 512 x 300 resampling 1.7x slower)."""


def _lerp_along(
    array: np.ndarray, axis: int, low: np.ndarray, high: np.ndarray, weight: np.ndarray
) -> np.ndarray:
    """Linear interpolation of `array` along `axis` between the samples `low` and `high` with
    `weight`'s fractions, in slabs along the largest other axis; float32 (float64 for a
    float64 `array`)."""
    shape = list(array.shape)
    shape[axis] = len(low)
    out = np.empty(shape, dtype=weight.dtype)
    slab_axis = max((a for a in range(3) if a != axis), key=lambda a: shape[a])
    # Sized on the larger of the slab's source and output: `np.take` copies a strided slab.
    step = max(1, _SLAB_ELEMENTS * shape[slab_axis] // max(out.size, array.size, 1))
    weights = weight.reshape([-1 if a == axis else 1 for a in range(3)])
    for start in range(0, shape[slab_axis], step):
        slab: list[slice] = [slice(None)] * 3
        slab[slab_axis] = slice(start, start + step)
        part = array[tuple(slab)]
        below = np.take(part, low, axis=axis).astype(weight.dtype, copy=False)
        above = np.take(part, high, axis=axis).astype(weight.dtype, copy=False)
        above -= below
        above *= weights
        below += above
        out[tuple(slab)] = below
    return out


def _resample_separable(
    array: np.ndarray,
    matrix: np.ndarray,
    offset: np.ndarray,
    shape: tuple[int, ...],
    axes: list[int],
    cval: float,
    mode: Literal["constant", "nearest"] = "constant",
) -> np.ndarray:
    """Trilinear sampling as three 1D linear interpolations (exact for a scaled permutation).

    Same coordinates and edge rules as `ndimage.affine_transform(order=1, mode=mode,
    prefilter=False)`: a sample outside ``[0, n - 1]`` along any axis takes `cval`
    ("constant") or the edge's value ("nearest"). Values agree with it to float32 rounding
    (it interpolates in float64); about 10x faster. Each pass works slab by slab
    (`_lerp_along`): an integer source is converted to float a slab at a time, never whole,
    and a pass holds its output and one slab's temporaries, not three arrays of its size.
    """
    if array.flags.f_contiguous and not array.flags.c_contiguous:
        # NIfTI arrays come Fortran-ordered: work on the C-ordered transpose (source axes
        # reversed) so every pass reads memory in order; ~7x faster than striding.
        array, matrix, offset = array.T, matrix[::-1], offset[::-1]
        axes = [2 - axis for axis in axes]
    dtype = np.float64 if array.dtype == np.float64 else np.float32
    out = array
    outside: list[tuple[int, np.ndarray]] = []
    # Shrink first: the axis with the largest reduction is interpolated first.
    for grid_axis in sorted(range(3), key=lambda a: shape[a] / array.shape[axes[a]]):
        source_axis = axes[grid_axis]
        n = array.shape[source_axis]
        # The same double-precision coordinates as affine_transform computes.
        coords = (
            matrix[source_axis, grid_axis] * np.arange(shape[grid_axis], dtype=np.float64)
            + offset[source_axis]
        )
        inside = (coords >= 0.0) & (coords <= n - 1)
        clipped = np.clip(coords, 0.0, n - 1)
        low = np.minimum(np.floor(clipped).astype(np.intp), max(n - 2, 0))
        high = np.minimum(low + 1, n - 1)
        weight = (clipped - low).astype(dtype)
        out = _lerp_along(out, source_axis, low, high, weight)
        if mode == "constant":
            outside.append((source_axis, np.flatnonzero(~inside)))
    for source_axis, index in outside:
        if index.size:
            selector: list[slice | np.ndarray] = [slice(None)] * 3
            selector[source_axis] = index
            out[tuple(selector)] = cval
    return np.transpose(out, axes)


def resample(
    array: np.ndarray,
    affine: np.ndarray,
    grid: Grid,
    *,
    order: int = 1,
    cval: float = 0.0,
    mode: Literal["constant", "nearest"] = "constant",
) -> np.ndarray:
    """Sample `array` (indexed by `affine`) at the voxel centres of `grid`; float32 ``[x,y,z]``.

    `order` 1 is trilinear (images), 0 nearest (label maps). Beyond the array's outer voxel
    centres a sample is `cval` ("constant") or the outer voxel's value ("nearest"). Trilinear
    sampling of a volume whose axes are parallel to the grid's (any flips or axis order) is
    done separably; oblique volumes and nearest sampling go through `ndimage.affine_transform`.
    """
    # grid index -> world -> source index, one affine map since both are linear.
    grid_to_source = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ grid.affine
    matrix, offset = grid_to_source[:3, :3], grid_to_source[:3, 3]
    axes = _axis_permutation(matrix) if order == 1 else None
    if axes is not None:
        out = _resample_separable(array, matrix, offset, grid.shape, axes, cval, mode)
    else:
        source = array if array.dtype in (np.float32, np.float64) else array.astype(np.float32)
        out = ndimage.affine_transform(
            source,
            matrix,
            offset=offset,
            output_shape=grid.shape,
            order=order,
            mode=mode,
            cval=cval,
            prefilter=False,
        )
    return np.ascontiguousarray(out, dtype=np.float32)


def normalize(array: np.ndarray, kind: ModalityKind, task: TaskSpec) -> np.ndarray:
    """Map a resampled modality in its own units onto the scale the networks expect."""
    if kind == "ct":
        lo, hi = task.ct_window_hu
        return ((np.clip(array, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    if kind == "pet":
        return np.clip(array / task.pet_suv_scale, 0.0, 4.0).astype(np.float32)
    return standardize_foreground(array)


def standardize_foreground(array: np.ndarray) -> np.ndarray:
    """MRI in scanner units: z-scored over its foreground (clipped at 5 SD), 0 elsewhere."""
    foreground = array > FOREGROUND_THRESHOLD["mri"]
    if not foreground.any():
        return np.zeros_like(array, dtype=np.float32)
    values = array[foreground]
    z = (array - values.mean()) / max(float(values.std()), 1e-6)
    return np.where(foreground, np.clip(z, -5.0, 5.0), 0.0).astype(np.float32)


def all_finite(array: np.ndarray) -> bool:
    """Whether no value is NaN or infinite, without a boolean copy of a real-size volume
    (the minimum and maximum propagate NaN and show infinities); integers always are."""
    if np.issubdtype(array.dtype, np.integer):
        return True
    return bool(np.isfinite(array.min()) and np.isfinite(array.max()))


def reference_modality(task: TaskSpec, available: set[str]) -> str:
    """The modality whose foreground centres the grid: the first required, else first given."""
    for name in task.required + task.modalities:
        if name in available:
            return name
    raise MissingModalityError("modalities", f"none of {list(task.modalities)} was given")


def prepare_input(
    volumes: Mapping[str, Volume],
    task: TaskSpec,
    lesion: Volume | None = None,
) -> ModelInput:
    """Bring the given modalities onto the task grid, normalised, in channel order.

    `lesion` is a label map locating the lesion (see `lesion_center`); a task on the
    ``lesion`` grid needs it, the ``whole`` grid does not look at it.

    Raises:
        UnknownModalityError, MissingModalityError (a subset the task does not allow),
        NonFiniteError, GeometryError (a voxel size outside `PLAUSIBLE_VOXEL_MM`), and on the
        lesion grid MissingMaskError or MaskError (no lesion voxel, or one outside the image).
    """
    unknown = sorted(set(volumes) - set(task.modalities))
    if unknown:
        raise UnknownModalityError(
            unknown[0], f"not a modality of task {task.name!r} (expected {list(task.modalities)})"
        )
    given = set(volumes)
    if not task.is_allowed(given):
        needed = [m for m in task.required if m not in given] or list(task.modalities)
        raise MissingModalityError(
            needed[0], f"task {task.name!r} needs {needed[0]!r}; got {sorted(given) or 'nothing'}"
        )
    for name, volume in volumes.items():
        if not all_finite(volume.array):
            raise NonFiniteError(name, "contains NaN or infinite voxel values")
        _check_voxel_size(name, volume)
    if lesion is not None:
        _check_voxel_size("mask", lesion)

    reference = reference_modality(task, given)
    if task.grid == "lesion":
        center_mm = _lesion_grid_center(lesion, volumes[reference], reference, task)
    else:
        center_mm = foreground_center(volumes[reference], task.kind_of(reference))
    grid = model_grid(task, center_mm)

    image = np.zeros((task.num_modalities, *task.shape), dtype=np.float32)
    present = np.zeros(task.num_modalities, dtype=np.float32)
    for channel, name in enumerate(task.modalities):
        if name not in volumes:
            continue
        kind = task.kind_of(name)
        volume = volumes[name]
        on_grid = resample(volume.array, volume.affine, grid, order=1, cval=BACKGROUND[kind])
        image[channel] = to_tensor_layout(normalize(on_grid, kind, task))
        present[channel] = 1.0
    used = tuple(m for m in task.modalities if m in given)
    missing = tuple(m for m in task.modalities if m not in given)
    return ModelInput(image=image, present=present, grid=grid, used=used, missing=missing)


def check_volume(name: str, volume: Volume, task: TaskSpec) -> None:
    """Refuse what is not a volume of the organ: under `MIN_SLICES` voxels along an axis, or
    a scan shorter than ``task.min_extent_mm`` along one (a single file of a series, a
    localiser, a slab that cannot hold a liver).

    Raises:
        GeometryError: a voxel size no scan has (checked first: a header in metres makes
            any scan look thin).
        NotAVolumeError: with the slice count and the extent (mm) of the shortest axis.
    """
    _check_voxel_size(name, volume)
    counts = np.asarray(volume.array.shape)
    extents = counts * np.asarray(volume.spacing)
    axis = int(np.argmin(extents))
    slices, extent = int(counts.min()), float(extents[axis])
    if slices >= MIN_SLICES and extent >= task.min_extent_mm:
        return
    raise NotAVolumeError(
        name,
        f"{slices} slice{'s' if slices != 1 else ''} covering {extent:.0f} mm along the shortest axis: "
        f"not a volume; a {task.name!r} study needs at least {MIN_SLICES} slices covering "
        f"{task.min_extent_mm:.0f} mm (send the whole series)",
        slices,
        extent,
    )


def _check_voxel_size(name: str, volume: Volume) -> None:
    low, high = PLAUSIBLE_VOXEL_MM
    spacing = volume.spacing
    if not low <= min(spacing) <= max(spacing) <= high:
        raise GeometryError(
            name,
            f"voxel size {tuple(float(f'{s:.3g}') for s in spacing)} mm is not a scan's "
            f"(each side must be {low}-{high} mm): check the header's spacing and units",
        )


def _lesion_grid_center(lesion: Volume | None, reference: Volume, name: str, task: TaskSpec) -> np.ndarray:
    """The lesion's centre, checked to lie inside the reference image."""
    if lesion is None:
        raise MissingMaskError(
            "mask", f"this {task.name!r} model reads a crop centred on the lesion and needs the lesion's mask"
        )
    if not all_finite(lesion.array):
        raise NonFiniteError("mask", "contains NaN or infinite values")
    center = lesion_center(lesion, task.lesion_labels)
    low, high = reference.world_bounds()
    if np.any(center < low) or np.any(center > high):
        raise MaskError(
            "mask", f"the lesion's centre {np.round(center, 1).tolist()} mm lies outside the {name} image"
        )
    return center


def grid_of(volume: Volume) -> Grid:
    """The voxel grid of `volume` (its shape and affine, without the values)."""
    return Grid(shape=tuple(int(n) for n in volume.array.shape), affine=volume.affine)  # type: ignore[arg-type]


def map_to_grid(map_dhw: np.ndarray, grid: Grid, target: Grid, *, order: int = 1) -> Volume:
    """Resample a map in tensor layout covering `grid`'s field of view onto `target`'s voxels.

    Used to return attention maps on the grid and affine of the image that was sent, so
    they overlay it in any viewer.
    """
    map_xyz = from_tensor_layout(np.asarray(map_dhw, dtype=np.float32))
    source = grid.with_shape(map_xyz.shape)  # type: ignore[arg-type]
    return Volume(resample(map_xyz, source.affine, target, order=order), target.affine)
