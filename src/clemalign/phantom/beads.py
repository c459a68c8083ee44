"""Synthetic SEM/confocal pairs with 100 nm gold fiducial beads and a known affine.

Imitates the fiducial dataset of the paper: one confocal image (40 nm pixels,
511 x 511 px) shared by all cases of a seed, and several SEM images of the same area
seen at other magnifications, rotations and (for one view) mirrored.

The world frame is the confocal frame, in um. The world holds

* the bead field: ``n_beads`` gold beads of diameter ``bead_diameter_nm`` at least
  ``min_bead_spacing_um`` apart, a few of them too dim in the confocal;
* the cell as both microscopes see it: smooth autofluorescence and blurry cell bodies
  (confocal); cytoplasm tone, membranes, nucleus and organelles, fine texture (SEM);
* fluorescent debris spots (confocal only).

The bead field, the confocal image and the SEM tissue are drawn from
``default_rng([seed, 1000])`` and are therefore identical in every case of a seed.
Everything specific to a case (field position when not given, beads buried in the SEM
section, bright non-bead blobs, SEM noise) comes from ``default_rng([seed, 2000,
index])``.

Rendering
---------
* **Confocal**: beads and debris rendered as anti-aliased discs at 4x supersampling,
  blurred by a Gaussian PSF (sigma = FWHM / 2.3548) and averaged back by 4x4 blocks;
  the smooth background is evaluated at the native pixel centres and blurred by the
  same PSF; Poisson-Gaussian detector noise.
* **SEM**: every SEM pixel centre is mapped into the world by the ground-truth
  transform ``G`` (em um -> lm um) and the tissue is evaluated there; beads are bright
  discs with an anti-aliased edge and a faint bright halo; bright irregular blobs
  (some bead-sized) act as distractors; slight probe blur, Gaussian noise and a
  per-line scan offset.

Stress options
--------------
Real bead images are crowded; the options of :data:`STRESS_PARAMS` (top level of
``params``) and :data:`STRESS_VIEW_OPTIONS` (per view) reproduce that. They are not
part of :data:`DEFAULT_FIDUCIAL_PARAMS` (nor of the config schema): every one is off
by default, and a case generated without them is byte-identical to one generated
before they existed. Each draws from its own random stream
(``[seed, 1000, 1]`` for the confocal puncta, ``[seed, 2000, index, 1]`` for the SEM
puncta, ``[seed, 2000, index, 2]`` for the databar), so switching one on changes
nothing else.

* **Puncta** (``n_puncta_lm``, ``n_puncta_em``): bright bead-sized and off-sized spots,
  independent in the two images (fluorescent puncta in the confocal, vesicles or
  granules in the SEM), their centres kept half a bead plus half the largest punctum
  plus one confocal PSF FWHM from every bead's, so that a detected bead centre is not
  pulled off the true one (the ground truth) by a punctum touching it.
* **Tilt** (``tilt_deg``, ``tilt_axis_deg``): the SEM looks at the specimen tilted by
  ``tilt_deg`` about an in-plane axis at ``tilt_axis_deg`` from the SEM image's x
  axis; distances across the axis appear shortened by ``cos(tilt)``, so the ground
  truth ``G`` (em -> lm) stretches by ``1 / cos(tilt)`` across the axis (anisotropy
  1.064 at 20 deg, 1.25 at 36.87 deg). Beads are spheres and stay round in the SEM.
* **Databar** (``databar_px``): the bottom ``databar_px`` rows of the SEM image are a
  uniform black strip with white text-like glyphs and a scale bar, burned in after
  the detector; beads under it (even partly) are neither visible nor landmarks.
* **Bead size**: ``bead_diameter_nm`` of 200-1000 nm (fluorescent beads) renders as a
  PSF-blurred disc whose plateau keeps the 100 nm beads' peak brightness; keep
  ``min_bead_spacing_um`` above the diameter (it is raised to 1.5 diameters
  otherwise).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import ndimage

from ..io import LANDMARK_COLUMNS
from ..transforms import Transform, affine_matrix, apply, um_to_px
from ._common import (
    SyntheticCase,
    ValueNoise,
    block_mean,
    coverage,
    ellipse_distance,
    merge_params,
    min_distance_sample,
    pixel_grid_um,
    poisson_gaussian,
    to_uint8,
)

#: Parameters of the fiducial (gold bead) phantom; config.yaml overrides any of them.
#: Ranges are ``[low, high]`` lists and are drawn per case; a scalar is used as is.
#: ``views[i]["size_px"]`` is ``[rows, cols]`` of the SEM image; a view may carry
#: ``center_um: [x, y]``, the centre of the SEM field in confocal um (else drawn).
DEFAULT_FIDUCIAL_PARAMS: dict = {
    "confocal_px_nm": 40.0,  # paper: 40 nm confocal pixels
    "confocal_size_px": 511,  # paper: 511 x 511 px
    "bead_diameter_nm": 100.0,  # paper: 100 nm gold fiducials
    "n_beads": 60,
    "min_bead_spacing_um": 0.6,
    "psf_fwhm_nm": 250.0,
    "missing_fraction": [0.10, 0.20],  # of beads inside the SEM field, invisible in SEM
    "missing_in_lm": 0.05,  # of all beads, too dim in confocal (shared by all cases)
    "n_spurious_em": [3, 6],  # bright non-bead blobs in the SEM, per case
    "n_spurious_lm": 3,  # fluorescent debris spots in the confocal
    "photons": 60.0,  # mean photons at confocal signal 1.0
    "read_noise": 2.0,  # confocal read noise, grey levels
    "sem_noise": 0.06,  # SEM Gaussian noise, [0, 1] units
    "views": [
        {
            "px_nm": 20.0,
            "size_px": [640, 640],
            "rotation_deg": 4.0,
            "scale": [1.0, 1.0],
            "shear": 0.0,
            "mirror": False,
        },
        {
            "px_nm": 15.0,
            "size_px": [640, 700],
            "rotation_deg": -23.0,
            "scale": [1.004, 0.997],
            "shear": 0.003,
            "mirror": False,
        },
        {
            "px_nm": 25.0,
            "size_px": [600, 600],
            "rotation_deg": 97.0,
            "scale": [1.0, 1.0],
            "shear": 0.0,
            "mirror": False,
        },
        {
            "px_nm": 18.0,
            "size_px": [700, 640],
            "rotation_deg": 38.0,
            "scale": [0.996, 1.0],
            "shear": -0.002,
            "mirror": True,
        },
    ],
}

#: Optional stress parameters (top level of ``params``), all off by default. Ranges are
#: ``[low, high]`` lists drawn per seed (confocal) or per case (SEM).
STRESS_PARAMS: dict = {
    # bright spots in the confocal, not beads (shared by every case of a seed)
    "n_puncta_lm": 0,
    # bright spots in the SEM (vesicles, granules), not beads, drawn per case
    "n_puncta_em": 0,
    # punctum diameter as a multiple of bead_diameter_nm, log-uniform
    "puncta_diameter_factor": [0.6, 1.6],
    # punctum peak in the confocal, x a bright bead's peak
    "puncta_lm_brightness": [0.3, 1.2],
    # punctum grey in the SEM before noise ([0, 1]; beads are 0.9-1.0)
    "puncta_em_brightness": [0.6, 1.0],
}

#: Optional keys of a view (``params["views"][i]``), all off by default.
STRESS_VIEW_OPTIONS: dict = {
    "tilt_deg": 0.0,  # specimen tilt in the SEM, degrees (foreshortening cos(tilt))
    "tilt_axis_deg": 0.0,  # tilt axis, degrees counter-clockwise from the SEM x axis
    "databar_px": 0,  # rows of the black databar at the bottom of the SEM image
}

_SUPERSAMPLE = 4  # confocal supersampling factor
_LM_EDGE_MARGIN_UM = 0.5  # beads keep this far from the confocal border
_EM_EDGE_MARGIN_UM = 0.3  # the SEM field keeps this far from the confocal border
_LM_OFFSET = 6.0  # confocal dark level, grey
_BEAD_PEAK = 0.85  # blurred confocal bead peak per unit amplitude (signal units)
_FWHM_TO_SIGMA = 1.0 / 2.3548
_N_CENTER_CANDIDATES = 12  # random SEM field positions tried when no centre is given
_LARGE_WORLD_UM = 50.0  # wider worlds get a coarser SEM texture (memory, time)
_MAX_ORGANELLES = 3000  # SEM organelles in a large world, at most


def _draw(rng: np.random.Generator, value: object, integer: bool = False) -> float:
    """A scalar as is, or a uniform draw from a ``[low, high]`` range (inclusive ints)."""
    if np.ndim(value) == 0:
        return int(value) if integer else float(value)
    lo, hi = value
    if integer:
        return int(rng.integers(int(lo), int(hi) + 1))
    return float(rng.uniform(float(lo), float(hi)))


def _wobble(rng: np.random.Generator, amp: float, k: int = 3) -> np.ndarray:
    """Fourier coefficients (k, [amp, phase]) for :func:`ellipse_distance`."""
    return np.stack([rng.uniform(0.0, amp, k), rng.uniform(0.0, 2 * np.pi, k)], axis=1)


def _window(
    center_px: tuple[float, float], half_px: float, shape: tuple[int, int]
) -> tuple[slice, slice] | None:
    """Row/col slices of a square around a (col, row) pixel position, clipped; None if empty."""
    cx, cy = center_px
    r0 = max(0, int(np.floor(cy - half_px)))
    r1 = min(shape[0], int(np.ceil(cy + half_px)) + 1)
    c0 = max(0, int(np.floor(cx - half_px)))
    c1 = min(shape[1], int(np.ceil(cx + half_px)) + 1)
    if r0 >= r1 or c0 >= c1:
        return None
    return slice(r0, r1), slice(c0, c1)


def _unit(v: np.ndarray, lo: float = 0.25, hi: float = 0.75) -> np.ndarray:
    """Stretch a value-noise field (mostly within [0.25, 0.75]) onto [0, 1]."""
    return np.clip((v - lo) / (hi - lo), 0.0, 1.0)


# ---------------------------------------------------------------------- the world

#: Parameters that define the world (bead field, confocal image, SEM tissue).
_WORLD_KEYS = (
    "confocal_px_nm",
    "confocal_size_px",
    "bead_diameter_nm",
    "n_beads",
    "min_bead_spacing_um",
    "psf_fwhm_nm",
    "missing_in_lm",
    "n_spurious_lm",
    "photons",
    "read_noise",
    "n_puncta_lm",
    "puncta_diameter_factor",
    "puncta_lm_brightness",
)


def _param(p: dict, key: str) -> object:
    """``p[key]``, or the off value of an optional stress parameter."""
    return p[key] if key in p else STRESS_PARAMS[key]


def _seq(seed: int | tuple[int, ...], *tail: int) -> list[int]:
    """Seed sequence ``[seed, *tail]``; a tuple seed (negative controls) is spliced in."""
    head = [int(s) for s in seed] if isinstance(seed, tuple) else [int(seed)]
    return head + [int(t) for t in tail]


@dataclass(frozen=True)
class _Blob:
    """An irregular ellipse: centre (um), semi-axes (um), angle (rad), wobble, darkness."""

    center: tuple[float, float]
    semi_axes: tuple[float, float]
    angle: float
    wobble: np.ndarray
    value: float


@dataclass(frozen=True)
class _Confocal:
    """Confocal sampling and optics: field size (px), native px per um, PSF sigma (um)."""

    n_px: int
    ppu: float
    sigma_um: float

    @property
    def size_um(self) -> float:
        """Side of the square confocal field, um."""
        return self.n_px / self.ppu

    @property
    def sigma_ss(self) -> float:
        """PSF sigma in supersampled pixels."""
        return self.sigma_um * self.ppu * _SUPERSAMPLE


@dataclass(frozen=True)
class _Tissue:
    """The cell as the SEM sees it, in world um (identical in every view of a seed)."""

    tone: ValueNoise
    membranes: ValueNoise
    fine_membranes: ValueNoise
    texture: ValueNoise
    nucleus: _Blob
    organelles: tuple[_Blob, ...]


@dataclass(frozen=True)
class _World:
    """Everything shared by the cases of one seed (world = confocal frame, um)."""

    beads: np.ndarray  # (n, 2) um
    missing_in_lm: np.ndarray  # sorted bead indices
    debris: np.ndarray  # (k, 2) um
    debris_diameter_nm: np.ndarray  # (k,)
    lm: np.ndarray  # uint8 (N, N), read-only
    px_per_um: float  # confocal sampling
    size_um: float
    tissue: _Tissue
    puncta: np.ndarray  # (k, 2) um, confocal puncta (stress option; k = 0 when off)
    puncta_diameter_nm: np.ndarray  # (k,)


def _peak_gain(radius_um: float, sigma_um: float) -> float:
    """Emission density whose disc of ``radius_um``, Gaussian-blurred, peaks at 1."""
    return 1.0 / (1.0 - np.exp(-(radius_um**2) / (2.0 * sigma_um**2)))


def _render_emitter(
    canvas: np.ndarray,
    center: np.ndarray,
    extent_um: float,
    distance,
    emission: float,
    lm_ppu: float,
    sigma_ss: float,
) -> None:
    """Add one blurred, block-averaged emitter to the native-resolution confocal canvas.

    ``distance(x, y)`` is the signed distance (um) to the emitter outline. The emitter
    is rendered at ``_SUPERSAMPLE`` x the native sampling in a window aligned on native
    pixels and covering the PSF support, blurred there (zero outside, identical to
    blurring the whole supersampled image), averaged by blocks and added in place.
    """
    ss = _SUPERSAMPLE
    half_px = (extent_um + 4.5 * sigma_ss / (lm_ppu * ss)) * lm_ppu
    win = _window((um_to_px(center[0], lm_ppu), um_to_px(center[1], lm_ppu)), half_px, canvas.shape)
    if win is None:
        return
    rows, cols = win
    x, y = pixel_grid_um(
        slice(rows.start * ss, rows.stop * ss), slice(cols.start * ss, cols.stop * ss), lm_ppu * ss
    )
    patch = emission * coverage(distance(x, y), 1.0 / (lm_ppu * ss))
    patch = ndimage.gaussian_filter(patch, sigma_ss, mode="constant", truncate=4.0)
    canvas[rows, cols] += block_mean(patch, ss)


@lru_cache(maxsize=4)
def _cached_world(seed: int | tuple[int, ...], key: tuple[str, ...]) -> _World:
    """The world of ``seed`` for the JSON-encoded world parameters ``key`` (memoised)."""
    return _make_world(seed, {k: json.loads(v) for k, v in zip(_WORLD_KEYS, key, strict=True)})


def _world(seed: int | tuple[int, ...], p: dict) -> _World:
    """The (cached) world of ``seed`` under the merged parameters ``p``."""
    seed = tuple(int(s) for s in seed) if isinstance(seed, tuple) else int(seed)
    return _cached_world(seed, tuple(json.dumps(_param(p, k)) for k in _WORLD_KEYS))


def _make_world(seed: int | tuple[int, ...], p: dict) -> _World:
    """Bead field, confocal image and SEM tissue of one seed (rng ``[seed, 1000]``)."""
    rng = np.random.default_rng(_seq(seed, 1000))
    optics = _Confocal(
        n_px=int(p["confocal_size_px"]),
        ppu=1000.0 / float(p["confocal_px_nm"]),
        sigma_um=float(p["psf_fwhm_nm"]) * _FWHM_TO_SIGMA / 1000.0,
    )
    beads = _place_beads(rng, p, optics.size_um)
    missing_lm, amplitude = _bead_brightness_lm(rng, len(beads), float(p["missing_in_lm"]))
    signal = _lm_background(rng, optics)
    _add_beads_lm(signal, beads, amplitude, float(p["bead_diameter_nm"]) / 2000.0, optics)
    debris, debris_d = _add_debris_lm(rng, signal, beads, int(p["n_spurious_lm"]), optics)
    puncta_rng = np.random.default_rng(_seq(seed, 1000, 1))  # own stream: off = unchanged
    puncta, puncta_d = _add_puncta_lm(puncta_rng, signal, beads, p, optics)
    lm = poisson_gaussian(rng, signal, float(p["photons"]), float(p["read_noise"]), _LM_OFFSET)
    tissue = _sem_tissue(rng, optics.size_um)
    lm.setflags(write=False)
    beads.setflags(write=False)
    return _World(
        beads=beads,
        missing_in_lm=missing_lm,
        debris=debris,
        debris_diameter_nm=debris_d,
        lm=lm,
        px_per_um=optics.ppu,
        size_um=optics.size_um,
        tissue=tissue,
        puncta=puncta,
        puncta_diameter_nm=puncta_d,
    )


def _place_beads(rng: np.random.Generator, p: dict, size_um: float) -> np.ndarray:
    """Bead centres (n, 2) um: dart throwing at the minimum spacing, off the field edge.

    The spacing is at least 1.5 bead diameters, so that large beads never touch.
    """
    m = max(_LM_EDGE_MARGIN_UM, float(p["bead_diameter_nm"]) / 1000.0)
    spacing = max(float(p["min_bead_spacing_um"]), 1.5 * float(p["bead_diameter_nm"]) / 1000.0)
    return min_distance_sample(rng, int(p["n_beads"]), (m, m, size_um - m, size_um - m), spacing)


def _bead_brightness_lm(
    rng: np.random.Generator, n: int, dim_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """The beads too dim in the confocal (sorted indices) and every bead's amplitude."""
    n_dim = min(n, int(round(dim_fraction * n)))
    missing_lm = np.sort(rng.choice(n, n_dim, replace=False)) if n_dim else np.zeros(0, int)
    amplitude = rng.uniform(0.6, 1.0, n)
    amplitude[missing_lm] = rng.uniform(0.03, 0.07, n_dim)
    return missing_lm, amplitude


