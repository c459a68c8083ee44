"""Intensity-based affine registration: SSD, Mattes mutual information, weighted SSD.

The moving image (on the TEM grid: the predicted confocal, or the TEM itself) is
registered to the fixed image (the confocal crop that contains the TEM footprint) by an
affine ``M`` in um that maps **moving (x, y) um to fixed (x, y) um**, the project's
convention (:mod:`clemalign.transforms`). Nothing assumes a positive determinant or an
isotropic scale.

Design (paper sec. 4.7; issue 6)
--------------------------------
* **Where the cost is evaluated.** Over the moving image's pixels ``x_i`` (the TEM
  footprint lies inside the fixed crop): the fixed image is sampled at ``M x_i``. A
  pixel is used when it is inside ``moving_mask``, finite, and ``M x_i`` falls inside the
  fixed image (between the centres of its outer pixels); the cost is normalised by the
  number (or the total weight) of the valid pixels. All valid pixels are used: the cost
  is deterministic, no random sampling.
* **Interpolation.** Cubic B-spline of the fixed image (coefficients from
  :func:`scipy.ndimage.spline_filter` on the image padded by 2 pixels with mirrored
  edges), evaluated together with its exact spatial derivative in one compiled loop
  (numba). The interpolant passes through the pixel values and is C², so the costs
  below are smooth and their analytic gradients exact (up to pixels entering or leaving
  the overlap, which the gradient ignores, as in ITK).
* **Parameterisation.** ``y = B u + d`` with ``u = (x - c) / s`` per axis, where ``c``
  (um) is the centroid and ``s`` (um) the per-axis standard deviation of the used moving
  pixel positions. The six parameters ``(B00, B01, B10, B11, d0, d1)`` are all in um: a
  unit change of any of them displaces a typical pixel (one standard deviation from the
  centre) by 1 um. Translation and linear part are decoupled (``u`` has zero mean) and
  equally scaled (``u`` has unit variance), so the Hessian is close to a multiple of the
  identity for isotropic texture and the optimiser is well conditioned. ``M`` follows
  from ``L = B diag(1/s)``, ``t = d - L c``.
* **Measures.**

  - ``"ssd"``: ``mean_i (F(M x_i) - I(x_i))²``.
  - ``"wssd"`` (eq. 12): ``sum_i w_i (F(M x_i) - I(x_i))² / sum_i w_i`` with weights
    ``w`` on the moving grid in [0, 1]. The paper's ω is "a scaled image of the local
    standard deviations of the prediction error" in [0, 1]; high uncertainty must get a
    low weight, so the weights are ``w = 1 - ω`` (:func:`weights_from_uncertainty`).
  - ``"mi"``: minus the mutual information of a Parzen-window joint histogram (Mattes
    et al. 2003), see :func:`make_cost`.

  With ``normalize=True`` (default) SSD and WSSD compare standardised intensities: the
  moving image by its (weighted) mean and standard deviation over the used pixels, the
  fixed image by those of its samples under the level's starting transform. The sparse
  prediction has a smaller gain than the confocal (lasso shrinkage), and plain SSD would
  then be dominated by the intensity mismatch rather than the geometry.
  With ``ssd_contrast_um`` (config ``registration.ssd_contrast_um``) SSD and WSSD compare
  locally normalised images instead (:func:`local_contrast`: each image minus its local
  mean over a Gaussian of that sigma, divided by its local standard deviation, each in
  its own frame): the prediction's shrinkage varies across the field and the confocal
  carries haze and a slow background, which a single gain and offset cannot match.
* **Pyramid.** ``levels`` levels, coarse to fine; each coarser level smooths both images
  with a Gaussian (σ = 0.5 px) and averages 2x2 blocks, so pixel centres stay at
  ``(c + 0.5) / p`` with ``p`` halved. The matrix is carried in um between levels and
  needs no conversion. Masks are kept where all four finer pixels are used; weights are
  block-averaged.
* **Optimiser.** :func:`scipy.optimize.minimize`, L-BFGS-B, analytic gradient, per
  level, on the parameters divided by the level's pixel size (so one optimiser unit is
  one pixel of that level: its first, gradient-direction step of unit length moves the
  image by about a pixel and cannot leave the start's basin; in um units the first step
  was ~1 um and SSD on the raw TEM lost 1 in 5 perturbed starts to a distant minimum).
  Stops (a) when no parameter changed by more than ``tol · 2^level`` um in the last
  iteration (``tol`` = 1e-4 um by default: 0.0015 px at 14.52 px/um), (b) when the cost
  decreases by less than ``ftol`` (scipy's relative criterion, 1e-12 by default),
  (c) when the projected gradient's largest entry is below ``gtol`` (1e-12), (d) after
  ``max_iter`` iterations, or (e) when the line search cannot decrease the cost any more
  (reported by scipy; this is the ordinary end when the cost is flat to round-off). The
  per-level record in :attr:`RegistrationResult.info` says which. Tightening ``tol`` to
  1e-7 um moves the default cases' answers by ~1e-4 um (one case: 0.016 um, MI on the
  raw TEM, a neighbouring optimum of equal cost).
* **Overlap.** Fewer than ``min_overlap`` (default half) of the used moving pixels inside
  the fixed image is an error at the start and a constant penalty cost (worse than any
  aligned value, zero gradient) during the search, which keeps MI from "improving" by
  shrinking the overlap to a few pixels.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from numba import njit
from scipy import ndimage
from scipy.optimize import OptimizeResult, minimize

from .transforms import affine_matrix, apply, px_to_um, um_to_px

#: Similarity measures of :func:`register_affine`.
MEASURES = ("ssd", "mi", "wssd")
#: Sigma (um) of the local normalisation SSD and WSSD compare by default
#: (config ``registration.ssd_contrast_um``; None: the paper's plain SSD).
DEFAULT_SSD_CONTRAST_UM = 1.0

#: Padding (pixels) of the fixed image before B-spline prefiltering: the cubic kernel
#: reaches one pixel before and two after the sample's floor.
_PAD = 2
#: Percentiles (low, high) that set the intensity range of the MI histogram.
MI_PERCENTILES = (0.5, 99.5)


@dataclass
class RegistrationResult:
    """Outcome of :func:`register_affine`.

    Attributes
    ----------
    matrix : ndarray, shape (3, 3)
        Affine in um mapping moving (x, y) um to fixed (x, y) um.
    measure : str
        One of :data:`MEASURES`.
    value : float
        Final cost at the finest level: (weighted) mean squared difference for
        ``"ssd"``/``"wssd"`` (standardised intensities when ``normalize``), minus the
        mutual information (nats) for ``"mi"``.
    info : dict
        ``levels``: one dict per level, coarse to fine (``level``, ``px_per_um`` of the
        moving image at that level, ``pixels`` used, ``iterations``, ``evaluations``,
        ``cost``, ``converged``, ``message``, ``seconds``, ``overlap``); ``overlap``: the
        fraction of used moving pixels inside the fixed image at the end (finest level);
        ``seconds``: total wall time; and the options used.
    """

    matrix: np.ndarray
    measure: str
    value: float
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------- compiled kernels


@njit(cache=True, inline="always")
def _bspline_weights(t: float) -> tuple:
    """Cubic B-spline weights and their derivatives for offsets -1, 0, 1, 2 of floor."""
    t2 = t * t
    t3 = t2 * t
    s = 1.0 - t
    w0 = s * s * s / 6.0
    w1 = (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0
    w2 = (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0
    w3 = t3 / 6.0
    d0 = -0.5 * s * s
    d1 = 1.5 * t2 - 2.0 * t
    d2 = -1.5 * t2 + t + 0.5
    d3 = 0.5 * t2
    return w0, w1, w2, w3, d0, d1, d2, d3


@njit(cache=True)
def _sample(coef, row, col):
    """Value and (d/drow, d/dcol) of the cubic B-spline with coefficients ``coef``.

    ``row, col`` are pixel coordinates of the unpadded image (pixel centres at integers);
    the caller guarantees ``0 <= row <= rows - 1`` and ``0 <= col <= cols - 1``.
    """
    ir = int(math.floor(row))
    ic = int(math.floor(col))
    wr0, wr1, wr2, wr3, dr0, dr1, dr2, dr3 = _bspline_weights(row - ir)
    wc0, wc1, wc2, wc3, dc0, dc1, dc2, dc3 = _bspline_weights(col - ic)
    r0 = ir - 1 + _PAD
    c0 = ic - 1 + _PAD
    value = 0.0
    grow = 0.0
    gcol = 0.0
    for a in range(4):
        if a == 0:
            wr, dr = wr0, dr0
        elif a == 1:
            wr, dr = wr1, dr1
        elif a == 2:
            wr, dr = wr2, dr2
        else:
            wr, dr = wr3, dr3
        line = coef[r0 + a]
        v = wc0 * line[c0] + wc1 * line[c0 + 1] + wc2 * line[c0 + 2] + wc3 * line[c0 + 3]
        g = dc0 * line[c0] + dc1 * line[c0 + 1] + dc2 * line[c0 + 2] + dc3 * line[c0 + 3]
        value += wr * v
        grow += dr * v
        gcol += wr * g
    return value, grow, gcol


@njit(cache=True)
def _ssd_kernel(coef, rows, cols, ppu, un, mval, wts, params):
    """Weighted SSD sums over the moving pixels.

    Returns ``(sum w r², sum w, n_valid, gradient of sum w r² (6,))`` with ``r = F(y) -
    I(x)`` and ``y = B u + d`` in um; ``un`` (n, 2) holds the normalised positions ``u``.
    """
    b00, b01, b10, b11, d0, d1 = params[0], params[1], params[2], params[3], params[4], params[5]
    num = 0.0
    wsum = 0.0
    nvalid = 0
    grad = np.zeros(6)
    hi_r = rows - 1.0
    hi_c = cols - 1.0
    for i in range(un.shape[0]):
        u0 = un[i, 0]
        u1 = un[i, 1]
        col = (b00 * u0 + b01 * u1 + d0) * ppu - 0.5
        row = (b10 * u0 + b11 * u1 + d1) * ppu - 0.5
        if not (0.0 <= col <= hi_c and 0.0 <= row <= hi_r):
            continue
        nvalid += 1
        w = wts[i]
        if w == 0.0:
            continue
        v, grow, gcol = _sample(coef, row, col)
        r = v - mval[i]
        num += w * r * r
        wsum += w
        q = 2.0 * w * r * ppu
        gx = q * gcol
        gy = q * grow
        grad[0] += gx * u0
        grad[1] += gx * u1
        grad[2] += gy * u0
        grad[3] += gy * u1
        grad[4] += gx
        grad[5] += gy
    return num, wsum, nvalid, grad


@njit(cache=True)
def _parzen(u):
    """Cubic B-spline Parzen window β3(u) and its derivative."""
    a = abs(u)
    if a < 1.0:
        return 2.0 / 3.0 - u * u + 0.5 * a * a * a, -2.0 * u + 1.5 * u * a
    if a < 2.0:
        s = 2.0 - a
        d = -0.5 * s * s
        return s * s * s / 6.0, d if u > 0 else -d
    return 0.0, 0.0


@njit(cache=True)
def _mi_histogram(coef, rows, cols, ppu, un, kappa, params, lo, gain, nbins, ft, dfx, dfy, valid):
    """Pass 1 of Mattes MI: sample the fixed image and fill the Parzen joint histogram.

    Fixed samples are mapped to the continuous bin coordinate ``ft = 2 + (F - lo) *
    gain`` clipped to ``[2, nbins - 3]`` (cubic window, so every contribution stays in
    ``0 .. nbins - 1``); moving pixels fall in fixed bins ``kappa`` (zero-order window).
    Fills ``ft``, ``dfx``/``dfy`` (d ft / d y, per um; zero where clipped) and ``valid``
    per pixel; returns the un-normalised histogram (fixed bin, moving bin) and the number
    of valid pixels.
    """
    b00, b01, b10, b11, d0, d1 = params[0], params[1], params[2], params[3], params[4], params[5]
    hist = np.zeros((nbins, nbins))
    nvalid = 0
    hi_r = rows - 1.0
    hi_c = cols - 1.0
    top = nbins - 3.0
    for i in range(un.shape[0]):
        u0 = un[i, 0]
        u1 = un[i, 1]
        col = (b00 * u0 + b01 * u1 + d0) * ppu - 0.5
        row = (b10 * u0 + b11 * u1 + d1) * ppu - 0.5
        if not (0.0 <= col <= hi_c and 0.0 <= row <= hi_r):
            valid[i] = False
            continue
        valid[i] = True
        nvalid += 1
        v, grow, gcol = _sample(coef, row, col)
        f = 2.0 + (v - lo) * gain
        if f <= 2.0:
            f = 2.0
            dfx[i] = 0.0
            dfy[i] = 0.0
        elif f >= top:
            f = top
            dfx[i] = 0.0
            dfy[i] = 0.0
        else:
            dfx[i] = gain * gcol * ppu
            dfy[i] = gain * grow * ppu
        ft[i] = f
        k = kappa[i]
        j0 = int(math.floor(f)) - 1
        for j in range(j0, j0 + 4):
            w, _ = _parzen(j - f)
            hist[j, k] += w
    return hist, nvalid


@njit(cache=True)
def _mi_gradient(un, kappa, ft, dfx, dfy, valid, logratio):
    """Pass 2 of Mattes MI: gradient of ``N · MI`` w.r.t. the six parameters.

    ``d MI = sum_{j,k} dp(j, k) log(p(j, k) / p_F(j))`` with ``dp(j, k) = -(1/N) sum_i
    β3'(j - ft_i) d ft_i δ(k, kappa_i)``; ``logratio`` holds ``log(p / p_F)`` (0 where
    ``p = 0``).
    """
    grad = np.zeros(6)
    for i in range(un.shape[0]):
        if not valid[i]:
            continue
        gx = dfx[i]
        gy = dfy[i]
        if gx == 0.0 and gy == 0.0:
            continue
        f = ft[i]
        k = kappa[i]
        j0 = int(math.floor(f)) - 1
        a = 0.0
        for j in range(j0, j0 + 4):
            _, dw = _parzen(j - f)
            a -= dw * logratio[j, k]
        gx *= a
        gy *= a
        u0 = un[i, 0]
        u1 = un[i, 1]
        grad[0] += gx * u0
        grad[1] += gx * u1
        grad[2] += gy * u0
        grad[3] += gy * u1
        grad[4] += gx
        grad[5] += gy
    return grad


# ---------------------------------------------------------------------- cost function


def weights_from_uncertainty(uncertainty: np.ndarray) -> np.ndarray:
    """Eq. 12 weights from the prediction-uncertainty map: ``w = 1 - clip(ω, 0, 1)``.

    Parameters
    ----------
    uncertainty : ndarray
        ω on the moving grid (rows, cols): the scaled local standard deviation of the
        prediction error, in [0, 1] (larger = less trustworthy).

    Returns
    -------
    ndarray of float64, same shape, in [0, 1]; non-finite ω gives weight 0.
    """
    omega = np.asarray(uncertainty, dtype=np.float64)
    w = 1.0 - np.clip(omega, 0.0, 1.0)
    return np.where(np.isfinite(omega), w, 0.0)


def pixel_centres_um(shape: tuple[int, int], px_per_um: float) -> np.ndarray:
    """(x, y) um of every pixel centre of an image of ``shape`` (rows, cols), row-major."""
    rows, cols = np.indices(shape, dtype=np.float64)
    return px_to_um(np.stack([cols.ravel(), rows.ravel()], axis=1), px_per_um)


def _spline_coefficients(image: np.ndarray) -> np.ndarray:
    """Cubic B-spline coefficients of ``image`` padded by :data:`_PAD` mirrored pixels."""
    padded = np.pad(np.asarray(image, dtype=np.float64), _PAD, mode="symmetric")
    return ndimage.spline_filter(padded, order=3, mode="mirror", output=np.float64)


def _inside(xy_um: np.ndarray, shape: tuple[int, int], px_per_um: float) -> np.ndarray:
    """Boolean: (x, y) um points between the outermost pixel centres of ``shape``."""
    col = um_to_px(xy_um[:, 0], px_per_um)
    row = um_to_px(xy_um[:, 1], px_per_um)
    return (col >= 0) & (col <= shape[1] - 1) & (row >= 0) & (row <= shape[0] - 1)


def _fixed_samples(
    fixed: np.ndarray, px_per_um: float, xy_fixed_um: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear samples of ``fixed`` at (x, y) um points, and the inside mask."""
    inside = _inside(xy_fixed_um, fixed.shape, px_per_um)
    rc = um_to_px(xy_fixed_um[inside][:, ::-1], px_per_um)
    values = ndimage.map_coordinates(np.asarray(fixed, np.float64), rc.T, order=1)
    return values, inside


