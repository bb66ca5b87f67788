"""Low-dose CT simulation: Poisson noise on detector counts, reconstructed by filtered back-projection.

For every axial slice (the ``x, y`` plane of an ``[x, y, z]`` volume):

1. HU become linear attenuation, ``mu = MU_WATER * (1 + HU / 1000)`` (air and below -> 0).
2. A parallel-beam projector gives line integrals ``p`` (a sparse system matrix, built once
   per slice geometry and cached, applied to every slice at once as one sparse matmul).
3. Detector counts are drawn as ``I = Poisson(I0 * dose * exp(-p))`` and turned back into
   noisy line integrals ``p_noisy = -log(max(I, 1) / (I0 * dose))``.
4. The sinogram error ``p_noisy - p`` is ramp-filtered and back-projected with the transpose of
   the projector (filtered back-projection), converted to HU and added to the input.

Step 4 uses the linearity of FBP: ``FBP(p_noisy) = FBP(p) + FBP(p_noisy - p)``. Reconstructing
only the noise keeps the phantom's own sharpness (a coarse pixel-driven ``FBP(p)`` would blur
edges and add view-aliasing streaks that real scanners with ~1000 views do not show) while the
noise has the correlated texture, streaks behind bone and 1/sqrt(dose) scaling of real
low-dose CT.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.sparse as sp

from models.contract import Grid

# Linear attenuation of water at about 70 keV, per millimetre.
MU_WATER = 0.0195
# Full-dose photons per detector bin and view. With the default number of views this gives
# about 10-15 HU noise in the liver of an adult abdomen on 3 mm voxels, as in routine CT.
DEFAULT_I0 = 1.5e6
DEFAULT_N_ANGLES = 90


def hu_to_mu(hu: np.ndarray) -> np.ndarray:
    """Hounsfield units -> linear attenuation per mm; nothing attenuates less than air."""
    return np.maximum(MU_WATER * (1.0 + hu / 1000.0), 0.0)


def mu_to_hu(mu: np.ndarray) -> np.ndarray:
    """Linear attenuation per mm -> Hounsfield units."""
    return 1000.0 * (mu / MU_WATER - 1.0)


@functools.lru_cache(maxsize=8)
def system_matrix(
    shape_xy: tuple[int, int], aspect: float, n_angles: int
) -> tuple[sp.csr_matrix, sp.csr_matrix, int, float]:
    """Pixel-driven parallel-beam projector for one slice geometry, in units of the x spacing.

    `aspect` is the y spacing over the x spacing. Working in pixel units lets every voxel size
    of the same matrix and aspect share one cached matrix: line integrals scale with the x
    spacing. Returns ``(A, A_T, n_bins, bin_width)``: ``A`` maps a slice flattened in C order
    (``x`` major) to a sinogram flattened as ``[angle, bin]``; ``A_T`` is its transpose in CSR
    form (the back-projector). Each pixel's mass (area / bin width) is shared between the two
    detector bins nearest its projected centre.
    """
    nx, ny = shape_xy
    sx, sy = 1.0, float(aspect)
    bin_mm = min(sx, sy)
    x = (np.arange(nx) - (nx - 1) / 2.0) * sx
    y = (np.arange(ny) - (ny - 1) / 2.0) * sy
    half_diag = float(np.hypot(x[-1] if nx > 1 else 0.0, y[-1] if ny > 1 else 0.0))
    n_bins = 2 * int(np.ceil(half_diag / bin_mm)) + 3
    xx, yy = np.meshgrid(x, y, indexing="ij")
    xx, yy = xx.ravel(), yy.ravel()
    n_pix = nx * ny
    pixels = np.arange(n_pix)
    weight = sx * sy / bin_mm

    theta = np.arange(n_angles) * np.pi / n_angles
    rows, cols, vals = [], [], []
    for a, (c, s) in enumerate(zip(np.cos(theta), np.sin(theta), strict=True)):
        t = (xx * c + yy * s) / bin_mm + (n_bins - 1) / 2.0
        lo = np.floor(t).astype(np.int64)
        frac = t - lo
        for offset, w in ((0, 1.0 - frac), (1, frac)):
            rows.append(a * n_bins + lo + offset)
            cols.append(pixels)
            vals.append(w * weight)
    a_mat = sp.csr_matrix(
        (np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_angles * n_bins, n_pix),
    )
    return a_mat, a_mat.T.tocsr(), n_bins, bin_mm


@functools.lru_cache(maxsize=8)
def ramp_filter(n_bins: int, bin_mm: float) -> tuple[np.ndarray, int]:
    """Frequency response of the band-limited (Ram-Lak) ramp filter, padded length.

    Built from the spatial kernel (h[0] = 1/4d^2, h[odd n] = -1/(n pi d)^2) rather than a
    sampled |f|, which avoids a DC offset in the reconstruction.
    """
    padded = max(64, int(2 ** np.ceil(np.log2(2 * n_bins))))
    n = np.concatenate([np.arange(0, padded // 2 + 1), np.arange(-padded // 2 + 1, 0)])
    kernel = np.zeros(padded)
    kernel[0] = 1.0 / (4.0 * bin_mm**2)
    odd = n % 2 == 1
    kernel[odd] = -1.0 / (np.pi * n[odd] * bin_mm) ** 2
    # Convolution sum times the bin width approximates the continuous convolution.
    return np.real(np.fft.rfft(kernel)) * bin_mm, padded


def fbp_noise_slices(
    sino: np.ndarray, a_t: sp.csr_matrix, n_angles: int, n_bins: int, bin_mm: float, weight: float
) -> np.ndarray:
    """Filtered back-projection of sinograms ``[angle * bin, slice]`` -> mu ``[pixel, slice]``."""
    n_slices = sino.shape[1]
    response, padded = ramp_filter(n_bins, bin_mm)
    views = sino.reshape(n_angles, n_bins, n_slices)
    spectrum = np.fft.rfft(views, n=padded, axis=1) * response[None, :, None]
    filtered = np.fft.irfft(spectrum, n=padded, axis=1)[:, :n_bins, :]
    rows = np.ascontiguousarray(filtered, dtype=np.float32).reshape(-1, n_slices)
    # A_T carries the projector's area weight; the back-projection itself is unweighted.
    return (a_t @ rows) * (np.pi / n_angles / weight)


def simulate_low_dose(
    hu: np.ndarray,
    spacing_mm: tuple[float, ...] | np.ndarray,
    dose: float,
    rng: np.random.Generator,
    i0: float = DEFAULT_I0,
    *,
    n_angles: int = DEFAULT_N_ANGLES,
) -> np.ndarray:
    """A CT of the noise-free `hu` acquired at `dose` (fraction of the full dose).

    Args:
        hu: ``[x, y, z]`` Hounsfield units; axial slices are the ``x, y`` planes.
        spacing_mm: voxel size, at least ``(x, y)`` in millimetres.
        dose: fraction of the full dose, in (0, 1].
        rng: source of the Poisson counts.
        i0: full-dose photons per detector bin and view (sets the full-dose noise level).
        n_angles: views over 180 degrees.

    Returns:
        float32 ``[x, y, z]`` HU with the quantum noise of a `dose` acquisition.
    """
    _check_dose(dose)
    if i0 <= 0:
        raise ValueError(f"i0 must be positive, got i0={i0}")
    return _add_quantum_noise(hu, spacing_mm, i0 * dose, rng, n_angles)


def reduce_dose(
    hu_full_dose: np.ndarray,
    spacing_mm: tuple[float, ...] | np.ndarray,
    dose: float,
    rng: np.random.Generator,
    i0: float = DEFAULT_I0,
    *,
    n_angles: int = DEFAULT_N_ANGLES,
) -> np.ndarray:
    """Turn a CT that already carries full-dose noise into one at `dose` (training augmentation).

    Noise variances add, and a `dose` acquisition has ``1/dose`` times the full-dose variance,
    so the noise to insert is that of ``dose / (1 - dose)`` of the full photons. Dose 1.0
    returns the input unchanged.
    """
    _check_dose(dose)
    hu_full_dose = np.asarray(hu_full_dose, dtype=np.float32)
    if dose == 1.0:
        return hu_full_dose.copy()
    return _add_quantum_noise(hu_full_dose, spacing_mm, i0 * dose / (1.0 - dose), rng, n_angles)


def acquisition_grid(
    grid: Grid, body_low: np.ndarray, body_high: np.ndarray, multiple: int = 32
) -> tuple[Grid, tuple[slice, slice, slice]]:
    """The axial field a scanner reconstructs around `grid`, and where `grid` lies in it.

    Quantum noise comes from the attenuation along whole rays through the body. Simulated
    on a crop (the lesion grid's 96 mm cube), the rays would cross a tenth of the abdomen
    and the noise would come out a fraction of the real one (at 10 % dose, liver noise of
    19-22 HU instead of 53-74 HU on 2 mm voxels). So the crop is widened in ``x`` and ``y`` by
    whole voxels until it holds the body's box (`body_low`, `body_high`, RAS+ mm), its side
    rounded up to a `multiple` of voxels (few distinct shapes: the projectors are cached per
    shape). A grid holding the body already is returned as it is. Slices (``z``) are never
    added: each axial slice is simulated on its own.
    """
    spacing = np.array(grid.spacing)
    if not np.allclose(grid.affine[:3, :3], np.diag(spacing)):
        return grid, (slice(None), slice(None), slice(None))  # only RAS-aligned model grids widen
    origin = grid.affine[:3, 3]
    shape = np.array(grid.shape)
    # Whole voxels needed on each side (the tolerance keeps an exact fit from adding one).
    before = np.maximum(np.ceil((origin - spacing / 2 - body_low) / spacing - 1e-6), 0).astype(int)
    end = origin + (shape - 0.5) * spacing
    after = np.maximum(np.ceil((body_high - end) / spacing - 1e-6), 0).astype(int)
    before[2] = after[2] = 0
    for axis in (0, 1):
        if before[axis] or after[axis]:
            extra = -(shape[axis] + before[axis] + after[axis]) % multiple
            before[axis] += extra // 2
            after[axis] += extra - extra // 2
    affine = grid.affine.copy()
    affine[:3, 3] = origin - before * spacing
    wide = Grid(tuple(int(n) for n in shape + before + after), affine)  # type: ignore[arg-type]
    inside = tuple(slice(int(b), int(b + n)) for b, n in zip(before, shape, strict=True))
    return wide, inside  # type: ignore[return-value]


def _check_dose(dose: float) -> None:
    if not (np.isfinite(dose) and 0.0 < dose <= 1.0):
        raise ValueError(f"dose must be a fraction of the full dose in (0, 1], got dose={dose}")


def _add_quantum_noise(
    hu: np.ndarray,
    spacing_mm: tuple[float, ...] | np.ndarray,
    photons: float,
    rng: np.random.Generator,
    n_angles: int,
) -> np.ndarray:
    """`hu` plus the FBP-reconstructed Poisson noise of `photons` per detector bin and view."""
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"hu must be a 3D [x, y, z] array, got shape {hu.shape}")
    nx, ny, nz = hu.shape
    sx, sy = (float(s) for s in np.asarray(spacing_mm)[:2])
    aspect = round(sy / sx, 4)
    a_mat, a_t, n_bins, bin_width = system_matrix((nx, ny), aspect, n_angles)

    mu = hu_to_mu(hu.astype(np.float32, copy=False)).reshape(nx * ny, nz)
    p = (a_mat @ mu) * sx  # pixel units -> mm
    counts = rng.poisson(photons * np.exp(-p, dtype=np.float64))
    p_noisy = -np.log(np.maximum(counts, 1) / photons)
    # Reconstructed in pixel units: attenuation per pixel width, hence the division by sx.
    noise_mu = (
        fbp_noise_slices(
            (p_noisy - p).astype(np.float32), a_t, n_angles, n_bins, bin_width, aspect / bin_width
        )
        / sx
    )
    noisy = hu.astype(np.float32) + (1000.0 / MU_WATER) * noise_mu.reshape(nx, ny, nz)
    return noisy.astype(np.float32, copy=False)