def _lm_background(rng: np.random.Generator, optics: _Confocal) -> np.ndarray:
    """Smooth confocal background (autofluorescence + cell bodies), PSF-blurred, float32.

    It varies over >= 0.5 um, so it is evaluated at the native pixel centres: a block
    mean of a supersampled rendering would be the same.
    """
    size_um = optics.size_um
    x, y = pixel_grid_um(slice(0, optics.n_px), slice(0, optics.n_px), optics.ppu)
    auto = ValueNoise(rng, (0.0, 0.0, size_um, size_um), (3.0, 1.5, 0.5))
    background = 0.04 + 0.11 * _unit(auto(x, y))
    _add_cell_bodies(rng, background, x, y, size_um)
    return ndimage.gaussian_filter(
        background.astype(np.float32), optics.sigma_um * optics.ppu, mode="reflect"
    )


def _add_cell_bodies(
    rng: np.random.Generator, background: np.ndarray, x: np.ndarray, y: np.ndarray, size_um: float
) -> None:
    """Add 3-5 dim, blurry-edged cell bodies (irregular ellipses) to the background in place."""
    for _ in range(int(rng.integers(3, 6))):
        c = rng.uniform((1.0, 1.0), (size_um - 1.0, size_um - 1.0))
        a = rng.uniform(2.0, 4.5)
        d, _ = ellipse_distance(
            x,
            y,
            tuple(c),
            (a, a * rng.uniform(0.55, 0.9)),
            rng.uniform(0, np.pi),
            _wobble(rng, 0.12),
        )
        background += rng.uniform(0.025, 0.06) / (1.0 + np.exp(np.clip(d / 0.5, -50, 50)))