class CostFunction:
    """A registration cost and its analytic gradient at one resolution.

    Built by :func:`make_cost`. Call with the 6 parameters (see :meth:`params`) to get
    ``(cost, gradient)``; :meth:`matrix` and :meth:`params` convert between parameters
    and the 3x3 moving->fixed matrix in um.

    Attributes
    ----------
    measure : str
    center_um : ndarray, shape (2,)
        ``c``: centroid (x, y) um of the used moving pixels.
    scale_um : ndarray, shape (2,)
        ``s``: per-axis standard deviation (x, y) um of the used moving pixel positions.
    n_pixels : int
        Used moving pixels (mask, finite, and for ``"wssd"`` of any weight).
    """

    def __init__(
        self,
        measure: str,
        coef: np.ndarray,
        fixed_shape: tuple[int, int],
        fixed_px_per_um: float,
        xy_um: np.ndarray,
        values: np.ndarray,
        weights: np.ndarray,
        center_um: np.ndarray,
        scale_um: np.ndarray,
        bins: int,
        fixed_range: tuple[float, float],
        moving_range: tuple[float, float],
        min_overlap: float,
        penalty: float,
    ) -> None:
        self.measure = measure
        self._coef = coef
        self._rows, self._cols = int(fixed_shape[0]), int(fixed_shape[1])
        self._ppu = float(fixed_px_per_um)
        self.center_um = np.asarray(center_um, float)
        self.scale_um = np.asarray(scale_um, float)
        self._un = np.ascontiguousarray((xy_um - self.center_um) / self.scale_um)
        self._values = np.ascontiguousarray(values, dtype=np.float64)
        self._weights = np.ascontiguousarray(weights, dtype=np.float64)
        self.n_pixels = int(len(values))
        self._bins = int(bins)
        self._min_overlap = float(min_overlap)
        self._penalty = float(penalty)
        self.last_overlap = float("nan")
        lo, hi = fixed_range
        self._lo = float(lo)
        self._gain = (self._bins - 5.0) / (hi - lo)
        mlo, mhi = moving_range
        kappa = np.floor((self._values - mlo) / (mhi - mlo) * self._bins)
        self._kappa = np.clip(kappa, 0, self._bins - 1).astype(np.int64)
        n = self.n_pixels
        self._ft = np.zeros(n)
        self._dfx = np.zeros(n)
        self._dfy = np.zeros(n)
        self._valid = np.zeros(n, dtype=np.bool_)

    def params(self, matrix: np.ndarray) -> np.ndarray:
        """Parameters ``(B00, B01, B10, B11, d0, d1)`` in um of a 3x3 matrix (um)."""
        m = np.asarray(matrix, dtype=np.float64)
        lin = m[:2, :2]
        b = lin * self.scale_um[None, :]
        d = lin @ self.center_um + m[:2, 2]
        return np.array([b[0, 0], b[0, 1], b[1, 0], b[1, 1], d[0], d[1]])

    def matrix(self, params: np.ndarray) -> np.ndarray:
        """3x3 moving->fixed matrix (um) of parameters from :meth:`params`."""
        p = np.asarray(params, dtype=np.float64)
        lin = np.array([[p[0], p[1]], [p[2], p[3]]]) / self.scale_um[None, :]
        out = np.eye(3)
        out[:2, :2] = lin
        out[:2, 2] = p[4:6] - lin @ self.center_um
        return out

    def __call__(self, params: np.ndarray) -> tuple[float, np.ndarray]:
        """Cost and its gradient (per um of each parameter) at ``params``."""
        p = np.ascontiguousarray(params, dtype=np.float64)
        if self.measure == "mi":
            return self._mi(p)
        num, wsum, nvalid, grad = _ssd_kernel(
            self._coef,
            self._rows,
            self._cols,
            self._ppu,
            self._un,
            self._values,
            self._weights,
            p,
        )
        self.last_overlap = nvalid / self.n_pixels
        if self.last_overlap < self._min_overlap or wsum <= 0:
            return self._penalty, np.zeros(6)
        return num / wsum, grad / wsum

    def _mi(self, p: np.ndarray) -> tuple[float, np.ndarray]:
        hist, nvalid = _mi_histogram(
            self._coef,
            self._rows,
            self._cols,
            self._ppu,
            self._un,
            self._kappa,
            p,
            self._lo,
            self._gain,
            self._bins,
            self._ft,
            self._dfx,
            self._dfy,
            self._valid,
        )
        self.last_overlap = nvalid / self.n_pixels
        if self.last_overlap < self._min_overlap:
            return self._penalty, np.zeros(6)
        joint = hist / nvalid
        pf = joint.sum(axis=1)
        pm = joint.sum(axis=0)
        nz = joint > 0
        denom = np.outer(pf, pm)
        mi = float(np.sum(joint[nz] * np.log(joint[nz] / denom[nz])))
        logratio = np.zeros_like(joint)
        logratio[nz] = np.log(joint[nz] / np.broadcast_to(pf[:, None], joint.shape)[nz])
        grad = _mi_gradient(
            self._un, self._kappa, self._ft, self._dfx, self._dfy, self._valid, logratio
        )
        return -mi, -grad / nvalid


