"""How realistic a confocal image is: statistics to set against real TEM/confocal pairs.

Five numbers describe a preprocessed confocal crop (and, given the TEM, how it relates to
it):

``acf_half_width_um``
    radius (um) at which the radially averaged autocorrelation falls to 0.5: the size
    of the confocal's blobs;
``power_above_1_per_um``
    fraction of the (Hann-windowed, DC-free) power above 1 cycle/um: how much fine
    detail and noise it has;
``median_over_p99``
    median over 99th percentile of the intensities: background level against the
    brightest structures;
``best_sigma_um``, ``best_pearson_r``
    the Gaussian blur (um) of the inverted TEM that best predicts the confocal on the
    TEM grid, and that best Pearson r: how closely the confocal follows the TEM.

:data:`REAL_PAIR_RANGES` holds the ranges of these numbers on real data, and
:func:`within_real_ranges` says which statistics of a phantom fall inside them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

#: Ranges (lo, hi) of the statistics of :func:`confocal_statistics`, measured on six real
#: TEM/confocal pairs of mouse white matter kept aside for evaluation (issue 11), at
#: 14.52 px/um after preprocessing. ``power_above_1_per_um`` is a fraction of the power.
REAL_PAIR_RANGES: dict[str, tuple[float, float]] = {
    "acf_half_width_um": (0.62, 1.17),
    "power_above_1_per_um": (0.05, 0.08),
    "median_over_p99": (0.30, 0.46),
    "best_sigma_um": (0.3, 0.4),
    "best_pearson_r": (0.22, 0.63),
}

#: Default Gaussian sigmas (um) tried by :func:`best_smoothed_inverted_tem`: 0 to 1.5 by 0.05.
DEFAULT_SIGMAS_UM: tuple[float, ...] = tuple(round(float(s), 2) for s in np.arange(0.0, 1.51, 0.05))


def _as_float_2d(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image, dtype=float)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {array.shape}")
    return array


def _radial_profile(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mean of ``values`` (centred lags) over integer-radius rings, NaN for empty rings."""
    ny, nx = values.shape
    dy = np.arange(ny) - ny // 2
    dx = np.arange(nx) - nx // 2
    radius = np.rint(np.hypot(dy[:, None], dx[None, :])).astype(int)
    rings = radius[valid]
    sums = np.bincount(rings, weights=values[valid])
    counts = np.bincount(rings)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def autocorrelation(image: np.ndarray) -> np.ndarray:
    """Normalised 2-D autocorrelation of the finite pixels, without wrap-around.

    The mean of the finite pixels is subtracted; non-finite pixels are masked out, and
    each lag is the sum of products over the pixel pairs both finite divided by the number
    of such pairs (``sum(f f_shift) / sum(m m_shift)``), computed by zero-padded FFTs.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        Intensities (any units); NaN or inf marks missing pixels.

    Returns
    -------
    ndarray, shape (2 ny - 1, 2 nx - 1)
        Autocorrelation, 1 at zero lag (centre ``[ny - 1, nx - 1]``); NaN at lags where
        no pair of finite pixels overlaps, all NaN when the image has no variance.
    """
    image = _as_float_2d(image)
    mask = np.isfinite(image)
    if not mask.any():
        return np.full((2 * image.shape[0] - 1, 2 * image.shape[1] - 1), np.nan)
    centred = np.where(mask, image - image[mask].mean(), 0.0)
    weights = mask.astype(float)
    shape = [sfft.next_fast_len(2 * n - 1, real=True) for n in image.shape]

    def correlate(f: np.ndarray) -> np.ndarray:
        spectrum = sfft.rfft2(f, s=shape)
        full = sfft.irfft2(spectrum * np.conj(spectrum), s=shape)
        # put zero lag at the centre and keep lags -(n-1)..(n-1)
        ny, nx = image.shape
        full = np.roll(full, (ny - 1, nx - 1), axis=(0, 1))
        return full[: 2 * ny - 1, : 2 * nx - 1]

    products = correlate(centred)
    pairs = np.rint(correlate(weights))
    with np.errstate(invalid="ignore", divide="ignore"):
        acf = np.where(pairs > 0, products / np.maximum(pairs, 1.0), np.nan)
    zero = acf[image.shape[0] - 1, image.shape[1] - 1]
    if not zero > 0:
        return np.full_like(acf, np.nan)
    return acf / zero