def _add_beads_lm(
    signal: np.ndarray, beads: np.ndarray, amplitude: np.ndarray, r_um: float, optics: _Confocal
) -> None:
    """Add the beads to the confocal signal, blurred peaks about ``_BEAD_PEAK * amplitude``."""
    gain = _BEAD_PEAK * _peak_gain(r_um, optics.sigma_um)
    for bead, amp in zip(beads, amplitude, strict=True):
        _render_emitter(
            signal,
            bead,
            r_um,
            lambda xx, yy, b=bead: np.hypot(xx - b[0], yy - b[1]) - r_um,
            float(amp * gain),
            optics.ppu,
            optics.sigma_ss,
        )


def _free_spot(
    rng: np.random.Generator,
    lo: tuple[float, float],
    hi: tuple[float, float],
    beads: np.ndarray,
    clearance_um: float,
) -> np.ndarray:
    """A uniform point in ``[lo, hi]`` more than ``clearance_um`` from every bead (200 tries)."""
    for _try in range(200):
        c = rng.uniform(lo, hi)
        if len(beads) == 0 or np.min(np.hypot(*(beads - c).T)) > clearance_um:
            break
    return c


def _add_debris_lm(
    rng: np.random.Generator, signal: np.ndarray, beads: np.ndarray, n: int, optics: _Confocal
) -> tuple[np.ndarray, np.ndarray]:
    """Add ``n`` fluorescent debris spots away from the beads; centres (k, 2) um, diameters nm."""
    m, size_um = _LM_EDGE_MARGIN_UM, optics.size_um
    debris, debris_d = [], []
    for _ in range(n):
        c = _free_spot(rng, (m, m), (size_um - m, size_um - m), beads, 0.5)
        debris.append(c)
        debris_d.append(1000.0 * _add_debris_spot(rng, signal, c, optics))
    return np.array(debris).reshape(-1, 2), np.array(debris_d)


def _add_debris_spot(
    rng: np.random.Generator, signal: np.ndarray, c: np.ndarray, optics: _Confocal
) -> float:
    """Add one irregular 60-250 nm spot with a bead-like peak at ``c``; its diameter (um)."""
    diam = rng.uniform(0.06, 0.25)
    semi = (diam / 2, diam / 2 * rng.uniform(0.6, 1.0))
    ang, wob = float(rng.uniform(0, np.pi)), _wobble(rng, 0.12)
    emission = (
        rng.uniform(0.45, 1.0) * _BEAD_PEAK * _peak_gain(np.sqrt(np.prod(semi)), optics.sigma_um)
    )
    _render_emitter(
        signal,
        c,
        1.4 * semi[0],
        lambda xx, yy: ellipse_distance(xx, yy, (c[0], c[1]), semi, ang, wob)[0],
        float(emission),
        optics.ppu,
        optics.sigma_ss,
    )
    return diam