def _check_measure(measure: str, weights: np.ndarray | None) -> None:
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; use one of {MEASURES}")
    if measure == "wssd" and weights is None:
        raise ValueError("measure 'wssd' needs weights (e.g. weights_from_uncertainty(ω))")
    if measure != "wssd" and weights is not None:
        raise ValueError(f"weights are only used by measure 'wssd', not {measure!r}")


def _used_pixels(
    moving: np.ndarray, weights: np.ndarray | None, moving_mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Validated moving image, weights and mask: (weights (rows, cols), used mask)."""
    if moving.ndim != 2:
        raise ValueError(f"moving image must be 2D, got shape {moving.shape}")
    used = np.isfinite(moving)
    if moving_mask is not None:
        moving_mask = np.asarray(moving_mask)
        if moving_mask.shape != moving.shape:
            raise ValueError(
                f"moving_mask shape {moving_mask.shape} differs from the moving image "
                f"{moving.shape}"
            )
        used &= moving_mask.astype(bool)
    if weights is None:
        w = np.ones(moving.shape)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != moving.shape:
            raise ValueError(
                f"weights shape {w.shape} differs from the moving image {moving.shape}"
            )
        if not np.all(np.isfinite(w[used])) or w[used].min() < 0 or w[used].max() > 1:
            raise ValueError("weights must be finite and in [0, 1] on the used pixels")
        used &= w > 0
    if not used.any():
        raise ValueError("no moving pixel is used (mask, weights and NaNs exclude all)")
    return np.where(used, w, 0.0), used


def _intensity_model(
    measure: str,
    fixed: np.ndarray,
    values: np.ndarray,
    w: np.ndarray,
    f_values: np.ndarray,
    inside: np.ndarray,
    normalize: bool,
) -> tuple[np.ndarray, np.ndarray, tuple, tuple, float]:
    """How the intensities enter the measure: for MI the histogram ranges (percentiles of
    the overlapping fixed samples and of the moving values); for SSD the images
    standardised by their (weighted) mean and SD when ``normalize``, and the penalty of
    pixels outside the fixed image. Returns ``(fixed, values, fixed_range, moving_range,
    penalty)``; raises ValueError for an image without contrast."""
    fixed_range = moving_range = (0.0, 1.0)
    if measure == "mi":
        fixed_range = tuple(np.percentile(f_values, MI_PERCENTILES))
        moving_range = tuple(np.percentile(values, MI_PERCENTILES))
        for name, (lo, hi) in (("fixed", fixed_range), ("moving", moving_range)):
            if not hi > lo:
                raise ValueError(f"{name} image has no contrast for mutual information")
        return fixed, values, fixed_range, moving_range, 0.0  # -MI <= 0: zero is the worst
    wf = w[inside]
    mf = np.average(f_values, weights=wf) if wf.sum() > 0 else f_values.mean()
    sf = np.sqrt(np.average((f_values - mf) ** 2, weights=wf)) if wf.sum() > 0 else 0
    mm = np.average(values, weights=w)
    sm = np.sqrt(np.average((values - mm) ** 2, weights=w))
    if normalize:
        if not (sf > 0 and sm > 0):
            which = "fixed" if not sf > 0 else "moving"
            raise ValueError(f"{which} image has no contrast to standardise")
        fixed = (fixed - mf) / sf
        values = (values - mm) / sm
        mf, sf, mm, sm = 0.0, 1.0, 0.0, 1.0
    # expected SSD of unrelated images, doubled: worse than any aligned value
    penalty = 2.0 * (sf**2 + sm**2 + (mf - mm) ** 2) + 1e-12
    return fixed, values, fixed_range, moving_range, penalty


def make_cost(
    moving: np.ndarray,
    fixed: np.ndarray,
    reference: np.ndarray,
    *,
    moving_px_per_um: float,
    fixed_px_per_um: float,
    measure: str = "ssd",
    weights: np.ndarray | None = None,
    moving_mask: np.ndarray | None = None,
    bins: int = 32,
    normalize: bool = True,
    min_overlap: float = 0.5,
    center_um: np.ndarray | None = None,
    scale_um: np.ndarray | None = None,
) -> CostFunction:
    """The cost of one resolution level as a function of the 6 affine parameters.

    Parameters
    ----------
    moving : ndarray, shape (rows, cols)
        Moving image at ``moving_px_per_um``; non-finite pixels are not used.
    fixed : ndarray, shape (rows, cols)
        Fixed image at ``fixed_px_per_um``; must be finite.
    reference : ndarray, shape (3, 3)
        Moving->fixed matrix (um) under which the fixed image's intensity statistics are
        taken (standardisation for SSD/WSSD, histogram range for MI): the fixed samples
        at the mapped used moving pixels.
    moving_px_per_um, fixed_px_per_um : float
        Samplings, px/um.
    measure : {"ssd", "mi", "wssd"}
    weights : ndarray, optional
        Eq. 12 weights in [0, 1] on the moving grid, only and always for ``"wssd"``.
    moving_mask : ndarray of bool, optional
        Moving pixels to use (True).
    bins : int
        MI histogram bins per axis (>= 8). The fixed (sampled) intensities are rescaled
        from their :data:`MI_PERCENTILES` range onto the bin coordinate ``[2, bins - 3]``
        and spread by a cubic B-spline Parzen window; the moving intensities, rescaled
        from their own percentile range to ``[0, bins)``, fall in one bin each (zero-order
        window: they do not move, so they need no smooth window). Values outside the
        range are clipped to its ends. ``MI = sum p log(p / (p_F p_M))`` over the
        normalised joint histogram; its gradient (Mattes et al. 2003) is
        ``sum_{j,k} dp(j, k) log(p(j, k) / p_F(j))`` through the window's derivative
        and the interpolant's spatial gradient.
    normalize : bool
        SSD/WSSD only: standardise both images (see module notes).
    min_overlap : float
        Fraction of used moving pixels that must map inside the fixed image; below it
        the cost is a constant penalty (worse than any aligned value) with zero gradient.
    center_um, scale_um : ndarray, optional
        ``c`` and ``s`` of the parameterisation (x, y) um; by default the centroid and
        per-axis standard deviation of the used moving pixel positions.

    Returns
    -------
    CostFunction

    Raises
    ------
    ValueError
        Unknown measure, weights/mask shape mismatch, weights out of [0, 1], weights
        missing for (or given to a measure other than) ``"wssd"``, non-finite fixed
        image, an image without contrast, or fewer than ``min_overlap`` of the used
        moving pixels inside the fixed image under ``reference``.
    """
    _check_measure(measure, weights)
    moving = np.asarray(moving, dtype=np.float64)
    fixed = np.asarray(fixed, dtype=np.float64)
    if fixed.ndim != 2:
        raise ValueError(f"fixed image must be 2D, got shape {fixed.shape}")
    if not np.all(np.isfinite(fixed)):
        raise ValueError("fixed image has non-finite pixels")
    if bins < 8:
        raise ValueError(f"bins must be at least 8, got {bins}")
    w_img, used = _used_pixels(moving, weights, moving_mask)
    xy = pixel_centres_um(moving.shape, moving_px_per_um)[used.ravel()]
    values = moving[used]
    w = w_img[used]
    if center_um is None:
        center_um = xy.mean(axis=0)
    if scale_um is None:
        scale_um = np.maximum(xy.std(axis=0), 1.0 / moving_px_per_um)
    f_values, inside = _fixed_samples(fixed, fixed_px_per_um, apply(reference, xy))
    overlap = inside.mean()
    if overlap < min_overlap or inside.sum() < 16:
        raise ValueError(
            f"no overlap: only {overlap:.1%} of the moving pixels map inside the fixed "
            f"image under the start transform (minimum {min_overlap:.0%})"
        )
    fixed, values, fixed_range, moving_range, penalty = _intensity_model(
        measure, fixed, values, w, f_values, inside, normalize
    )
    return CostFunction(
        measure=measure,
        coef=_spline_coefficients(fixed),
        fixed_shape=fixed.shape,
        fixed_px_per_um=fixed_px_per_um,
        xy_um=xy,
        values=values,
        weights=w,
        center_um=np.asarray(center_um, float),
        scale_um=np.asarray(scale_um, float),
        bins=bins,
        fixed_range=fixed_range,
        moving_range=moving_range,
        min_overlap=min_overlap,
        penalty=penalty,
    )


# ------------------------------------------------------------------------ pyramid


def _half(image: np.ndarray) -> np.ndarray:
    """Gaussian (σ = 0.5 px) then 2x2 block mean; an odd last row/column is dropped.

    Block means keep the pixel-centre convention: coarse pixel ``c`` has centre
    ``(c + 0.5) / (p / 2)``, the mean of fine centres ``2c`` and ``2c + 1``.
    """
    smooth = ndimage.gaussian_filter(image, 0.5, mode="nearest")
    rows, cols = (smooth.shape[0] // 2) * 2, (smooth.shape[1] // 2) * 2
    return smooth[:rows, :cols].reshape(rows // 2, 2, cols // 2, 2).mean(axis=(1, 3))


def _half_mask(mask: np.ndarray) -> np.ndarray:
    """A coarse pixel is used when all four finer pixels are."""
    rows, cols = (mask.shape[0] // 2) * 2, (mask.shape[1] // 2) * 2
    return mask[:rows, :cols].reshape(rows // 2, 2, cols // 2, 2).all(axis=(1, 3))


@dataclass
class _PyramidLevel:
    """One pyramid level: moving, fixed, weights (or None), used mask, factor to full size."""

    moving: np.ndarray
    fixed: np.ndarray
    weights: np.ndarray | None
    used: np.ndarray
    factor: int


def _pyramid(
    moving: np.ndarray,
    fixed: np.ndarray,
    weights: np.ndarray | None,
    used: np.ndarray,
    levels: int,
) -> list[_PyramidLevel]:
    """The pyramid levels, finest first; unused moving pixels filled with the used mean."""
    fill = np.where(used, moving, moving[used].mean())
    out = [_PyramidLevel(fill, fixed, weights, used, 1)]
    for _ in range(1, levels):
        finer = out[-1]
        if min(finer.moving.shape) < 32 or min(finer.fixed.shape) < 32:
            break
        w_half = None if finer.weights is None else _half(np.where(finer.used, finer.weights, 0.0))
        out.append(
            _PyramidLevel(
                _half(finer.moving),
                _half(finer.fixed),
                w_half,
                _half_mask(finer.used),
                finer.factor * 2,
            )
        )
    return out


# ---------------------------------------------------------------------- registration


def _single_thread_blas() -> contextlib.AbstractContextManager:
    """BLAS limited to one thread while L-BFGS-B runs, when threadpoolctl is installed.

    scipy's L-BFGS-B calls BLAS on 6x6 problems; a multi-threaded OpenBLAS then spends
    ~2 ms per iteration waking its threads, several times the cost evaluation itself.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


class _StepStop:
    """L-BFGS-B callback: stop when no parameter changed by more than ``tol``.

    ``tol`` is in the optimiser's units (pixels of the level); :func:`_optimise` converts
    the step tolerance in um.
    """

    def __init__(self, x0: np.ndarray, tol: float) -> None:
        self.previous = np.array(x0, dtype=float)
        self.tol = tol
        self.iterations = 0
        self.triggered = False

    def __call__(self, intermediate_result) -> None:
        x = np.asarray(intermediate_result.x, dtype=float)
        self.iterations += 1
        step = float(np.max(np.abs(x - self.previous)))
        self.previous = x.copy()
        if step <= self.tol:
            self.triggered = True
            raise StopIteration


@dataclass
class _LevelRecord:
    """What one pyramid level did: one entry of ``RegistrationResult.info["levels"]``."""

    level: int
    px_per_um: float
    pixels: int
    iterations: int
    evaluations: int
    cost: float
    converged: bool
    message: str
    seconds: float
    overlap: float


def _checked_inputs(
    moving: np.ndarray,
    fixed: np.ndarray,
    start: np.ndarray,
    measure: str,
    weights: np.ndarray | None,
    levels: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(moving, fixed, start) as float64 arrays; ValueError for a bad start, levels, measure."""
    start = np.asarray(start, dtype=np.float64)
    if start.shape != (3, 3) or not np.allclose(start[2], [0, 0, 1]):
        raise ValueError(f"start must be a 3x3 affine matrix, got shape {start.shape}")
    if levels < 1:
        raise ValueError(f"levels must be at least 1, got {levels}")
    _check_measure(measure, weights)
    moving = np.asarray(moving, dtype=np.float64)
    fixed = np.asarray(fixed, dtype=np.float64)
    if moving.ndim != 2 or fixed.ndim != 2:
        raise ValueError(f"images must be 2D, got {moving.shape} and {fixed.shape}")
    return moving, fixed, start


def _parameterisation(
    shape: tuple[int, int], px_per_um: float, used: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Centre ``c`` and per-axis scale ``s`` (um) of the used pixels of the finest grid."""
    xy = pixel_centres_um(shape, px_per_um)[used.ravel()]
    return xy.mean(axis=0), np.maximum(xy.std(axis=0), 1.0 / px_per_um)


def _level_cost(
    level: _PyramidLevel,
    matrix: np.ndarray,
    moving_px_per_um: float,
    fixed_px_per_um: float,
    **cost_options,
) -> CostFunction:
    """The level's cost (:func:`make_cost` with ``cost_options``), statistics under ``matrix``."""
    return make_cost(
        level.moving,
        level.fixed,
        matrix,
        moving_px_per_um=moving_px_per_um / level.factor,
        fixed_px_per_um=fixed_px_per_um / level.factor,
        weights=None if level.weights is None else np.clip(level.weights, 0.0, 1.0),
        moving_mask=level.used,
        **cost_options,
    )


def _optimise(
    cost: CostFunction,
    matrix: np.ndarray,
    unit: float,
    step_tol_um: float,
    max_iter: int,
    ftol: float,
    gtol: float,
) -> tuple[np.ndarray, OptimizeResult, bool]:
    """L-BFGS-B from ``matrix`` in units of ``unit`` um: (params um, result, step stop hit)."""

    # The optimiser works in units of one pixel of the level (um * px_per_um): its
    # first, gradient-direction step has unit length, i.e. about one pixel, so it
    # cannot jump out of the basin of the start (with um units the first step was
    # ~1 um, and SSD on the raw TEM then left the basin in 1 of 5 perturbed starts).
    def scaled(z: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = cost(z * unit)
        return value, grad * unit

    z0 = cost.params(matrix) / unit
    stop = _StepStop(z0, step_tol_um / unit)
    with _single_thread_blas():
        res = minimize(
            scaled,
            z0,
            jac=True,
            method="L-BFGS-B",
            callback=stop,
            options={"maxiter": max_iter, "ftol": ftol, "gtol": gtol, "maxcor": 10},
        )
    return res.x * unit, res, stop.triggered


def _level_record(
    level: _PyramidLevel,
    px_per_um: float,
    cost: CostFunction,
    value: float,
    res: OptimizeResult,
    stopped: bool,
    step_tol_um: float,
    t0: float,
) -> _LevelRecord:
    """The record of a finished level (``px_per_um``: the level's moving sampling)."""
    return _LevelRecord(
        level=int(np.log2(level.factor)),
        px_per_um=px_per_um,
        pixels=cost.n_pixels,
        iterations=int(res.nit),
        evaluations=int(res.nfev),
        cost=float(value),
        converged=stopped or bool(res.success),
        message=f"step below {step_tol_um:g} um" if stopped else str(res.message),
        seconds=time.perf_counter() - t0,
        overlap=float(cost.last_overlap),
    )


def _assemble_result(
    matrix: np.ndarray,
    measure: str,
    records: list[_LevelRecord],
    t_all: float,
    bins: int,
    normalize: bool,
    center: np.ndarray,
    scale: np.ndarray,
) -> RegistrationResult:
    """The result: final matrix and cost (finest level), per-level records and options."""
    levels = [asdict(record) for record in records]
    return RegistrationResult(
        matrix=matrix,
        measure=measure,
        value=records[-1].cost,
        info={
            "levels": levels,
            "overlap": records[-1].overlap,
            "seconds": time.perf_counter() - t_all,
            "bins": bins if measure == "mi" else None,
            "normalize": normalize if measure != "mi" else None,
            "parameterisation": {
                "center_um": center.tolist(),
                "scale_um": scale.tolist(),
            },
        },
    )


def register_affine(
    moving: np.ndarray,
    fixed: np.ndarray,
    start: np.ndarray,
    *,
    moving_px_per_um: float,
    fixed_px_per_um: float,
    measure: str = "ssd",
    weights: np.ndarray | None = None,
    moving_mask: np.ndarray | None = None,
    levels: int = 3,
    bins: int = 32,
    max_iter: int = 200,
    tol: float = 1e-4,
    ftol: float = 1e-12,
    gtol: float = 1e-12,
    normalize: bool = True,
    min_overlap: float = 0.5,
    finest_level: int = 0,
    ssd_contrast_um: float | None = DEFAULT_SSD_CONTRAST_UM,
) -> RegistrationResult:
    """Affine registration of ``moving`` onto ``fixed``, coarse to fine.

    Parameters
    ----------
    moving : ndarray, shape (rows, cols)
        Moving image (e.g. the predicted confocal on the TEM grid, or the TEM), sampled at
        ``moving_px_per_um``; non-finite pixels are ignored.
    fixed : ndarray, shape (rows, cols)
        Fixed image (the confocal crop) at ``fixed_px_per_um``; finite.
    start : ndarray, shape (3, 3)
        Starting moving->fixed affine in um (x, y), e.g. the landmark similarity.
    moving_px_per_um, fixed_px_per_um : float
        Samplings of the two images, px/um.
    measure : {"ssd", "mi", "wssd"}
        Similarity measure (module notes; :func:`make_cost`).
    weights : ndarray, optional
        ``"wssd"`` only (required there): eq. 12 weights in [0, 1] on the moving grid,
        ``w = 1 - ω`` for an uncertainty map ω (:func:`weights_from_uncertainty`).
    moving_mask : ndarray of bool, optional
        Moving pixels to use.
    levels : int
        Pyramid levels (3: 1/4, 1/2, full sampling). Fewer are used when a coarser
        image would be below 32 px on a side.
    bins : int
        MI histogram bins (32, as Mattes et al. and ITK's default setups use).
    max_iter : int
        L-BFGS-B iterations per level (200; the usual run needs 10-60).
    tol : float
        Step tolerance, um: a level ends when no parameter moved by more than
        ``tol · 2^level`` in an iteration (1e-4 um = 0.0015 px at 14.52 px/um, well
        below the accuracy that matters).
    ftol, gtol : float
        L-BFGS-B's relative cost-decrease and projected-gradient tolerances (1e-12:
        effectively off, so that ``tol`` decides).
    normalize : bool
        Standardise intensities for SSD/WSSD (default True; see module notes).
    min_overlap : float
        Minimum fraction of used moving pixels inside the fixed image (0.5): at the start
        (else ValueError) and during the search (else a penalty cost).
    finest_level : int
        The finest level optimised (0: full sampling; ``levels - 1``: the coarsest only,
        a cheap first look, e.g. at the search's candidates).
    ssd_contrast_um : float, optional
        SSD and WSSD only: compare the images locally normalised over a Gaussian of this
        sigma, um (:func:`local_contrast`; module notes; config
        ``registration.ssd_contrast_um``). None: globally standardised intensities (the
        paper's SSD).

    Returns
    -------
    RegistrationResult

    Raises
    ------
    ValueError
        See :func:`make_cost`; also a start that is not a 3x3 affine, or ``levels < 1``.
    """
    t_all = time.perf_counter()
    moving, fixed = contrast_images(
        moving,
        fixed,
        measure,
        moving_px_per_um,
        fixed_px_per_um,
        ssd_contrast_um,
        weights,
        moving_mask,
    )
    moving, fixed, start = _checked_inputs(moving, fixed, start, measure, weights, levels)
    w_img, used = _used_pixels(moving, weights, moving_mask)
    center, scale = _parameterisation(moving.shape, moving_px_per_um, used)  # for all levels
    pyramid = _pyramid(moving, fixed, None if weights is None else w_img, used, levels)
    cost_options = {
        "measure": measure,
        "bins": bins,
        "normalize": normalize,
        "min_overlap": min_overlap,
        "center_um": center,
        "scale_um": scale,
    }
    matrix = start.copy()
    records = []
    for level in reversed(pyramid[min(finest_level, len(pyramid) - 1) :]):  # coarse to fine
        t0 = time.perf_counter()
        cost = _level_cost(level, matrix, moving_px_per_um, fixed_px_per_um, **cost_options)
        unit = level.factor / moving_px_per_um  # the level's pixel, um
        step_tol = tol * level.factor
        x, res, stopped = _optimise(cost, matrix, unit, step_tol, max_iter, ftol, gtol)
        value, _ = cost(x)  # also refreshes the overlap of the final parameters
        matrix = cost.matrix(x)
        px_per_um = moving_px_per_um / level.factor
        records.append(_level_record(level, px_per_um, cost, value, res, stopped, step_tol, t0))
    return _assemble_result(matrix, measure, records, t_all, bins, normalize, center, scale)


def local_contrast(
    image: np.ndarray, px_per_um: float, sigma_um: float, weights: np.ndarray | None = None
) -> np.ndarray:
    """``(image - local mean) / local standard deviation`` over a Gaussian of
    ``sigma_um``; NaN pixels, and everything beyond the image's edges, are left out of the
    local statistics (normalised convolution), and NaN pixels stay NaN. ``weights`` (same
    shape, >= 0) weight each pixel in those statistics (eq. 12's: an uncertain part of a
    prediction does not set its neighbours' normalisation). (Leaving out,
    instead, the moving pixels within 1.3 sigma of an edge, whose statistics differ from
    those of the same place in the larger fixed image, lost a third of the TEM field and
    raised the sparse route's median error on 12 held-out phantom cases from 0.25 to
    0.29 um.)"""
    image = np.asarray(image, float)
    ok = np.isfinite(image)
    sigma = sigma_um * px_per_um
    w = ok.astype(float) if weights is None else np.where(ok, np.asarray(weights, float), 0.0)

    def smooth(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma, mode="constant")

    weight = np.maximum(smooth(w), 1e-12)
    filled = np.where(ok, image, 0.0)
    mean = smooth(w * filled) / weight
    var = smooth(w * (filled - mean) ** 2) / weight
    out = (filled - mean) / np.sqrt(var + 1e-12 + 1e-6 * np.nanvar(image))
    return np.where(ok, out, np.nan)


def contrast_images(
    moving: np.ndarray,
    fixed: np.ndarray,
    measure: str,
    moving_px_per_um: float,
    fixed_px_per_um: float,
    ssd_contrast_um: float | None,
    weights: np.ndarray | None = None,
    moving_mask: np.ndarray | None = None,
    *,
    fixed_too: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The images an SSD or WSSD registration compares with ``ssd_contrast_um``: both
    locally normalised (:func:`local_contrast`), masked moving pixels left out of the
    local statistics and, for WSSD, the others weighted by ``weights``. Unchanged for MI
    or when ``ssd_contrast_um`` is None (and when a mask or weights do not match the
    moving image's shape, which the registration then reports). ``fixed_too=False``
    returns the fixed image as given (:class:`ContrastCache` normalises it once)."""
    if ssd_contrast_um is None or measure not in ("ssd", "wssd"):
        return moving, fixed
    if moving_mask is not None and np.shape(moving_mask) == np.shape(moving):
        moving = np.where(moving_mask, moving, np.nan)
    w = weights if measure == "wssd" and np.shape(weights) == np.shape(moving) else None
    return (
        local_contrast(moving, moving_px_per_um, ssd_contrast_um, w),
        local_contrast(fixed, fixed_px_per_um, ssd_contrast_um) if fixed_too else fixed,
    )


class ContrastCache:
    """:func:`contrast_images` against one fixed image for many registrations: each
    moving image's (and the fixed image's) local contrast is computed once.

    A route registers the same moving image several times (the start search's candidates
    at the coarsest level, then the winner at every level); the local normalisation at
    full sampling is most of a coarse registration's time. Call it with the arguments of
    :func:`contrast_images` after ``fixed``; pass the images it returns to
    :func:`register_affine` with ``ssd_contrast_um=None``. The images are held, so none
    of their ids is reused while the cache lives; do not change them in place.
    """

    def __init__(self, fixed: np.ndarray, fixed_px_per_um: float, ssd_contrast_um: float | None):
        self.fixed = fixed
        self.fixed_px_per_um = fixed_px_per_um
        self.ssd_contrast_um = ssd_contrast_um
        self._fixed_contrast: np.ndarray | None = None
        self._moving: dict[tuple, tuple] = {}

    def serves(
        self, fixed: np.ndarray, fixed_px_per_um: float, ssd_contrast_um: float | None
    ) -> bool:
        """Whether it normalises this very fixed image at this sampling over this sigma."""
        return (
            self.fixed is fixed
            and self.fixed_px_per_um == fixed_px_per_um
            and self.ssd_contrast_um == ssd_contrast_um
        )

    def __call__(
        self,
        moving: np.ndarray,
        measure: str,
        moving_px_per_um: float,
        weights: np.ndarray | None = None,
        moving_mask: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The (moving, fixed) images ``measure`` compares (:func:`contrast_images`)."""
        if self.ssd_contrast_um is None or measure not in ("ssd", "wssd"):
            return moving, self.fixed
        if self._fixed_contrast is None:
            self._fixed_contrast = local_contrast(
                self.fixed, self.fixed_px_per_um, self.ssd_contrast_um
            )
        w = weights if measure == "wssd" else None
        key = (id(moving), id(w), id(moving_mask), float(moving_px_per_um))
        if key not in self._moving:
            image, _ = contrast_images(
                moving,
                self.fixed,
                measure,
                moving_px_per_um,
                self.fixed_px_per_um,
                self.ssd_contrast_um,
                w,
                moving_mask,
                fixed_too=False,
            )
            self._moving[key] = (image, (moving, w, moving_mask))  # held: ids stay unique
        return self._moving[key][0], self._fixed_contrast


# ------------------------------------------------------------------ evaluation helpers


def grid_error_um(a: np.ndarray, b: np.ndarray, shape: tuple[int, int], px_per_um: float) -> float:
    """Mean distance (um) between two moving->fixed transforms over the moving pixel grid.

    Parameters
    ----------
    a, b : ndarray, shape (3, 3)
        Moving->fixed affines in um.
    shape : (int, int)
        Moving image (rows, cols).
    px_per_um : float
        Moving sampling, px/um.

    Returns
    -------
    float
        ``mean_i |a x_i - b x_i|`` over the pixel centres ``x_i`` (x, y) um, in um.
    """
    xy = pixel_centres_um(tuple(shape), px_per_um)
    diff = apply(np.asarray(a, float), xy) - apply(np.asarray(b, float), xy)
    return float(np.mean(np.hypot(diff[:, 0], diff[:, 1])))


def perturb_affine(
    start: np.ndarray,
    rng: np.random.Generator,
    center_um: tuple[float, float] | np.ndarray,
    *,
    max_rotation_deg: float = 4.0,
    max_scale: float = 0.05,
    max_shear: float = 0.03,
    max_translation_um: float = 8.0 / 14.52,
) -> np.ndarray:
    """A random affine perturbation of a start transform (capture-range trials).

    ``start @ P`` where ``P`` acts in the moving frame about ``center_um`` (x, y) um
    (normally the moving image's centre): rotation uniform in ``±max_rotation_deg``,
    scale per axis uniform in ``1 ± max_scale``, shear uniform in ``±max_shear``, and a
    translation uniform over the disc of radius ``max_translation_um`` (um; default
    8 px at the preprocessed 14.52 px/um). Six draws from ``rng``, in this order:
    rotation, scale x, scale y, shear, translation direction, translation radius; so a
    seeded generator gives the same perturbations.

    Returns
    -------
    ndarray, shape (3, 3)
        Perturbed moving->fixed affine in um.
    """
    rotation = rng.uniform(-max_rotation_deg, max_rotation_deg)
    scale = 1.0 + rng.uniform(-max_scale, max_scale, size=2)
    shear = rng.uniform(-max_shear, max_shear)
    angle, radius = rng.uniform(0.0, 2.0 * np.pi), max_translation_um * np.sqrt(rng.uniform())
    translation = (radius * np.cos(angle), radius * np.sin(angle))
    perturbation = affine_matrix(
        rotation_deg=rotation,
        scale=(scale[0], scale[1]),
        shear=shear,
        translation_um=translation,
        center_um=tuple(np.asarray(center_um, float)),
    )
    return np.asarray(start, float) @ perturbation


__all__ = [
    "MEASURES",
    "MI_PERCENTILES",
    "CostFunction",
    "RegistrationResult",
    "grid_error_um",
    "make_cost",
    "perturb_affine",
    "pixel_centres_um",
    "register_affine",
    "weights_from_uncertainty",
]
