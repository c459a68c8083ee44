"""Building blocks shared by the synthetic datasets: resolution-independent noise
fields, anti-aliased shape coverage, and detector noise models.

Every field here is defined in physical coordinates (um), so the same tissue renders
consistently at any pixel size, tile by tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..settings import merge_params  # noqa: F401 - re-exported for the phantoms
from ..transforms import px_to_um


@dataclass
class ValueNoise:
    """Smooth random field over a rectangle of the plane (fractal value noise).

    A lattice of uniform random values per octave, interpolated by cubic splines at
    query points. The field depends only on the generator state and the physical
    coordinates, never on the sampling grid.

    Parameters
    ----------
    rng : numpy.random.Generator
        Consumed at construction only.
    bounds_um : (xmin, ymin, xmax, ymax)
        Region where the field is defined (queries outside are clamped).
    scales_um : sequence of float
        Lattice spacing of each octave, in um.
    weights : sequence of float, optional
        Amplitude of each octave (default: equal to the spacing ratio, 1/f-like).
    """

    rng: np.random.Generator
    bounds_um: tuple[float, float, float, float]
    scales_um: tuple[float, ...]
    weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = self.bounds_um
        self._lattices = []
        for s in self.scales_um:
            nx = int(np.ceil((x1 - x0) / s)) + 4
            ny = int(np.ceil((y1 - y0) / s)) + 4
            lat = self.rng.random((ny, nx)).astype(np.float32)
            self._lattices.append((s, ndimage.spline_filter(lat, order=3)))
        if self.weights is None:
            w = np.asarray(self.scales_um, dtype=float)
            self.weights = tuple(w / w.sum())
        else:
            total = float(np.sum(self.weights))
            self.weights = tuple(float(w) / total for w in self.weights)

    def __call__(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Field value in about [0, 1] at points (x, y) um (arrays of equal shape)."""
        x0, y0, _, _ = self.bounds_um
        out = np.zeros(np.shape(x_um), dtype=np.float32)
        for (s, lat), w in zip(self._lattices, self.weights, strict=True):
            col = (np.asarray(x_um) - x0) / s + 1.0
            row = (np.asarray(y_um) - y0) / s + 1.0
            vals = ndimage.map_coordinates(
                lat, [row.ravel(), col.ravel()], order=3, mode="nearest", prefilter=False
            )
            out += w * vals.reshape(out.shape).astype(np.float32)
        return out


def coverage(signed_distance_um: np.ndarray, pixel_um: float) -> np.ndarray:
    """Anti-aliased area fraction inside a shape from a signed distance (negative inside)."""
    return np.clip(0.5 - signed_distance_um / pixel_um, 0.0, 1.0).astype(np.float32)