def _puncta_clearance_um(p: dict) -> float:
    """Least distance (um) from a punctum's centre to a bead's: the largest punctum
    and the bead touch no closer than one confocal PSF FWHM."""
    d_um = float(p["bead_diameter_nm"]) / 1000.0
    f_hi = float(np.max(_param(p, "puncta_diameter_factor")))
    return d_um * (1.0 + f_hi) / 2.0 + float(p["psf_fwhm_nm"]) / 1000.0


def _punctum_shape(rng: np.random.Generator, p: dict) -> tuple[float, float]:
    """Diameter (um, log-uniform in ``puncta_diameter_factor`` x bead) and aspect ratio."""
    lo, hi = (float(v) for v in np.broadcast_to(_param(p, "puncta_diameter_factor"), 2))
    diam = float(p["bead_diameter_nm"]) / 1000.0 * np.exp(rng.uniform(np.log(lo), np.log(hi)))
    return diam, float(rng.uniform(0.75, 1.0))


def _add_puncta_lm(
    rng: np.random.Generator, signal: np.ndarray, beads: np.ndarray, p: dict, optics: _Confocal
) -> tuple[np.ndarray, np.ndarray]:
    """Add ``n_puncta_lm`` fluorescent puncta away from the beads (stress option).

    Parameters
    ----------
    rng : numpy.random.Generator
        The puncta's own stream (``[seed, 1000, 1]``); untouched when there are none.
    signal : ndarray
        Confocal signal (native pixels), modified in place.
    beads : ndarray, shape (n, 2)
        Bead centres, um.
    p : dict
        Merged parameters.
    optics : _Confocal
        Confocal sampling and PSF.

    Returns
    -------
    centres : ndarray, shape (k, 2)
        Puncta centres, um.
    diameters : ndarray, shape (k,)
        Puncta diameters (mean of the axes), nm.
    """
    n = _draw(rng, _param(p, "n_puncta_lm"), integer=True) if _param(p, "n_puncta_lm") else 0
    m, size_um = _LM_EDGE_MARGIN_UM, optics.size_um
    clearance = _puncta_clearance_um(p)
    centres, diameters = [], []
    for _ in range(n):
        c = _free_spot(rng, (m, m), (size_um - m, size_um - m), beads, clearance)
        diam, aspect = _punctum_shape(rng, p)
        semi = (diam / 2, diam / 2 * aspect)
        ang, wob = float(rng.uniform(0, np.pi)), _wobble(rng, 0.1)
        gain = _BEAD_PEAK * _peak_gain(np.sqrt(np.prod(semi)), optics.sigma_um)
        emission = _draw(rng, _param(p, "puncta_lm_brightness")) * gain
        _render_emitter(
            signal,
            c,
            1.4 * semi[0],
            lambda xx, yy, c=c, semi=semi, ang=ang, wob=wob: ellipse_distance(
                xx, yy, (c[0], c[1]), semi, ang, wob
            )[0],
            float(emission),
            optics.ppu,
            optics.sigma_ss,
        )
        centres.append(c)
        diameters.append(1000.0 * (semi[0] + semi[1]))
    return np.array(centres, dtype=float).reshape(-1, 2), np.array(diameters, dtype=float)


def _blob(
    rng: np.random.Generator,
    center: np.ndarray,
    semi_major: float,
    aspect: float,
    wobble_amp: float,
    value_range: tuple[float, float],
) -> _Blob:
    """A blob at ``center`` with a random angle, wobble and value (drawn in that order)."""
    return _Blob(
        (float(center[0]), float(center[1])),
        (semi_major, semi_major * aspect),
        float(rng.uniform(0, np.pi)),
        _wobble(rng, wobble_amp),
        float(rng.uniform(*value_range)),
    )


def _sem_tissue(rng: np.random.Generator, size_um: float) -> _Tissue:
    """The SEM tissue in world um: tone, membranes, texture, nucleus and organelles.

    Worlds wider than ``_LARGE_WORLD_UM`` (large fluorescent-bead fields, never the
    default 20 um one) get a texture coarsened in proportion, so that its finest lattice
    stays under ~1700 x 1700 nodes, and organelles in proportion to their area (at most
    ``_MAX_ORGANELLES``).
    """
    bounds = (0.0, 0.0, size_um, size_um)
    coarsen = max(1.0, size_um / _LARGE_WORLD_UM)
    tone = ValueNoise(rng, bounds, (4.0, 2.0, 1.0))
    membranes = ValueNoise(rng, bounds, (2.5, 1.2, 0.6))
    fine_membranes = ValueNoise(rng, bounds, (0.9, 0.45))
    texture = ValueNoise(rng, bounds, (0.08 * coarsen, 0.03 * coarsen))
    c = rng.uniform((0.3 * size_um,) * 2, (0.7 * size_um,) * 2)
    a = rng.uniform(2.5, 3.5)
    nucleus = _blob(rng, c, a, rng.uniform(0.7, 0.9), 0.05, (0.06, 0.1))
    organelles = []
    n_organelles = int(rng.integers(80, 110))
    if size_um > _LARGE_WORLD_UM:
        n_organelles = min(_MAX_ORGANELLES, int(n_organelles * (size_um / 20.44) ** 2))
    for _ in range(n_organelles):
        c = rng.uniform((0.0, 0.0), (size_um, size_um))
        a = rng.uniform(0.12, 0.5)
        organelles.append(_blob(rng, c, a, rng.uniform(0.35, 0.9), 0.1, (0.05, 0.13)))
    return _Tissue(tone, membranes, fine_membranes, texture, nucleus, tuple(organelles))


# ------------------------------------------------------------------------ the SEM


@dataclass(frozen=True)
class _SemView:
    """One SEM view: px per um, image shape (rows, cols) and the affine's parameters."""

    ppu: float
    shape: tuple[int, int]
    rotation: float
    scale: tuple[float, ...]
    shear: float
    mirror: bool
    tilt: float = 0.0  # specimen tilt, degrees (stress option)
    tilt_axis: float = 0.0  # tilt axis, degrees from the SEM x axis
    databar_px: int = 0  # rows of the databar at the bottom (stress option)

    @property
    def width_um(self) -> float:
        """Field width, em um."""
        return self.shape[1] / self.ppu

    @property
    def height_um(self) -> float:
        """Field height, em um."""
        return self.shape[0] / self.ppu

    @property
    def visible_height_um(self) -> float:
        """Height of the field above the databar, em um (the whole field without one)."""
        return (self.shape[0] - self.databar_px) / self.ppu

    @property
    def untilted_linear(self) -> np.ndarray:
        """Linear part (2x2) of the affine em um -> lm um without the tilt."""
        return affine_matrix(self.rotation, self.scale, self.shear, mirror=self.mirror)[:2, :2]

    @property
    def foreshortening(self) -> np.ndarray:
        """The tilt's stretch (2x2, em frame): ``1 / cos(tilt)`` across the tilt axis."""
        a = np.deg2rad(self.tilt_axis)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        return rot @ np.diag([1.0, 1.0 / np.cos(np.deg2rad(self.tilt))]) @ rot.T

    @property
    def linear(self) -> np.ndarray:
        """Linear part (2x2) of the affine em um -> lm um."""
        if self.tilt == 0.0:
            return self.untilted_linear
        return self.untilted_linear @ self.foreshortening

    def affine(self, center_lm: np.ndarray) -> np.ndarray:
        """Affine em um -> lm um that puts the SEM field centre at ``center_lm``."""
        em_c = np.array([self.width_um / 2, self.height_um / 2])
        matrix = affine_matrix(
            self.rotation, self.scale, self.shear, tuple(center_lm - em_c), self.mirror, tuple(em_c)
        )
        if self.tilt == 0.0:
            return matrix
        stretch = np.eye(3)  # the foreshortening about the field centre (which it keeps)
        stretch[:2, :2] = self.foreshortening
        stretch[:2, 2] = em_c - self.foreshortening @ em_c
        return matrix @ stretch


