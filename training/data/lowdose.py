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

from models.contract import Grid, Volume

# Linear attenuation of water at about 70 keV, per millimetre.
MU_WATER = 0.0195
# Full-dose photons per detector bin and view. With the default number of views this gives
# about 10-15 HU noise in the liver of an adult abdomen on 3 mm voxels, as in routine CT.
DEFAULT_I0 = 1.5e6
DEFAULT_N_ANGLES = 90
# Widest axial field (pixels) simulated at its own resolution; see `acquisition_slab`.
MAX_SLAB_PIXELS = 320


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


def acquisition_slab(ct: Volume, grid: Grid) -> Volume:
    """The CT as the scanner reconstructed it, in the slices `grid` reaches: where dose is reduced.

    Quantum noise belongs to the acquisition. Its size depends on the reconstructed pixels
    (finer pixels, more noise: simulated on the lesion grid's 2 mm voxels instead of the
    synthetic CT's 3 mm ones, the noise came out 2.3 times too large) and on the attenuation
    along whole rays through the body (a 96 mm crop alone would get a fraction of it). So the
    dose is reduced on the CT's own pixels, over its whole axial field, in the slices the grid
    needs (one more on each side for interpolation), and only then resampled onto the grid,
    as a low-dose scan sent to the service is.

    The voxel axis nearest world S becomes the last (`reduce_dose` works on axial ``x, y``
    planes). A field wider than `MAX_SLAB_PIXELS` (512-pixel clinical CT: a projector of
    hundreds of MB, seconds per item) is first averaged in-plane over blocks of pixels: its
    noise is then that of a reconstruction on those coarser pixels, less than the scan's own.
    """
    array, affine = np.asarray(ct.array, dtype=np.float32), ct.affine
    axis_of_s = int(np.argmax(np.abs(affine[2, :3]) / np.linalg.norm(affine[:3, :3], axis=0)))
    order = [a for a in range(3) if a != axis_of_s] + [axis_of_s]
    array = array.transpose(order)
    affine = affine.copy()
    affine[:, :3] = affine[:, order]

    nx, ny, nz = array.shape
    centre = (affine @ [(nx - 1) / 2, (ny - 1) / 2, 0.0, 1.0])[2]
    z_of_slice = centre + affine[2, 2] * np.arange(nz)
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in grid.shape], [1], indexing="ij")).reshape(4, -1)
    z_grid = (grid.affine @ corners)[2]
    margin = abs(affine[2, 2])
    needed = np.flatnonzero((z_of_slice >= z_grid.min() - margin) & (z_of_slice <= z_grid.max() + margin))
    if needed.size == 0:  # the grid lies beyond the scan: the slice nearest it
        needed = np.array([int(np.argmin(np.abs(z_of_slice - z_grid.mean())))])
    first, last = int(needed.min()), int(needed.max())
    array = array[:, :, first : last + 1]

    block = int(np.ceil(max(nx, ny) / MAX_SLAB_PIXELS))
    if block > 1:
        bx, by = nx // block, ny // block
        array = array[: bx * block, : by * block].reshape(bx, block, by, block, -1).mean(axis=(1, 3))
    origin = affine @ [(block - 1) / 2, (block - 1) / 2, first, 1.0]
    affine[:3, :2] *= block
    affine[:3, 3] = origin[:3]
    return Volume(np.ascontiguousarray(array, dtype=np.float32), affine)


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