def ellipse_distance(
    x_um: np.ndarray,
    y_um: np.ndarray,
    center: tuple[float, float],
    semi_axes: tuple[float, float],
    angle_rad: float,
    wobble: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate signed distance (um) to an ellipse and its normalised radius.

    Parameters
    ----------
    x_um, y_um : ndarray
        Query points in um.
    center : (float, float)
        Centre (x, y) in um.
    semi_axes : (float, float)
        Semi-axes (a, b) in um, a along the rotated x axis.
    angle_rad : float
        Orientation of the a axis.
    wobble : ndarray, optional
        Fourier coefficients (k, [amp, phase]) of a radial modulation, so that
        outlines are irregular like real membranes.

    Returns
    -------
    distance_um : ndarray
        Negative inside, approximately metric near the outline.
    rho : ndarray
        Normalised radius (0 at the centre, 1 on the outline).
    """
    dx = np.asarray(x_um) - center[0]
    dy = np.asarray(y_um) - center[1]
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    u = c * dx + s * dy
    v = -s * dx + c * dy
    a, b = semi_axes
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    if wobble is not None and len(wobble):
        phi = np.arctan2(v / b, u / a)
        mod = np.ones_like(rho)
        for k, (amp, phase) in enumerate(wobble, start=2):
            mod += amp * np.cos(k * phi + phase)
        rho = rho / mod
    return (rho - 1.0) * min(a, b), rho


def pixel_grid_um(rows: slice, cols: slice, px_per_um: float) -> tuple[np.ndarray, np.ndarray]:
    """Physical (x, y) um of pixel centres for a block of rows and columns."""
    r = px_to_um(np.arange(rows.start, rows.stop), px_per_um)
    c = px_to_um(np.arange(cols.start, cols.stop), px_per_um)
    x, y = np.meshgrid(c, r)
    return x, y


def poisson_gaussian(
    rng: np.random.Generator,
    signal: np.ndarray,
    photons_at_one: float,
    read_noise: float,
    offset: float,
) -> np.ndarray:
    """Detector model: Poisson shot noise plus Gaussian read noise, in 8-bit counts.

    Parameters
    ----------
    rng : numpy.random.Generator
    signal : ndarray
        Expected signal, 1.0 being a bright structure.
    photons_at_one : float
        Mean photon count at signal 1.0 (sets the shot-noise level).
    read_noise : float
        Standard deviation of the Gaussian read noise, in grey levels.
    offset : float
        Dark level in grey levels.

    Returns
    -------
    ndarray of uint8
    """
    lam = np.clip(signal, 0, None) * photons_at_one
    counts = rng.poisson(lam).astype(np.float32)
    gain = 230.0 / photons_at_one  # a signal of 1.0 lands near grey level 230
    grey = offset + gain * counts + rng.normal(0.0, read_noise, size=signal.shape)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def confocal_detector(
    rng: np.random.Generator,
    channels: dict[str, np.ndarray],
    sup: int,
    shape: tuple[int, int],
    psf_sigma_px: float,
    offset_px: float,
    photons: dict[str, float],
    read_noise: float,
) -> np.ndarray:
    """Confocal optics and detector: from expected signals to an 8-bit RGB image.

    Each channel (expected signal on a grid ``sup`` times finer than the output) is
    blurred by the lateral PSF, red and blue are shifted by ``offset_px`` in a random
    direction (chromatic aberration), averaged down to ``shape`` and recorded with
    Poisson-Gaussian noise (:func:`poisson_gaussian`).

    Parameters
    ----------
    rng : numpy.random.Generator
    channels : dict
        ``red``, ``green``, ``blue`` expected signals (1.0 = a bright structure).
    sup : int
        Supersampling factor of the channels.
    shape : (int, int)
        Output (rows, cols).
    psf_sigma_px, offset_px : float
        Lateral PSF sigma and chromatic offset, in supersampled pixels.
    photons : dict
        Mean photons at signal 1.0, per channel.
    read_noise : float
        Read noise, grey levels.

    Returns
    -------
    ndarray of uint8, shape (rows, cols, 3)
    """
    out = {}
    for name in ("red", "green", "blue"):
        chan = ndimage.gaussian_filter(channels[name].astype(np.float32), psf_sigma_px)
        if name != "green" and offset_px > 0:
            ang = rng.uniform(0, 2 * np.pi)
            chan = ndimage.shift(
                chan, offset_px * np.array([np.sin(ang), np.cos(ang)]), order=1, mode="nearest"
            )
        signal = block_mean(chan, sup)[: shape[0], : shape[1]]
        out[name] = poisson_gaussian(rng, signal, photons[name], read_noise, 4.0)
    return np.stack([out["red"], out["green"], out["blue"]], axis=-1)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Clip a [0, 1] float image to 8 bits."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Average non-overlapping ``factor`` x ``factor`` blocks (trailing pixels cut)."""
    if factor == 1:
        return image.astype(np.float32)
    h = image.shape[0] // factor * factor
    w = image.shape[1] // factor * factor
    view = image[:h, :w].reshape(h // factor, factor, w // factor, factor, *image.shape[2:])
    return view.mean(axis=(1, 3), dtype=np.float32)


def min_distance_sample(
    rng: np.random.Generator,
    n: int,
    bounds: tuple[float, float, float, float],
    min_dist: float,
    max_tries: int = 50,
) -> np.ndarray:
    """Up to ``n`` random points in ``bounds`` at least ``min_dist`` um apart (dart throwing)."""
    x0, y0, x1, y1 = bounds
    pts: list[np.ndarray] = []
    tries = 0
    while len(pts) < n and tries < n * max_tries:
        tries += 1
        p = rng.uniform((x0, y0), (x1, y1))
        if all(np.hypot(*(p - q)) >= min_dist for q in pts):
            pts.append(p)
    return np.array(pts).reshape(-1, 2)


@dataclass
class SyntheticCase:
    """One synthetic correlative case with its ground truth.

    Attributes
    ----------
    name : str
        Case name.
    em : ndarray
        Electron micrograph (TEM or SEM), uint8, (rows, cols).
    em_px_per_um : float
        Sampling of ``em`` in px/um.
    lm : ndarray
        Light micrograph: confocal RGB uint8 (rows, cols, 3) or single channel (rows, cols).
    lm_px_per_um : float
        Sampling of ``lm`` in px/um.
    landmarks : pandas.DataFrame
        Landmark pairs, columns of :data:`clemalign.io.LANDMARK_COLUMNS` (um).
    ground_truth : dict
        JSON-ready: at least ``transform`` (em -> lm, :meth:`Transform.to_dict`).
    exact_predictions : dict or None
        Only when asked for (:func:`clemalign.phantom.make_analogy_case`): the
        confocal's expected green signal on the EM field (float32 images by name), for
        benchmarks; not written by :meth:`write`.
    """

    name: str
    em: np.ndarray
    em_px_per_um: float
    lm: np.ndarray
    lm_px_per_um: float
    landmarks: object
    ground_truth: dict
    exact_predictions: dict[str, np.ndarray] | None = None

    def write(self, outdir: str) -> dict[str, str]:
        """Write ``em.tif``, ``lm.tif``, ``landmarks.csv`` and ``ground_truth.json``.

        Returns
        -------
        dict
            Paths written, by role.
        """
        from pathlib import Path

        from ..io import write_json, write_landmarks, write_tiff

        out = Path(outdir)
        paths = {
            "em": str(out / "em.tif"),
            "lm": str(out / "lm.tif"),
            "landmarks": str(out / "landmarks.csv"),
            "ground_truth": str(out / "ground_truth.json"),
        }
        write_tiff(paths["em"], self.em, self.em_px_per_um, {"case": self.name, "modality": "EM"})
        write_tiff(paths["lm"], self.lm, self.lm_px_per_um, {"case": self.name, "modality": "LM"})
        write_landmarks(paths["landmarks"], self.landmarks)
        write_json(paths["ground_truth"], self.ground_truth)
        return paths