@dataclass(frozen=True)
class _SemScene:
    """What one SEM view holds: beads (em um), which are inside / buried, distractors."""

    beads: np.ndarray  # (n, 2) em um, every bead of the world
    radius: float  # bead radius, em um
    inside: np.ndarray  # bool (n,): disc fully inside the field
    missing: np.ndarray  # sorted indices of the beads buried in the section
    values: np.ndarray  # (n,) bead brightness, NaN when buried
    missing_fraction: float
    spurious: list[_Blob]  # bright non-bead blobs, em um
    puncta: tuple[_Blob, ...] = ()  # SEM puncta (stress option), em um
    under_databar: np.ndarray | None = None  # beads in the field but under the databar


def _sem_view(view: dict) -> _SemView:
    """The SEM view described by one entry of ``params["views"]``."""
    return _SemView(
        ppu=1000.0 / float(view["px_nm"]),
        shape=(int(view["size_px"][0]), int(view["size_px"][1])),
        rotation=float(view.get("rotation_deg", 0.0)),
        scale=tuple(float(s) for s in view.get("scale", (1.0, 1.0))),
        shear=float(view.get("shear", 0.0)),
        mirror=bool(view.get("mirror", False)),
        tilt=_tilt_deg(view),
        tilt_axis=float(view.get("tilt_axis_deg", 0.0)),
        databar_px=_databar_px(view),
    )


def _tilt_deg(view: dict) -> float:
    """The view's ``tilt_deg``, checked to lie in [0, 80) degrees."""
    tilt = float(view.get("tilt_deg", 0.0))
    if not 0.0 <= tilt < 80.0:
        raise ValueError(f"view tilt_deg must lie in [0, 80) degrees, got {tilt}")
    return tilt


def _databar_px(view: dict) -> int:
    """The view's ``databar_px``, checked to leave at least half of the image above it."""
    rows = int(view["size_px"][0])
    bar = int(view.get("databar_px", 0))
    if not 0 <= bar <= rows // 2:
        raise ValueError(f"view databar_px must lie in [0, {rows // 2}] (half the rows), got {bar}")
    return bar


def _paint_blob(
    img: np.ndarray,
    xw: np.ndarray,
    yw: np.ndarray,
    blob: _Blob,
    inv: np.ndarray,
    em_ppu: float,
    em_scale: float,
    world_px: float,
    rim: float,
) -> None:
    """Darken a world-frame organelle in the SEM image, with a darker membrane rim."""
    ce = apply(inv, np.array(blob.center))[0]
    half_px = 1.25 * max(blob.semi_axes) / em_scale * em_ppu + 3
    win = _window((um_to_px(ce[0], em_ppu), um_to_px(ce[1], em_ppu)), half_px, img.shape)
    if win is None:
        return
    d, _ = ellipse_distance(xw[win], yw[win], blob.center, blob.semi_axes, blob.angle, blob.wobble)
    inside = coverage(d, world_px)
    img[win] -= blob.value * inside + rim * np.exp(-((d / max(world_px, 0.012)) ** 2))


def _render_sem(
    world: _World,
    G: np.ndarray,
    sem: _SemView,
    scene: _SemScene,
    noise: float,
    rng: np.random.Generator,
    bar_rng: np.random.Generator | None = None,
) -> np.ndarray:
    """SEM image (uint8) of the world seen through ``G`` (em um -> world um).

    ``bar_rng`` draws the databar's text (only used when the view has a databar).
    """
    x, y = pixel_grid_um(slice(0, sem.shape[0]), slice(0, sem.shape[1]), sem.ppu)
    img = _sem_tissue_image(world.tissue, G, x, y, sem.ppu)
    _paint_spurious(img, x, y, scene.spurious, sem.ppu)
    if scene.puncta:
        _paint_spurious(img, x, y, list(scene.puncta), sem.ppu)
    _paint_beads_em(img, x, y, scene, sem.ppu)
    em = _sem_detector(rng, img, x, y, noise)
    if sem.databar_px:
        _paint_databar(bar_rng, em, sem.databar_px, sem.ppu)
    return em


def _sem_tissue_image(
    tissue: _Tissue, G: np.ndarray, x: np.ndarray, y: np.ndarray, em_ppu: float
) -> np.ndarray:
    """Cytoplasm tone, membranes (a smooth field's 0.5 level lines), organelles, texture."""
    inv = np.linalg.inv(G)
    em_scale = float(np.sqrt(abs(np.linalg.det(G[:2, :2]))))
    world_px = em_scale / em_ppu  # SEM pixel size in world um
    xw = G[0, 0] * x + G[0, 1] * y + G[0, 2]
    yw = G[1, 0] * x + G[1, 1] * y + G[1, 2]
    img = 0.28 + 0.15 * _unit(tissue.tone(xw, yw))
    line_um = max(world_px, 0.015)
    for field, contrast in ((tissue.membranes, 0.12), (tissue.fine_membranes, 0.06)):
        mv = field(xw, yw) - 0.5
        gy, gx = np.gradient(mv, 1.0 / em_ppu)
        dist_um = np.abs(mv) / (np.hypot(gx, gy) + 1e-3)  # ~ distance to the 0.5 level line
        img -= contrast * np.exp(-((dist_um / line_um) ** 2))
    _paint_blob(img, xw, yw, tissue.nucleus, inv, em_ppu, em_scale, world_px, 0.12)
    for blob in tissue.organelles:
        _paint_blob(img, xw, yw, blob, inv, em_ppu, em_scale, world_px, 0.08)
    fine = tissue.texture(xw, yw)
    img += 0.06 * (fine - 0.5) - 0.07 * _unit(fine, 0.6, 0.72)  # texture, dark granules
    return img


def _paint_spurious(
    img: np.ndarray, x: np.ndarray, y: np.ndarray, spurious: list[_Blob], em_ppu: float
) -> None:
    """Paint the bright non-bead blobs (em um) over the SEM image in place."""
    px_um = 1.0 / em_ppu
    for blob in spurious:
        win = _window(
            (um_to_px(blob.center[0], em_ppu), um_to_px(blob.center[1], em_ppu)),
            1.4 * max(blob.semi_axes) * em_ppu + 2,
            img.shape,
        )
        if win is None:
            continue
        d, _ = ellipse_distance(
            x[win], y[win], blob.center, blob.semi_axes, blob.angle, blob.wobble
        )
        cov = coverage(d, px_um)
        img[win] = img[win] * (1.0 - cov) + blob.value * cov


def _paint_beads_em(
    img: np.ndarray, x: np.ndarray, y: np.ndarray, scene: _SemScene, em_ppu: float
) -> None:
    """Paint the unburied gold beads: bright discs, anti-aliased edge, faint bright halo."""
    px_um = 1.0 / em_ppu
    halo_um = 0.025
    for (bx, by), value in zip(scene.beads, scene.values, strict=True):
        if not np.isfinite(value):
            continue  # buried: not drawn
        win = _window(
            (um_to_px(bx, em_ppu), um_to_px(by, em_ppu)),
            (scene.radius + 4 * halo_um) * em_ppu + 1,
            img.shape,
        )
        if win is None:
            continue
        d = np.hypot(x[win] - bx, y[win] - by) - scene.radius
        cov = coverage(d, px_um)
        halo = 0.12 * np.exp(-((np.maximum(d, 0.0) / halo_um) ** 2))
        img[win] = img[win] * (1.0 - cov) + value * cov + halo * (1.0 - cov)