def acf_half_width_um(image: np.ndarray, px_per_um: float) -> float:
    """Radius (um) at which the radially averaged autocorrelation first falls below 0.5.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        Intensities; non-finite pixels are left out (masked autocorrelation, see
        :func:`autocorrelation`).
    px_per_um : float
        Pixels per micrometre.

    Returns
    -------
    float
        Half-width in um, linearly interpolated between the integer-pixel ring radii
        that bracket 0.5; NaN if the profile never falls below 0.5 (or the image is flat).

    Notes
    -----
    White noise blurred by a Gaussian of sigma ``s`` px has the autocorrelation
    ``exp(-r**2 / (4 s**2))``, so a half-width of ``2 s sqrt(ln 2)`` px.
    """
    acf = autocorrelation(image)
    valid = np.isfinite(acf)
    # rings up to the largest radius fully inside the lag window
    ny, nx = np.asarray(image).shape
    profile = _radial_profile(np.nan_to_num(acf), valid)[: min(ny, nx)]
    below = np.flatnonzero(profile < 0.5)
    if below.size == 0 or below[0] == 0:
        return float("nan")
    k = int(below[0])
    upper, lower = profile[k - 1], profile[k]
    radius_px = (k - 1) + (upper - 0.5) / (upper - lower)
    return float(radius_px / px_per_um)


def power_fraction_above(image: np.ndarray, px_per_um: float, cycles_per_um: float = 1.0) -> float:
    """Fraction of the power at radial spatial frequencies above ``cycles_per_um``.

    The image minus the mean of its finite pixels (non-finite pixels set to that mean,
    i.e. to 0 after subtraction) is multiplied by a 2-D Hann window; of ``|FFT|**2``
    without the DC term, the fraction at radial frequency strictly above ``cycles_per_um``
    is returned.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        Intensities.
    px_per_um : float
        Pixels per micrometre (Nyquist: ``px_per_um / 2`` cycles/um per axis).
    cycles_per_um : float
        Frequency threshold, cycles per um.

    Returns
    -------
    float
        Fraction in [0, 1]; NaN when the image carries no power.
    """
    image = _as_float_2d(image)
    mask = np.isfinite(image)
    if not mask.any():
        return float("nan")
    centred = np.where(mask, image - image[mask].mean(), 0.0)
    window = np.outer(np.hanning(image.shape[0]), np.hanning(image.shape[1]))
    power = np.abs(np.fft.fft2(centred * window)) ** 2
    fy = np.fft.fftfreq(image.shape[0], d=1.0 / px_per_um)
    fx = np.fft.fftfreq(image.shape[1], d=1.0 / px_per_um)
    radial = np.hypot(fy[:, None], fx[None, :])  # cycles/um
    power[0, 0] = 0.0
    total = power.sum()
    if not total > 0:
        return float("nan")
    return float(power[radial > cycles_per_um].sum() / total)