#: Segments (r0, c0, r1, c1 as fractions of the glyph box) of a 7-segment glyph, a-g.
_SEGMENTS = (
    (0.0, 0.0, 0.0, 1.0),  # a: top
    (0.0, 1.0, 0.5, 1.0),  # b: upper right
    (0.5, 1.0, 1.0, 1.0),  # c: lower right
    (1.0, 0.0, 1.0, 1.0),  # d: bottom
    (0.5, 0.0, 1.0, 0.0),  # e: lower left
    (0.0, 0.0, 0.5, 0.0),  # f: upper left
    (0.5, 0.0, 0.5, 1.0),  # g: middle
)
#: Digits 0-9 as 7-segment masks (bit k = segment k of :data:`_SEGMENTS`).
_DIGITS = (0x3F, 0x06, 0x5B, 0x4F, 0x66, 0x6D, 0x7D, 0x07, 0x7F, 0x6F)
_BAR_WHITE = 255  # databar text and scale bar, grey
_BAR_BLACK = 0  # databar background, grey


def _paint_glyph(img: np.ndarray, r0: int, c0: int, h: int, w: int, mask: int, t: int) -> None:
    """Burn a white 7-segment glyph (segments ``mask``, stroke ``t`` px) into ``img``."""
    for k, (a, b, c, d) in enumerate(_SEGMENTS):
        if mask >> k & 1:
            ra, rb = r0 + int(round(a * (h - t))), r0 + int(round(c * (h - t))) + t
            ca, cb = c0 + int(round(b * (w - t))), c0 + int(round(d * (w - t))) + t
            img[ra:rb, ca:cb] = _BAR_WHITE


def _nice_length_um(max_um: float) -> float:
    """Largest 1, 2 or 5 x 10^k um not above ``max_um``."""
    k = np.floor(np.log10(max_um))
    return float(max(m * 10.0**k for m in (1.0, 2.0, 5.0) if m * 10.0**k <= max_um))


def _paint_databar(rng: np.random.Generator, img: np.ndarray, bar_px: int, em_ppu: float) -> None:
    """Burn an SEM databar into the bottom ``bar_px`` rows of ``img`` (uint8, in place).

    A uniform black strip holding one line of white text-like glyphs (7-segment digits
    and letter-like segment sets in words of 2-6) and, at the right, a scale bar with
    end ticks whose length is a round number of um, labelled by a digit.
    """
    bar = img[img.shape[0] - bar_px :]
    bar[:] = _BAR_BLACK
    cols = img.shape[1]
    gh = max(5, int(round(0.4 * bar_px)))  # glyph height, px
    gw = max(3, int(round(0.55 * gh)))
    t = max(1, int(round(gh / 7)))
    r0 = (bar_px - gh) // 2
    margin = max(2, gw)
    length = int(round(_nice_length_um(0.2 * cols / em_ppu) * em_ppu))
    bar_c0 = cols - margin - length
    bar_r = r0 + gh // 2
    bar[bar_r - t : bar_r + t, bar_c0 : bar_c0 + length] = _BAR_WHITE
    for c in (bar_c0, bar_c0 + length - t):
        bar[r0 + gh // 4 : r0 + gh - gh // 4, c : c + t] = _BAR_WHITE
    _paint_glyph(bar, r0, bar_c0 - margin - gw, gh, gw, _DIGITS[int(rng.integers(1, 10))], t)
    c = margin
    stop = bar_c0 - 3 * margin - gw
    while True:
        n = int(rng.integers(2, 7))
        if c + n * (gw + t + 1) > stop:
            break
        for _ in range(n):
            if rng.random() < 0.6:
                mask = _DIGITS[int(rng.integers(0, 10))]
            else:
                mask = int(rng.integers(1, 128))
            _paint_glyph(bar, r0, c, gh, gw, mask, t)
            c += gw + t + 1
        c += 2 * gw


def _sem_detector(
    rng: np.random.Generator, img: np.ndarray, x: np.ndarray, y: np.ndarray, noise: float
) -> np.ndarray:
    """Probe blur, illumination gradient, scan-line offsets and detector noise; uint8."""
    img = ndimage.gaussian_filter(img, 0.6, mode="nearest")
    gxy = rng.normal(0.0, 0.02, 2)
    img += gxy[0] * (x / x.max() - 0.5) + gxy[1] * (y / y.max() - 0.5)
    img += rng.normal(0.0, 0.012, (img.shape[0], 1))
    img += rng.normal(0.0, noise, img.shape)
    return to_uint8(img)


# ------------------------------------------------------------------------ the case


def _view_params(p: dict, index: int) -> dict:
    """A private copy of the view of case ``index`` (views cycle); checks index and views."""
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    views = p["views"]
    if not views:
        raise ValueError("params['views'] must hold at least one view")
    return copy.deepcopy(dict(views[index % len(views)]))


def _field_half_extent(linear: np.ndarray, em_w: float, em_h: float) -> np.ndarray:
    """Half width and height (um) of the SEM field's bounding box in the confocal frame."""
    corners = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]]) * (em_w / 2, em_h / 2)
    return np.abs(corners @ linear.T).max(axis=0)


def _inside_em(beads_em: np.ndarray, em_w: float, em_h: float, pad: float) -> np.ndarray:
    """Beads (N, 2) em um whose disc lies inside the SEM field (``pad`` um from the edge)."""
    return np.all((beads_em >= pad) & (beads_em <= np.array([em_w, em_h]) - pad), axis=1)


def _n_missing(fraction: float, configured: object, n_inside: int) -> int:
    """Number of buried beads: ``fraction * n_inside`` rounded, kept in the configured range."""
    k = int(round(fraction * n_inside))
    if np.ndim(configured) == 1:
        lo, hi = (float(v) for v in configured)
        k_lo, k_hi = int(np.ceil(lo * n_inside - 1e-9)), int(np.floor(hi * n_inside + 1e-9))
        if k_lo <= k_hi:
            k = min(max(k, k_lo), k_hi)
    return min(max(k, 0), n_inside)


def _seen_in_confocal(world: _World, r_lm: float) -> tuple[np.ndarray, np.ndarray]:
    """Beads whose disc lies in the confocal field, and those of them bright there."""
    beads, size = np.asarray(world.beads), world.size_um
    inside_lm = np.all((beads >= r_lm) & (beads <= size - r_lm), axis=1)
    lm_ok = inside_lm.copy()
    lm_ok[np.asarray(world.missing_in_lm, dtype=int)] = False
    return inside_lm, lm_ok


def _field_center(
    rng: np.random.Generator,
    sem: _SemView,
    given: object,
    world: _World,
    lm_ok: np.ndarray,
    pad: float,
    name: str,
) -> np.ndarray:
    """Centre (lm um) of the SEM field: the configured ``given`` one, checked, or drawn."""
    half = _field_half_extent(sem.linear, sem.width_um, sem.height_um)
    if given is not None:
        return _check_center(np.asarray(given, dtype=float), half, world.size_um, name)
    return _choose_center(rng, sem, half, world, lm_ok, pad, name)


def _field_size(half: np.ndarray) -> str:
    """The SEM field's bounding box in the confocal frame, for error messages."""
    return f"SEM field ({2 * half[0]:.2f} x {2 * half[1]:.2f} um in the confocal frame)"


def _check_center(center: np.ndarray, half: np.ndarray, size: float, name: str) -> np.ndarray:
    """``center`` unchanged if the SEM field around it lies in the confocal field."""
    if np.any(center - half < 0) or np.any(center + half > size):
        raise ValueError(
            f"case {name!r}: {_field_size(half)} centred at {center.tolist()} um leaves "
            f"the {size:.2f} um confocal field"
        )
    return center


def _choose_center(
    rng: np.random.Generator,
    sem: _SemView,
    half: np.ndarray,
    world: _World,
    lm_ok: np.ndarray,
    pad: float,
    name: str,
) -> np.ndarray:
    """Best of a few random field centres, like an operator seeking visible fiducials.

    Score: beads inside the field that are bright in the confocal minus dim ones.
    """
    size = world.size_um
    lo = half + _EM_EDGE_MARGIN_UM
    hi = size - half - _EM_EDGE_MARGIN_UM
    if np.any(lo > hi):
        raise ValueError(
            f"case {name!r}: {_field_size(half)} does not fit in the {size:.2f} um confocal field"
        )
    candidates = rng.uniform(lo, hi, size=(_N_CENTER_CANDIDATES, 2))
    score = []
    for c in candidates:
        beads_em = apply(np.linalg.inv(sem.affine(c)), world.beads)
        inside = _inside_em(beads_em, sem.width_um, sem.visible_height_um, pad)
        score.append(np.count_nonzero(inside & lm_ok) - np.count_nonzero(inside & ~lm_ok))
    return candidates[int(np.argmax(score))]


def _sem_scene(
    rng: np.random.Generator,
    p: dict,
    sem: _SemView,
    G: np.ndarray,
    beads_lm: np.ndarray,
    r_em: float,
    pad: float,
    puncta_rng: np.random.Generator | None = None,
) -> _SemScene:
    """The beads in the SEM frame, which are inside the field and buried, and distractors.

    A bead is inside when its disc lies in the part of the field above the databar;
    ``puncta_rng`` (the SEM puncta's own stream) is used only with ``n_puncta_em``.
    """
    beads_em = apply(np.linalg.inv(G), beads_lm)
    inside = _inside_em(beads_em, sem.width_um, sem.visible_height_um, pad)
    fraction, missing, values = _bury_beads(rng, p["missing_fraction"], inside)
    spurious = _spurious_em(rng, sem, beads_em, float(p["bead_diameter_nm"]), p["n_spurious_em"])
    puncta: tuple[_Blob, ...] = ()
    if _param(p, "n_puncta_em"):
        scale = float(np.sqrt(abs(np.linalg.det(sem.untilted_linear))))
        puncta = _puncta_em(puncta_rng, p, sem, beads_em, _puncta_clearance_um(p) / scale)
    under = None
    if sem.databar_px:
        in_field = _inside_em(beads_em, sem.width_um, sem.height_um, pad)
        under = np.flatnonzero(in_field & ~inside)
    return _SemScene(beads_em, r_em, inside, missing, values, fraction, spurious, puncta, under)


def _puncta_em(
    rng: np.random.Generator, p: dict, sem: _SemView, beads_em: np.ndarray, clearance: float
) -> tuple[_Blob, ...]:
    """``n_puncta_em`` bright SEM puncta (em um) at least ``clearance`` um from the beads."""
    n = _draw(rng, _param(p, "n_puncta_em"), integer=True)
    value = tuple(float(v) for v in np.broadcast_to(_param(p, "puncta_em_brightness"), 2))
    lo, hi = (0.2, 0.2), (sem.width_um - 0.2, sem.height_um - 0.2)
    puncta = []
    for _ in range(n):
        c = _free_spot(rng, lo, hi, beads_em, clearance)
        diam, aspect = _punctum_shape(rng, p)
        puncta.append(_blob(rng, c, diam / 2.0, aspect, 0.1, value))
    return tuple(puncta)