def median_over_p99(image: np.ndarray) -> float:
    """Median of the finite pixels divided by their 99th percentile (unitless).

    Parameters
    ----------
    image : ndarray
        Intensities.

    Returns
    -------
    float
        ``median / p99``; NaN without finite pixels or when the 99th percentile is 0.
    """
    values = np.asarray(image, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan")
    p99 = np.percentile(values, 99)
    if p99 == 0:
        return float("nan")
    return float(np.median(values) / p99)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
    return float(np.dot(a, b) / den) if den > 0 else float("nan")


def best_smoothed_inverted_tem(
    tem: np.ndarray,
    confocal_on_tem_grid: np.ndarray,
    px_per_um: float,
    sigmas_um: Sequence[float] = DEFAULT_SIGMAS_UM,
) -> tuple[float, float]:
    """The Gaussian blur of the inverted TEM that correlates best with the confocal.

    For each sigma, Pearson r between ``1 - gaussian_filter(tem, sigma * px_per_um)``
    (``mode="nearest"``; sigma 0 leaves the TEM unfiltered) and the confocal, over the
    pixels where both are finite (no border is excluded).

    Parameters
    ----------
    tem : ndarray, shape (ny, nx)
        TEM intensities, float in [0, 1] (r does not depend on the scale anyway).
    confocal_on_tem_grid : ndarray, shape (ny, nx)
        The confocal resampled onto the TEM grid; NaN where it has no data.
    px_per_um : float
        Pixels per micrometre of the TEM grid.
    sigmas_um : sequence of float
        Gaussian sigmas to try, um (default 0 to 1.5 um by 0.05 um).

    Returns
    -------
    sigma_um : float
        The sigma (um) with the largest r (the first one on ties).
    pearson_r : float
        That r. Both NaN when no sigma gives a finite r.
    """
    tem = _as_float_2d(tem)
    confocal = _as_float_2d(confocal_on_tem_grid)
    if tem.shape != confocal.shape:
        raise ValueError(f"TEM {tem.shape} and confocal {confocal.shape} grids differ")
    if not np.isfinite(tem).all():
        raise ValueError("the TEM has non-finite pixels")
    valid = np.isfinite(confocal)
    target = confocal[valid]
    best_sigma, best_r = float("nan"), -np.inf
    for sigma_um in sigmas_um:
        sigma_px = float(sigma_um) * px_per_um
        smoothed = ndimage.gaussian_filter(tem, sigma_px, mode="nearest") if sigma_px > 0 else tem
        r = _pearson(1.0 - smoothed[valid], target)
        if np.isfinite(r) and r > best_r:
            best_sigma, best_r = float(sigma_um), r
    if not np.isfinite(best_r):
        return float("nan"), float("nan")
    return best_sigma, float(best_r)


def confocal_statistics(
    confocal: np.ndarray,
    px_per_um: float,
    tem: np.ndarray | None = None,
    confocal_on_tem_grid: np.ndarray | None = None,
) -> dict[str, float]:
    """The realism statistics of a preprocessed confocal crop (keys of REAL_PAIR_RANGES).

    Parameters
    ----------
    confocal : ndarray, shape (ny, nx)
        The preprocessed confocal crop (green channel).
    px_per_um : float
        Pixels per micrometre of the crop, and of the TEM grid when ``tem`` is given.
    tem : ndarray, optional
        Preprocessed TEM, float in [0, 1].
    confocal_on_tem_grid : ndarray, optional
        The confocal resampled onto the TEM grid (NaN outside its data).

    Returns
    -------
    dict
        ``acf_half_width_um`` (um), ``power_above_1_per_um`` (fraction),
        ``median_over_p99``, ``best_sigma_um`` (um) and ``best_pearson_r``; the last two
        NaN unless both ``tem`` and ``confocal_on_tem_grid`` are given.
    """
    if tem is not None and confocal_on_tem_grid is not None:
        best_sigma, best_r = best_smoothed_inverted_tem(tem, confocal_on_tem_grid, px_per_um)
    else:
        best_sigma, best_r = float("nan"), float("nan")
    return {
        "acf_half_width_um": acf_half_width_um(confocal, px_per_um),
        "power_above_1_per_um": power_fraction_above(confocal, px_per_um, 1.0),
        "median_over_p99": median_over_p99(confocal),
        "best_sigma_um": best_sigma,
        "best_pearson_r": best_r,
    }


def within_real_ranges(stats: Mapping[str, float], tolerance: float = 0.0) -> dict[str, bool]:
    """Whether each statistic lies in its real-pair range, widened by ``tolerance``.

    Parameters
    ----------
    stats : mapping
        Statistics as returned by :func:`confocal_statistics`.
    tolerance : float
        Relative widening: ``lo * (1 - tolerance) <= value <= hi * (1 + tolerance)``.

    Returns
    -------
    dict
        One bool per key of :data:`REAL_PAIR_RANGES`; False for a missing or NaN value.
    """
    out = {}
    for key, (lo, hi) in REAL_PAIR_RANGES.items():
        value = float(stats.get(key, float("nan")))
        out[key] = bool(lo * (1.0 - tolerance) <= value <= hi * (1.0 + tolerance))
    return out