def _bury_beads(
    rng: np.random.Generator, missing_fraction: object, inside: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Drawn missing fraction, buried beads (sorted, among those inside), bead brightness."""
    inside_idx = np.flatnonzero(inside)
    fraction = _draw(rng, missing_fraction)
    n_missing = _n_missing(fraction, missing_fraction, len(inside_idx))
    missing = np.sort(rng.choice(inside_idx, n_missing, replace=False)).astype(int)
    values = rng.uniform(0.9, 1.0, len(inside))
    values[missing] = np.nan
    return fraction, missing, values


def _spurious_em(
    rng: np.random.Generator,
    sem: _SemView,
    beads_em: np.ndarray,
    bead_d_nm: float,
    n_spurious: object,
) -> list[_Blob]:
    """Bright non-bead blobs (em um) away from the beads; the even ones bead-sized, round."""
    spurious: list[_Blob] = []
    for k in range(_draw(rng, n_spurious, integer=True)):
        c = _free_spot(rng, (0.2, 0.2), (sem.width_um - 0.2, sem.height_um - 0.2), beads_em, 0.3)
        if k % 2 == 0:
            diam, aspect = bead_d_nm * rng.uniform(0.8, 1.3), rng.uniform(0.8, 1.0)
        else:
            diam, aspect = np.exp(rng.uniform(np.log(40.0), np.log(300.0))), rng.uniform(0.5, 1)
        spurious.append(_blob(rng, c, diam / 2000.0, aspect, 0.15, (0.7, 1.0)))
    return spurious


def _seen_in_both(scene: _SemScene, inside_lm: np.ndarray, missing_lm: np.ndarray) -> np.ndarray:
    """Indices of the beads inside both fields, neither buried in the SEM nor dim in the LM."""
    visible = scene.inside & inside_lm
    visible[scene.missing] = False
    visible[np.asarray(missing_lm, dtype=int)] = False
    return np.flatnonzero(visible)


def _landmark_table(idx: np.ndarray, beads_em: np.ndarray, beads_lm: np.ndarray) -> pd.DataFrame:
    """Landmarks: the true centres (um) of the beads ``idx`` in both frames, ``beadNNN``."""
    return pd.DataFrame(
        {
            "name": [f"bead{i:03d}" for i in idx],
            "em_x_um": beads_em[idx, 0],
            "em_y_um": beads_em[idx, 1],
            "lm_x_um": beads_lm[idx, 0],
            "lm_y_um": beads_lm[idx, 1],
        }
    )[LANDMARK_COLUMNS]


def _transform_record(G: np.ndarray, sem: _SemView, center_lm: list[float]) -> dict:
    """The ground-truth transform em um -> lm um as a dict, with the view's parameters."""
    extra = {
        "rotation_deg": sem.rotation,
        "scale": list(sem.scale),
        "shear": sem.shear,
        "mirror": sem.mirror,
        "em_center_in_lm_um": center_lm,
    }
    if sem.tilt:
        sv = np.linalg.svd(G[:2, :2], compute_uv=False)
        extra.update(
            tilt_deg=sem.tilt, tilt_axis_deg=sem.tilt_axis, anisotropy=float(sv[0] / sv[1])
        )
    return Transform(
        G, moving="em", fixed="lm", method="ground truth (synthetic)", extra=extra
    ).to_dict()


def _truth_record(
    name: str,
    seed: int,
    index: int,
    view: dict,
    sem: _SemView,
    G: np.ndarray,
    world: _World,
    scene: _SemScene,
    bead_d_nm: float,
) -> dict:
    """JSON-ready ground truth: transform, beads in both frames, missing ones, distractors."""
    spurious = scene.spurious
    record = {
        "case": name,
        "track": "fiducial",
        "seed": int(seed),
        "index": index,
        "transform": _transform_record(G, sem, view["center_um"]),
        "em_px_per_um": sem.ppu,
        "lm_px_per_um": world.px_per_um,
        "em_shape": list(sem.shape),
        "lm_shape": list(world.lm.shape),
        "beads_lm_um": np.asarray(world.beads).tolist(),
        "beads_em_um": scene.beads.tolist(),
        "missing_in_em": scene.missing.tolist(),
        "missing_in_lm": np.asarray(world.missing_in_lm, dtype=int).tolist(),
        "outside_em": np.flatnonzero(~scene.inside).tolist(),
        "missing_fraction": scene.missing_fraction,
        "spurious_em_um": [list(b.center) for b in spurious],
        "spurious_em_diameter_nm": [1000.0 * (b.semi_axes[0] + b.semi_axes[1]) for b in spurious],
        "spurious_lm_um": world.debris.tolist(),
        "spurious_lm_diameter_nm": world.debris_diameter_nm.tolist(),
        "view": view,
        "bead_diameter_nm": bead_d_nm,
    }
    record.update(_stress_record(world, scene))
    return record


def _stress_record(world: _World, scene: _SemScene) -> dict:
    """Ground-truth entries of the stress options that are on (none when all are off)."""
    out: dict = {}
    if len(world.puncta):
        out["puncta_lm_um"] = world.puncta.tolist()
        out["puncta_lm_diameter_nm"] = world.puncta_diameter_nm.tolist()
    if scene.puncta:
        out["puncta_em_um"] = [list(b.center) for b in scene.puncta]
        out["puncta_em_diameter_nm"] = [
            1000.0 * (b.semi_axes[0] + b.semi_axes[1]) for b in scene.puncta
        ]
    if scene.under_databar is not None:
        out["under_databar_em"] = scene.under_databar.tolist()
    return out


def make_fiducial_case(
    seed: int, index: int, params: dict | None, name: str | None = None
) -> SyntheticCase:
    """Generate one SEM/confocal case of the fiducial (gold bead) track.

    Parameters
    ----------
    seed : int
        Dataset seed. The bead field and the confocal image depend on it only, so all
        cases of a seed share the same confocal image.
    index : int
        Case number within the dataset (0-based); selects
        ``params["views"][index % len(views)]`` and seeds the per-case choices.
    params : dict or None
        Overrides of :data:`DEFAULT_FIDUCIAL_PARAMS` (top-level keys replace defaults;
        ``views`` is replaced as a whole), plus any of the optional stress parameters
        of :data:`STRESS_PARAMS` (puncta) and, per view, of
        :data:`STRESS_VIEW_OPTIONS` (``tilt_deg``, ``tilt_axis_deg``, ``databar_px``).
        Unknown keys are ignored.
    name : str, optional
        Case name (default ``semNN`` with ``NN = index + 1``).

    Returns
    -------
    SyntheticCase
        ``em`` = SEM image (uint8, ``size_px`` = rows x cols, ``1000 / px_nm`` px/um);
        ``lm`` = confocal image (uint8, ``confocal_size_px`` square,
        ``1000 / confocal_px_nm`` px/um); ``landmarks`` = exact bead centres (um) of
        every bead visible in both images, named ``beadNNN`` after the bead index;
        ``ground_truth`` = JSON-ready dict with the transform em um -> lm um, all bead
        positions in both frames, the missing and outside beads and the distractors.
        ``outside_em`` holds every bead not fully in the SEM field above the databar.
        Only with the stress options on, it also holds ``puncta_lm_um`` /
        ``puncta_lm_diameter_nm``, ``puncta_em_um`` / ``puncta_em_diameter_nm``,
        ``under_databar_em`` (beads in the field, hidden by the databar) and, in
        ``transform.extra``, ``tilt_deg``, ``tilt_axis_deg`` and ``anisotropy`` (the
        ratio of the singular values of ``G``); without them it is exactly what it was
        before the options existed.

    Raises
    ------
    ValueError
        If the SEM field of the view does not fit inside the confocal field, or the
        parameters are malformed.

    Notes
    -----
    Without ``center_um`` the SEM field centre is the best of
    ``_N_CENTER_CANDIDATES`` uniform random positions that keep the field inside the
    confocal field, scored by the beads inside it that are bright in the confocal
    minus those that are dim (an operator picks a field rich in visible fiducials).
    The number of buried beads is ``missing_fraction`` (drawn) times the beads inside
    the field, rounded and kept within the configured range when possible.
    """
    p = merge_params(DEFAULT_FIDUCIAL_PARAMS, params)
    index = int(index)
    name = name or f"sem{index + 1:02d}"
    c = _case_parts(seed, index, p, name)
    return SyntheticCase(
        name=name,
        em=c.em,
        em_px_per_um=c.sem.ppu,
        lm=np.array(c.world.lm),
        lm_px_per_um=c.world.px_per_um,
        landmarks=_landmark_table(c.landmark_idx, c.scene.beads, np.asarray(c.world.beads)),
        ground_truth=_truth_record(
            name, seed, index, c.view, c.sem, c.G, c.world, c.scene, float(p["bead_diameter_nm"])
        ),
    )


@dataclass(frozen=True)
class _CaseParts:
    """One rendered SEM view of a world and what the ground truth is made of."""

    view: dict  # the view's parameters, ``center_um`` filled in
    world: _World
    sem: _SemView
    G: np.ndarray  # em um -> lm um
    scene: _SemScene
    em: np.ndarray  # uint8 SEM image
    landmark_idx: np.ndarray  # beads visible in both images


def _case_parts(seed: int | tuple[int, ...], index: int, p: dict, name: str) -> _CaseParts:
    """Render the SEM view ``index`` of the world ``seed`` under merged parameters ``p``.

    Random streams: ``[seed, 1000]`` (world), ``[seed, 2000, index]`` (case),
    ``[seed, 2000, index, 1]`` (SEM puncta), ``[seed, 2000, index, 2]`` (databar).
    """
    view = _view_params(p, index)
    world = _world(seed, p)
    rng = np.random.default_rng(_seq(seed, 2000, index))
    sem = _sem_view(view)

    # Bead radius in both frames; a bead counts as inside the SEM field when fully inside
    # (and above the databar). Beads are spheres: round in the SEM even when tilted.
    r_lm = float(p["bead_diameter_nm"]) / 2000.0
    r_em = r_lm / float(np.sqrt(abs(np.linalg.det(sem.untilted_linear))))
    pad = r_em + 1.0 / sem.ppu
    inside_lm, lm_ok = _seen_in_confocal(world, r_lm)

    center = _field_center(rng, sem, view.get("center_um"), world, lm_ok, pad, name)
    view["center_um"] = [float(center[0]), float(center[1])]
    G = sem.affine(center)
    puncta_rng = np.random.default_rng(_seq(seed, 2000, index, 1))
    scene = _sem_scene(rng, p, sem, G, world.beads, r_em, pad, puncta_rng)
    bar_rng = np.random.default_rng(_seq(seed, 2000, index, 2))
    em = _render_sem(world, G, sem, scene, float(p["sem_noise"]), rng, bar_rng)
    idx = _seen_in_both(scene, inside_lm, world.missing_in_lm)
    return _CaseParts(view, world, sem, G, scene, em, idx)
