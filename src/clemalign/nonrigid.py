"""Non-rigid refinement: a cubic B-spline free-form deformation on top of an affine.

After the affine registration of a moving image on the TEM grid (the TEM, or a predicted
confocal) to the confocal crop, :func:`register_bspline` adds a smooth displacement
field, as the journal version of the paper and elastix's ``BSplineTransform`` do. The
mapping from moving (x, y) um to fixed (x, y) um is

    ``phi(x) = A x + d(x)``,  ``d(x) = sum_k c_k B((x - x_k) / h_x) B((y - y_k) / h_y)``

with ``A`` the given affine (kept fixed), ``B`` the cubic B-spline, ``x_k`` the nodes of
a regular control grid over the moving field and ``c_k`` (2 values per node, fixed-frame
um) the control-point displacements. The displacement is added in the fixed frame, as
the residual of :class:`clemalign.transforms.DeformationField` is.

Design
------
* **Control grid** (:class:`ControlGrid`). The field ``[0, W] x [0, H]`` um (the moving
  image's extent) is cut into ``n = ceil(W / spacing)`` equal intervals per axis (so the
  spacing actually used is ``W / n <= spacing``); nodes sit at ``(k - 1) h`` for
  ``k = 0 .. n + 2``, one node beyond the field on each side, which every cubic basis
  function over the field needs. Outside the field the edge intervals' polynomials are
  extended (the mapping stays smooth; only the field is registered).
* **Cost.** ``measure(phi) + bending_weight * bending(d)`` over the moving pixels, like
  :mod:`clemalign.register` (same intensity handling): ``"ssd"`` on standardised
  intensities (fixed statistics taken under the level's starting mapping), ``"wssd"``
  with eq. 12 weights, ``"mi"`` minus the Mattes mutual information (Parzen joint
  histogram, cubic window on the fixed side, ``bins`` bins). The fixed image is a cubic
  B-spline with its exact gradient (:func:`clemalign.register._sample`); the MI
  histogram is :func:`clemalign.register._mi_histogram`, called with the deformed pixel
  positions. The gradient w.r.t. the control points is exact: each pixel's
  ``dC/dy`` is scattered to its 4 x 4 nodes with the basis weights (pixels entering or
  leaving the overlap ignored, as in ITK).
* **Bending energy** (:func:`bending_energy`): the mean over the field of
  ``|d_xx|² + 2 |d_xy|² + |d_yy|²`` (both components; 1/um²), in closed form from the
  1D Gram matrices of the basis and its first and second derivatives (exact Gauss
  quadrature of the piecewise polynomials), ``E = sum_comp <C, M_y C G2_x> + 2 <C,
  G1_y C G1_x> + <C, G2_y C M_x>``. It is zero for any affine displacement, so the
  regulariser never resists an affine correction, only curvature. ``bending_weight`` is
  therefore in cost units x um² (0 allowed).
* **Coarse to fine.** The image pyramid of :func:`clemalign.register._pyramid` (Gaussian
  σ = 0.5 px, 2 x 2 block means) and a control grid refined with it: by default the
  spacing doubles at each coarser level (elastix's default schedule), or one spacing
  per level is given. With one fine grid at every level, the coarsest level of the
  tests' texture (2 um pixels, where the block means of the two images, taken in
  frames rotated against each other, no longer agree) fitted 0.12-0.19 um of spurious
  displacement without a regulariser, which the finest level did not undo; with the
  doubling schedule 0.015-0.03 um. When the grid changes between
  levels the displacement is carried over by least squares on a dense sample of the
  field (exact when the finer grid nests the coarser, e.g. halved spacings).
* **Optimiser.** L-BFGS-B with the analytic gradient, per level, on the control-point
  displacements divided by the level's pixel size (one optimiser unit is one pixel of
  the level, as in :mod:`clemalign.register`). A level stops when no control point
  moved by more than ``tol · 2^level`` um in an iteration, on scipy's ``ftol``/``gtol``,
  or after ``max_iter`` iterations.
* **Result.** :class:`NonrigidResult` holds the exact spline (``affine``, ``grid``,
  ``coefficients_um``: :meth:`NonrigidResult.mapping`) and its sampled
  :class:`~clemalign.transforms.DeformationField` (``field``, nodes every 0.25 um over
  the field plus the grid's margin; over the TEM pixels of the default data it
  reproduces the spline to 1e-6 um with the default weight, 1e-4 um without a
  regulariser). The moving image is resampled into the fixed frame by
  :func:`warp_with_field` (:meth:`NonrigidResult.warp`), which inverts the mapping by
  fixed-point iteration.

What the default data shows (``python benchmarks/nonrigid.py``)
--------------------------------------------------------------
Ground-truth error (mean distance over the TEM grid to the phantom's deformation, um)
from the affine answers of the registration step, with the defaults (finest spacing
3.5 um, i.e. 7 x 7 nodes over the 13.8 um TEM field; bending weight 100 for MI, 1000
for SSD): MI on the raw TEM -6 % in median (-22 % to +4 %; 0.11-0.31 um -> 0.12-0.28
um), SSD on the sparse prediction -1 % (-3 % to +2 %), 0.3-0.6 s per registration. The
issue's target (30 % below the best affine where the non-affine part exceeds 0.1 um
RMS) is met on no case. The limit is the measure, not the optimiser: at full sampling
the true deformation (fitted by the default grid to 0.01-0.04 um) improves MI on the
raw TEM by at most 0.005 nats (on tem01 it is 0.0003 worse than the affine), and SSD on
the sparse prediction is worse at the truth than at the affine in 4 of 6 cases, while
the truth's bending energy is 0.004-0.036 1/um². A weight small enough to let the
truth win (below 0.06-1.3 for MI) lets the optimiser fit spurious displacement: weight
0 raises the error by 63 % in median (up to +114 %), weight 10 by up to 32 %; started
at the truth without a regulariser the search walks away from it (to 0.12-0.31 um for
MI, 0.55-1.42 um for SSD on the sparse prediction). The defaults are the weights that
gained most without costing any case more than 5 %; single cases move by 5-20 points
between neighbouring weights (x3), and at the default weight the finest spacing (3.5
or 7 um) changes one case by 10 points and the others by 1 or less.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numba import njit
from scipy import ndimage, sparse
from scipy.optimize import minimize
from scipy.sparse.linalg import spsolve

from .register import (
    DEFAULT_SSD_CONTRAST_UM,
    MEASURES,
    _check_measure,
    _fixed_samples,
    _intensity_model,
    _mi_histogram,
    _parzen,
    _pyramid,
    _PyramidLevel,
    _sample,
    _single_thread_blas,
    _spline_coefficients,
    _StepStop,
    _used_pixels,
    contrast_images,
    pixel_centres_um,
)
from .transforms import DeformationField, apply, xy_um_to_rc_px

#: Sampling (um) of the :class:`DeformationField` of a result.
FIELD_SPACING_UM = 0.25
#: Default bending weights (cost units x um²) per measure, chosen by
#: ``benchmarks/nonrigid.py`` on the default data: the largest non-affine gain that never
#: made a case more than 5 % worse (MI on the raw TEM), and no harm (SSD on the sparse
#: prediction, whose SSD optimum is not at the true deformation). The measures differ in
#: scale (MI in nats, about 0.1-0.3; SSD of standardised intensities, about 1).
DEFAULT_BENDING_WEIGHT = {"mi": 100.0, "ssd": 1000.0, "wssd": 1000.0}
#: 4-point Gauss-Legendre rule on [0, 1]: exact for the degree-6 products of the basis.
_GAUSS_T = 0.5 + 0.5 * np.polynomial.legendre.leggauss(4)[0]
_GAUSS_W = 0.5 * np.polynomial.legendre.leggauss(4)[1]


# ------------------------------------------------------------------------ the basis


def _basis(t: np.ndarray, derivative: int = 0) -> np.ndarray:
    """Cubic B-spline weights (N, 4) of nodes ``i - 1 .. i + 2`` at offset ``t`` from ``i``.

    ``derivative`` 0, 1 or 2: the weights' derivatives w.r.t. ``t`` (per knot interval).
    The formulas are the cubic pieces, so ``t`` outside [0, 1] extends them.
    """
    t = np.asarray(t, dtype=np.float64)
    s = 1.0 - t
    if derivative == 0:
        cols = (
            s**3 / 6.0,
            (3.0 * t**3 - 6.0 * t**2 + 4.0) / 6.0,
            (-3.0 * t**3 + 3.0 * t**2 + 3.0 * t + 1.0) / 6.0,
            t**3 / 6.0,
        )
    elif derivative == 1:
        cols = (-0.5 * s**2, 1.5 * t**2 - 2.0 * t, -1.5 * t**2 + t + 0.5, 0.5 * t**2)
    elif derivative == 2:
        cols = (s, 3.0 * t - 2.0, 1.0 - 3.0 * t, t)
    else:
        raise ValueError(f"derivative must be 0, 1 or 2, got {derivative}")
    return np.stack(cols, axis=-1)


def _gram(intervals: int, derivative: int) -> np.ndarray:
    """``G[k, l] = ∫ B_k^(m) B_l^(m) du`` over the ``intervals`` unit knot intervals."""
    n = intervals + 3
    gram = np.zeros((n, n))
    w = _basis(_GAUSS_T, derivative)  # (4 points, 4 nodes)
    local = (w * _GAUSS_W[:, None]).T @ w
    for i in range(intervals):
        gram[i : i + 4, i : i + 4] += local
    return gram


@dataclass(frozen=True)
class ControlGrid:
    """Regular cubic B-spline control grid over a moving field.

    Attributes
    ----------
    field_um : (float, float)
        (width, height) of the moving field, um.
    intervals : (int, int)
        Knot intervals along x and y over the field.
    """

    field_um: tuple[float, float]
    intervals: tuple[int, int]

    @classmethod
    def over_field(cls, field_um: tuple[float, float], spacing_um: float) -> ControlGrid:
        """The grid with the largest spacing ``<= spacing_um`` dividing the field evenly.

        Parameters
        ----------
        field_um : (float, float)
            (width, height) of the moving field, um.
        spacing_um : float
            Wanted node spacing, um (> 0).
        """
        if not (np.isfinite(spacing_um) and spacing_um > 0):
            raise ValueError(f"grid spacing must be a positive number of um, got {spacing_um}")
        w, h = float(field_um[0]), float(field_um[1])
        nx = max(1, math.ceil(w / spacing_um - 1e-9))
        ny = max(1, math.ceil(h / spacing_um - 1e-9))
        return cls((w, h), (nx, ny))

    @property
    def spacing_um(self) -> tuple[float, float]:
        """Node spacing (h_x, h_y), um."""
        return self.field_um[0] / self.intervals[0], self.field_um[1] / self.intervals[1]

    @property
    def shape(self) -> tuple[int, int]:
        """Nodes (rows along y, cols along x): intervals + 3 per axis."""
        return self.intervals[1] + 3, self.intervals[0] + 3

    @property
    def origin_um(self) -> tuple[float, float]:
        """(x, y) of node (0, 0), um: one spacing before the field."""
        hx, hy = self.spacing_um
        return -hx, -hy

    @property
    def size(self) -> int:
        """Number of parameters: 2 per node."""
        return 2 * self.shape[0] * self.shape[1]

    def nodes_um(self) -> np.ndarray:
        """(x, y) um of the nodes, shape (rows, cols, 2)."""
        hx, hy = self.spacing_um
        x = (np.arange(self.shape[1]) - 1.0) * hx
        y = (np.arange(self.shape[0]) - 1.0) * hy
        gx, gy = np.meshgrid(x, y)
        return np.stack([gx, gy], axis=-1)

    def _axis(self, coord: np.ndarray, axis: int, derivative: int):
        h = self.spacing_um[axis]
        n = self.intervals[axis]
        u = coord / h + 1.0
        i = np.clip(np.floor(u), 1, n).astype(np.int64)
        return i - 1, _basis(u - i, derivative) / h**derivative

    def basis(
        self, points_um: np.ndarray, dx: int = 0, dy: int = 0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Where and how much each point depends on the nodes.

        Parameters
        ----------
        points_um : ndarray, shape (N, 2)
            Moving (x, y) um.
        dx, dy : int
            Orders (0-2) of the derivative along x and y (per um).

        Returns
        -------
        ix, iy : ndarray of int64, shape (N,)
            Column and row of the first of the 4 x 4 nodes of each point.
        wx, wy : ndarray, shape (N, 4)
            Weights along x and y: ``d(p) = sum_ab wy[a] wx[b] c[iy + a, ix + b]``.
        """
        pts = np.asarray(points_um, dtype=np.float64).reshape(-1, 2)
        ix, wx = self._axis(pts[:, 0], 0, dx)
        iy, wy = self._axis(pts[:, 1], 1, dy)
        return ix, iy, np.ascontiguousarray(wx), np.ascontiguousarray(wy)

    def displacement(
        self, coefficients_um: np.ndarray, points_um: np.ndarray, dx: int = 0, dy: int = 0
    ) -> np.ndarray:
        """The displacement (or a derivative of it) at moving points, (N, 2) um.

        Parameters
        ----------
        coefficients_um : ndarray, shape (rows, cols, 2)
            Control-point displacements (dx, dy), fixed-frame um.
        points_um : ndarray, shape (N, 2)
            Moving (x, y) um.
        dx, dy : int
            Derivative orders along x and y (per um).
        """
        coef = np.asarray(coefficients_um, dtype=np.float64).reshape(*self.shape, 2)
        ix, iy, wx, wy = self.basis(points_um, dx, dy)
        out = np.zeros((len(ix), 2))
        for a in range(4):
            for b in range(4):
                out += (wy[:, a] * wx[:, b])[:, None] * coef[iy + a, ix + b]
        return out

    def fit(self, displacement, step_um: float | None = None) -> np.ndarray:
        """Least-squares control points reproducing a displacement over the field.

        Parameters
        ----------
        displacement : callable
            Moving points (N, 2) um -> displacements (N, 2) um.
        step_um : float, optional
            Sample spacing over the field (default a quarter of the node spacing).

        Returns
        -------
        ndarray, shape (rows, cols, 2)
            Exact when ``displacement`` is a spline of a grid this one nests.
        """
        step = step_um or min(self.spacing_um) / 4.0
        w, h = self.field_um
        xs = np.linspace(0.0, w, max(2, math.ceil(w / step) + 1))
        ys = np.linspace(0.0, h, max(2, math.ceil(h / step) + 1))
        gx, gy = np.meshgrid(xs, ys)
        pts = np.stack([gx.ravel(), gy.ravel()], 1)
        ix, iy, wx, wy = self.basis(pts)
        rows = np.repeat(np.arange(len(pts)), 16)
        cols = ((iy[:, None, None] + np.arange(4)[None, :, None]) * self.shape[1]) + (
            ix[:, None, None] + np.arange(4)[None, None, :]
        )
        vals = wy[:, :, None] * wx[:, None, :]
        design = sparse.csr_matrix(
            (vals.ravel(), (rows, cols.ravel())), shape=(len(pts), self.shape[0] * self.shape[1])
        )
        target = np.asarray(displacement(pts), dtype=np.float64)
        # normal equations: the B-spline Gram matrix is well conditioned
        out = spsolve((design.T @ design).tocsc(), design.T @ target)
        return np.asarray(out).reshape(*self.shape, 2)


def bending_energy(
    coefficients_um: np.ndarray, grid: ControlGrid, gradient: bool = False
) -> float | tuple[float, np.ndarray]:
    """Mean bending energy of a B-spline displacement over the field, 1/um².

    ``(1 / (W H)) ∫∫ |d_xx|² + 2 |d_xy|² + |d_yy|² dx dy`` over ``[0, W] x [0, H]``,
    summed over the two components, in closed form (module notes). Zero for any affine
    displacement.

    Parameters
    ----------
    coefficients_um : ndarray, shape (rows, cols, 2) or (rows * cols * 2,)
        Control-point displacements, um.
    grid : ControlGrid
    gradient : bool
        Also return the gradient w.r.t. the coefficients (same shape as given; 1/um²
        per um of each coefficient).

    Returns
    -------
    float, or (float, ndarray) with ``gradient``
    """
    coef = np.asarray(coefficients_um, dtype=np.float64)
    c = coef.reshape(*grid.shape, 2)
    mats = _bending_matrices(grid)
    my, g1y, g2y, mx, g1x, g2x, area = mats
    energy = 0.0
    grad = np.empty_like(c)
    for k in range(2):
        ck = c[..., k]
        a = my @ ck @ g2x
        b = g1y @ ck @ g1x
        d = g2y @ ck @ mx
        energy += float(np.sum(ck * (a + 2.0 * b + d)))
        grad[..., k] = 2.0 * (a + 2.0 * b + d)
    energy /= area
    if not gradient:
        return energy
    return energy, (grad / area).reshape(coef.shape)


_BENDING_CACHE: dict[ControlGrid, tuple] = {}


def _bending_matrices(grid: ControlGrid) -> tuple:
    """Scaled 1D Gram matrices (M, G1, G2 along y, then x) and the field area, um²."""
    if grid not in _BENDING_CACHE:
        hx, hy = grid.spacing_um
        nx, ny = grid.intervals
        out = (
            hy * _gram(ny, 0),
            _gram(ny, 1) / hy,
            _gram(ny, 2) / hy**3,
            hx * _gram(nx, 0),
            _gram(nx, 1) / hx,
            _gram(nx, 2) / hx**3,
            grid.field_um[0] * grid.field_um[1],
        )
        if len(_BENDING_CACHE) > 64:
            _BENDING_CACHE.clear()
        _BENDING_CACHE[grid] = out
    return _BENDING_CACHE[grid]


# --------------------------------------------------------------------- compiled kernels


@njit(cache=True)
def _positions(xy_affine, ix, iy, wx, wy, coef, out):
    """Deformed positions ``A x_i + d(x_i)`` (fixed um) into ``out`` (N, 2)."""
    for i in range(xy_affine.shape[0]):
        dx = 0.0
        dy = 0.0
        r0 = iy[i]
        c0 = ix[i]
        for a in range(4):
            for b in range(4):
                w = wy[i, a] * wx[i, b]
                dx += w * coef[r0 + a, c0 + b, 0]
                dy += w * coef[r0 + a, c0 + b, 1]
        out[i, 0] = xy_affine[i, 0] + dx
        out[i, 1] = xy_affine[i, 1] + dy


@njit(cache=True, inline="always")
def _scatter(grad, r0, c0, wx, wy, i, gx, gy):
    for a in range(4):
        for b in range(4):
            w = wy[i, a] * wx[i, b]
            grad[r0 + a, c0 + b, 0] += w * gx
            grad[r0 + a, c0 + b, 1] += w * gy


@njit(cache=True)
def _ssd_ffd(coef_img, rows, cols, ppu, xy, ix, iy, wx, wy, mval, wts, grad):
    """Weighted SSD over the pixels at deformed positions ``xy`` (fixed um).

    Returns ``(sum w r², sum w, n_valid)``; ``grad`` (rows, cols, 2) receives the
    gradient of ``sum w r²`` w.r.t. the control points.
    """
    grad[:] = 0.0
    num = 0.0
    wsum = 0.0
    nvalid = 0
    hi_r = rows - 1.0
    hi_c = cols - 1.0
    for i in range(xy.shape[0]):
        col = xy[i, 0] * ppu - 0.5
        row = xy[i, 1] * ppu - 0.5
        if not (0.0 <= col <= hi_c and 0.0 <= row <= hi_r):
            continue
        nvalid += 1
        w = wts[i]
        if w == 0.0:
            continue
        v, grow, gcol = _sample(coef_img, row, col)
        r = v - mval[i]
        num += w * r * r
        wsum += w
        q = 2.0 * w * r * ppu
        _scatter(grad, iy[i], ix[i], wx, wy, i, q * gcol, q * grow)
    return num, wsum, nvalid


@njit(cache=True)
def _mi_ffd_gradient(ix, iy, wx, wy, kappa, ft, dfx, dfy, valid, logratio, grad):
    """Gradient of ``N · MI`` w.r.t. the control points into ``grad`` (rows, cols, 2).

    Per pixel as :func:`clemalign.register._mi_gradient`, then scattered to its nodes.
    """
    grad[:] = 0.0
    for i in range(ft.shape[0]):
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
        _scatter(grad, iy[i], ix[i], wx, wy, i, gx * a, gy * a)


# ---------------------------------------------------------------------- cost function


class BsplineCost:
    """Cost of one resolution level as a function of the control-point displacements.

    Built by :func:`make_bspline_cost`. Call with the flattened coefficients (um; shape
    ``(grid.size,)``, i.e. ``coefficients_um.ravel()`` of shape (rows, cols, 2)) to get
    ``(cost, gradient per um)``; the cost is ``measure + bending_weight * bending``.

    Attributes
    ----------
    measure : str
    grid : ControlGrid
    bending_weight : float
    n_pixels : int
        Used moving pixels.
    last_overlap, last_measure, last_bending : float
        Fraction of used pixels inside the fixed image, the measure's value and the mean
        bending energy (1/um²) at the last call.
    """

    def __init__(
        self,
        measure: str,
        grid: ControlGrid,
        coef_img: np.ndarray,
        fixed_shape: tuple[int, int],
        fixed_px_per_um: float,
        xy_affine: np.ndarray,
        basis: tuple,
        values: np.ndarray,
        weights: np.ndarray,
        bending_weight: float,
        bins: int,
        fixed_range: tuple[float, float],
        moving_range: tuple[float, float],
        min_overlap: float,
        penalty: float,
    ) -> None:
        self.measure = measure
        self.grid = grid
        self.bending_weight = float(bending_weight)
        self._coef_img = coef_img
        self._rows, self._cols = int(fixed_shape[0]), int(fixed_shape[1])
        self._ppu = float(fixed_px_per_um)
        self._xy_affine = np.ascontiguousarray(xy_affine, dtype=np.float64)
        self._ix, self._iy, self._wx, self._wy = basis
        self._values = np.ascontiguousarray(values, dtype=np.float64)
        self._weights = np.ascontiguousarray(weights, dtype=np.float64)
        self.n_pixels = len(values)
        self._min_overlap = float(min_overlap)
        self._penalty = float(penalty)
        self._bins = int(bins)
        lo, hi = fixed_range
        self._lo = float(lo)
        self._gain = (self._bins - 5.0) / (hi - lo)
        mlo, mhi = moving_range
        kappa = np.floor((self._values - mlo) / (mhi - mlo) * self._bins)
        self._kappa = np.clip(kappa, 0, self._bins - 1).astype(np.int64)
        n = self.n_pixels
        self._xy = np.zeros((n, 2))
        self._ft = np.zeros(n)
        self._dfx = np.zeros(n)
        self._dfy = np.zeros(n)
        self._valid = np.zeros(n, dtype=np.bool_)
        self._grad = np.zeros((*grid.shape, 2))
        self._identity = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
        self.last_overlap = self.last_measure = self.last_bending = float("nan")

    def positions(self, coefficients_um: np.ndarray) -> np.ndarray:
        """Deformed positions (fixed um, (N, 2)) of the used moving pixels."""
        coef = np.ascontiguousarray(coefficients_um, dtype=np.float64).reshape(*self.grid.shape, 2)
        _positions(self._xy_affine, self._ix, self._iy, self._wx, self._wy, coef, self._xy)
        return self._xy.copy()

    def __call__(self, coefficients_um: np.ndarray) -> tuple[float, np.ndarray]:
        """Cost and gradient (per um of each coefficient) at flat ``coefficients_um``."""
        flat = np.ascontiguousarray(coefficients_um, dtype=np.float64)
        coef = flat.reshape(*self.grid.shape, 2)
        _positions(self._xy_affine, self._ix, self._iy, self._wx, self._wy, coef, self._xy)
        value, grad = self._mi() if self.measure == "mi" else self._ssd()
        if self.bending_weight > 0:
            bend, bgrad = bending_energy(coef, self.grid, gradient=True)
            self.last_bending = bend
            value += self.bending_weight * bend
            grad = grad + self.bending_weight * bgrad.ravel()
        else:
            self.last_bending = bending_energy(coef, self.grid)
        return value, grad

    def _ssd(self) -> tuple[float, np.ndarray]:
        num, wsum, nvalid = _ssd_ffd(
            self._coef_img,
            self._rows,
            self._cols,
            self._ppu,
            self._xy,
            self._ix,
            self._iy,
            self._wx,
            self._wy,
            self._values,
            self._weights,
            self._grad,
        )
        self.last_overlap = nvalid / self.n_pixels
        if self.last_overlap < self._min_overlap or wsum <= 0:
            self.last_measure = self._penalty
            return self._penalty, np.zeros(self.grid.size)
        self.last_measure = num / wsum
        return num / wsum, self._grad.ravel() / wsum

    def _mi(self) -> tuple[float, np.ndarray]:
        hist, nvalid = _mi_histogram(
            self._coef_img,
            self._rows,
            self._cols,
            self._ppu,
            self._xy,
            self._kappa,
            self._identity,
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
            self.last_measure = self._penalty
            return self._penalty, np.zeros(self.grid.size)
        joint = hist / nvalid
        pf = joint.sum(axis=1)
        pm = joint.sum(axis=0)
        nz = joint > 0
        mi = float(np.sum(joint[nz] * np.log(joint[nz] / np.outer(pf, pm)[nz])))
        logratio = np.zeros_like(joint)
        logratio[nz] = np.log(joint[nz] / np.broadcast_to(pf[:, None], joint.shape)[nz])
        _mi_ffd_gradient(
            self._ix,
            self._iy,
            self._wx,
            self._wy,
            self._kappa,
            self._ft,
            self._dfx,
            self._dfy,
            self._valid,
            logratio,
            self._grad,
        )
        self.last_measure = -mi
        return -mi, -self._grad.ravel() / nvalid


def _check_affine(affine: np.ndarray) -> np.ndarray:
    """The affine as float64 (3, 3); ValueError when malformed, non-finite or singular."""
    m = np.asarray(affine, dtype=np.float64)
    if m.shape != (3, 3) or not np.allclose(m[2], [0, 0, 1]):
        raise ValueError(f"affine must be a 3x3 affine matrix, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError("affine has non-finite entries")
    det = float(np.linalg.det(m[:2, :2]))
    scale = float(np.abs(m[:2, :2]).max())
    if scale == 0 or abs(det) <= 1e-9 * scale**2:
        raise ValueError(f"affine is singular (determinant {det:g}): it cannot map an image")
    return m


def make_bspline_cost(
    moving: np.ndarray,
    fixed: np.ndarray,
    affine: np.ndarray,
    grid: ControlGrid,
    *,
    moving_px_per_um: float,
    fixed_px_per_um: float,
    measure: str = "mi",
    reference_um: np.ndarray | None = None,
    bending_weight: float = 0.0,
    bins: int = 32,
    weights: np.ndarray | None = None,
    moving_mask: np.ndarray | None = None,
    normalize: bool = True,
    min_overlap: float = 0.5,
) -> BsplineCost:
    """The non-rigid cost of one resolution level (see the module notes).

    Parameters
    ----------
    moving : ndarray, shape (rows, cols)
        Moving image at ``moving_px_per_um``; non-finite pixels are not used.
    fixed : ndarray, shape (rows, cols)
        Fixed image at ``fixed_px_per_um``; must be finite.
    affine : ndarray, shape (3, 3)
        Moving um -> fixed um affine ``A`` (kept fixed).
    grid : ControlGrid
        Control grid over the moving field.
    moving_px_per_um, fixed_px_per_um : float
        Samplings, px/um.
    measure : {"mi", "ssd", "wssd"}
        As in :func:`clemalign.register.make_cost`.
    reference_um : ndarray, shape (rows, cols, 2), optional
        Control points under which the fixed intensity statistics are taken
        (standardisation for SSD/WSSD, histogram range for MI); default zero.
    bending_weight : float
        Weight of the mean bending energy (cost units x um², >= 0).
    bins : int
        MI histogram bins (>= 8).
    weights : ndarray, optional
        ``"wssd"`` only: eq. 12 weights in [0, 1] on the moving grid.
    moving_mask : ndarray of bool, optional
        Moving pixels to use.
    normalize : bool
        SSD/WSSD: standardise intensities (default True).
    min_overlap : float
        Fraction of used pixels that must map inside the fixed image (else ValueError
        at the reference, and a constant penalty during the search).

    Returns
    -------
    BsplineCost

    Raises
    ------
    ValueError
        Unknown measure, bad weights or mask, non-finite fixed image, no contrast,
        singular affine, too little overlap, negative bending weight.
    """
    _check_measure(measure, weights)
    if not (np.isfinite(bending_weight) and bending_weight >= 0):
        raise ValueError(f"bending_weight must be >= 0, got {bending_weight}")
    if bins < 8:
        raise ValueError(f"bins must be at least 8, got {bins}")
    affine = _check_affine(affine)
    moving = np.asarray(moving, dtype=np.float64)
    fixed = np.asarray(fixed, dtype=np.float64)
    if fixed.ndim != 2:
        raise ValueError(f"fixed image must be 2D, got shape {fixed.shape}")
    if not np.all(np.isfinite(fixed)):
        raise ValueError("fixed image has non-finite pixels")
    w_img, used = _used_pixels(moving, weights, moving_mask)
    xy = pixel_centres_um(moving.shape, moving_px_per_um)[used.ravel()]
    values = moving[used]
    w = w_img[used]
    basis = grid.basis(xy)
    xy_affine = apply(affine, xy)
    ref = np.zeros((*grid.shape, 2)) if reference_um is None else np.asarray(reference_um)
    mapped = xy_affine + grid.displacement(ref, xy)
    f_values, inside = _fixed_samples(fixed, fixed_px_per_um, mapped)
    overlap = inside.mean()
    if overlap < min_overlap or inside.sum() < 16:
        raise ValueError(
            f"no overlap: only {overlap:.1%} of the moving pixels map inside the fixed "
            f"image under the start (minimum {min_overlap:.0%})"
        )
    fixed, values, fixed_range, moving_range, penalty = _intensity_model(
        measure, fixed, values, w, f_values, inside, normalize
    )
    return BsplineCost(
        measure=measure,
        grid=grid,
        coef_img=_spline_coefficients(fixed),
        fixed_shape=fixed.shape,
        fixed_px_per_um=fixed_px_per_um,
        xy_affine=xy_affine,
        basis=basis,
        values=values,
        weights=w,
        bending_weight=bending_weight,
        bins=bins,
        fixed_range=fixed_range,
        moving_range=moving_range,
        min_overlap=min_overlap,
        penalty=penalty,
    )


# ------------------------------------------------------------------------ the result


@dataclass
class NonrigidResult:
    """Outcome of :func:`register_bspline`.

    Attributes
    ----------
    field : DeformationField
        The moving um -> fixed um mapping sampled every :data:`FIELD_SPACING_UM` um over
        the moving field plus one control spacing of margin (``field.apply(points)``).
    affine : ndarray, shape (3, 3)
        The affine the displacement was added to (moving um -> fixed um).
    grid : ControlGrid
        The finest level's control grid.
    coefficients_um : ndarray, shape (rows, cols, 2)
        Its control-point displacements (dx, dy), fixed-frame um.
    measure : str
    value : float
        Final cost at the finest level (measure + bending_weight * bending energy).
    info : dict
        ``levels``: per level, coarse to fine (``level``, ``px_per_um``, ``pixels``,
        ``grid_nodes`` (rows, cols), ``grid_spacing_um``, ``iterations``,
        ``evaluations``, ``cost``, ``measure_value``, ``bending``, ``converged``,
        ``message``, ``seconds``, ``overlap``); ``seconds`` (total), ``bending`` (mean
        bending energy, 1/um²), ``displacement_rms_um`` (of the spline part over the
        moving pixels), ``min_jacobian_ratio`` (smallest local area change over the
        moving pixels relative to the affine's; <= 0 means folding), and the options.
    """

    field: DeformationField
    affine: np.ndarray
    grid: ControlGrid
    coefficients_um: np.ndarray
    measure: str
    value: float
    info: dict = field(default_factory=dict)

    def displacement(self, points_um: np.ndarray) -> np.ndarray:
        """The B-spline part ``d`` (N, 2) fixed-frame um at moving points (N, 2) um."""
        return self.grid.displacement(self.coefficients_um, points_um)

    def mapping(self, points_um: np.ndarray) -> np.ndarray:
        """Exact ``A x + d(x)``: moving points (N, 2) um -> fixed points (N, 2) um."""
        pts = np.asarray(points_um, dtype=np.float64).reshape(-1, 2)
        return apply(self.affine, pts) + self.displacement(pts)

    def bending_energy(self) -> float:
        """Mean bending energy of the displacement over the field, 1/um²."""
        return float(bending_energy(self.coefficients_um, self.grid))

    def warp(
        self,
        moving: np.ndarray,
        moving_px_per_um: float,
        fixed_shape: tuple[int, int],
        fixed_px_per_um: float,
        order: int = 1,
        cval: float = np.nan,
    ) -> np.ndarray:
        """The moving image resampled onto the fixed grid (:func:`warp_with_field`)."""
        return warp_with_field(
            moving, moving_px_per_um, self.field, fixed_shape, fixed_px_per_um, order, cval
        )


def warp_with_field(
    moving: np.ndarray,
    moving_px_per_um: float,
    deformation: DeformationField,
    fixed_shape: tuple[int, int],
    fixed_px_per_um: float,
    order: int = 1,
    cval: float = np.nan,
    iterations: int = 30,
) -> np.ndarray:
    """Resample a moving image onto the fixed grid through a moving -> fixed field.

    Each fixed pixel centre ``y`` is pulled back by solving ``A x + r(x) = y`` by the
    fixed-point iteration ``x <- A⁻¹ (y - r(x))`` (``A``, ``r``: the field's affine and
    residual), which converges when the residual's Jacobian is small against ``A``, as
    for any registration-sized deformation; fixed pixels whose pull-back has not
    converged to 1e-4 um, or falls outside the moving image, get ``cval``.

    Parameters
    ----------
    moving : ndarray, shape (rows, cols)
        Moving image at ``moving_px_per_um``.
    moving_px_per_um : float
        Moving sampling, px/um.
    deformation : DeformationField
        Moving um -> fixed um (e.g. :attr:`NonrigidResult.field`).
    fixed_shape : (int, int)
        Output (rows, cols).
    fixed_px_per_um : float
        Output sampling, px/um.
    order : int
        Interpolation order of the moving image.
    cval : float
        Value outside the moving image.
    iterations : int
        Fixed-point iterations.

    Returns
    -------
    ndarray of float32, shape ``fixed_shape``
    """
    y = pixel_centres_um(tuple(fixed_shape), fixed_px_per_um)
    inv = np.linalg.inv(np.asarray(deformation.affine, dtype=np.float64))
    x = apply(inv, y)
    for _ in range(iterations):
        x = apply(inv, y - deformation.residual(x))
    miss = np.hypot(*(deformation.apply(x) - y).T) > 1e-4
    rc = xy_um_to_rc_px(x, moving_px_per_um).T
    out = ndimage.map_coordinates(
        np.asarray(moving, np.float64), rc, order=order, mode="constant", cval=cval
    )
    out[miss] = cval
    return out.reshape(fixed_shape).astype(np.float32)


# ---------------------------------------------------------------------- registration


def _spacings(grid_spacing_um: float | Sequence[float], n_levels: int) -> list[float]:
    """One grid spacing per pyramid level, coarse to fine (a scalar doubles per level)."""
    if np.ndim(grid_spacing_um) == 0:
        return [float(grid_spacing_um) * 2.0**level for level in reversed(range(n_levels))]
    spacings = [float(s) for s in grid_spacing_um]
    if len(spacings) < n_levels:  # the pyramid may have fewer levels than asked
        raise ValueError(
            f"grid_spacing_um has {len(spacings)} entries for {n_levels} pyramid levels"
        )
    return spacings[len(spacings) - n_levels :]


def _jacobian_ratio(
    affine: np.ndarray, grid: ControlGrid, coef: np.ndarray, xy: np.ndarray
) -> float:
    """Smallest det(d phi / dx) over ``xy`` relative to det(A)."""
    gx = grid.displacement(coef, xy, dx=1)
    gy = grid.displacement(coef, xy, dy=1)
    lin = affine[:2, :2]
    j00 = lin[0, 0] + gx[:, 0]
    j01 = lin[0, 1] + gy[:, 0]
    j10 = lin[1, 0] + gx[:, 1]
    j11 = lin[1, 1] + gy[:, 1]
    return float(np.min((j00 * j11 - j01 * j10) / np.linalg.det(lin)))


def register_bspline(
    moving: np.ndarray,
    fixed: np.ndarray,
    affine: np.ndarray,
    *,
    moving_px_per_um: float,
    fixed_px_per_um: float,
    measure: str = "mi",
    grid_spacing_um: float | Sequence[float] = 3.5,
    levels: int = 3,
    finest_level: int = 0,
    bending_weight: float | None = None,
    bins: int = 32,
    max_iter: int = 200,
    tol: float = 1e-3,
    ftol: float = 1e-9,
    gtol: float = 1e-9,
    weights: np.ndarray | None = None,
    moving_mask: np.ndarray | None = None,
    normalize: bool = True,
    min_overlap: float = 0.5,
    initial_displacement=None,
    ssd_contrast_um: float | None = DEFAULT_SSD_CONTRAST_UM,
) -> NonrigidResult:
    """Refine an affine registration by a cubic B-spline free-form deformation.

    Parameters
    ----------
    moving : ndarray, shape (rows, cols)
        Moving image (the TEM or a predicted confocal on the TEM grid) at
        ``moving_px_per_um``; non-finite pixels are ignored.
    fixed : ndarray, shape (rows, cols)
        Fixed image (the confocal crop) at ``fixed_px_per_um``; finite.
    affine : ndarray, shape (3, 3)
        Moving um -> fixed um affine from the affine registration; kept fixed, the
        displacement is added to it.
    moving_px_per_um, fixed_px_per_um : float
        Samplings, px/um.
    measure : {"mi", "ssd", "wssd"}
        Similarity measure, as in :func:`clemalign.register.register_affine` (``"wssd"``
        needs ``weights``).
    grid_spacing_um : float or sequence of float
        Control-point spacing, um, at the finest level; it doubles at each coarser level
        (elastix's default schedule), so the coarse, smoothed images do not steer fine
        grids. Or one value per pyramid level from coarse to fine. The field is cut
        into equal intervals no longer than the spacing (at least one).
    levels : int
        Image pyramid levels (as :func:`clemalign.register.register_affine`).
    finest_level : int
        The last pyramid level registered (0: full sampling; 1: half, ...): the
        displacement is smooth on the control grid, and the finest TEM detail may have
        no counterpart in the fixed image.
    bending_weight : float, optional
        Weight of the mean bending energy (1/um²) in the cost; cost units x um², >= 0
        (0: no regulariser). Default :data:`DEFAULT_BENDING_WEIGHT` of the measure.
    bins : int
        MI histogram bins.
    max_iter : int
        L-BFGS-B iterations per level.
    tol : float
        Step tolerance, um: a level ends when no control point moved by more than
        ``tol · 2^level`` in an iteration.
    ftol, gtol : float
        L-BFGS-B's relative cost-decrease and projected-gradient tolerances.
    weights : ndarray, optional
        ``"wssd"`` only: eq. 12 weights in [0, 1] on the moving grid.
    moving_mask : ndarray of bool, optional
        Moving pixels to use.
    normalize : bool
        Standardise intensities for SSD/WSSD.
    min_overlap : float
        Minimum fraction of used moving pixels inside the fixed image.
    initial_displacement : callable, optional
        Start from this displacement instead of zero: moving points (N, 2) um ->
        fixed-frame displacements (N, 2) um added to ``affine`` (e.g. a previous
        result's :meth:`NonrigidResult.displacement`); fitted to the coarsest grid.
    ssd_contrast_um : float, optional
        SSD and WSSD only: compare locally normalised images, as
        :func:`clemalign.register.register_affine` does.

    Returns
    -------
    NonrigidResult

    Raises
    ------
    ValueError
        Unknown measure; non-finite fixed image; an affine that is not 3x3, non-finite
        or singular; ``levels < 1``; a non-positive grid spacing; a negative bending
        weight; images that are not 2D, have no contrast or do not overlap.
    """
    t_all = time.perf_counter()
    _check_measure(measure, weights)
    affine = _check_affine(affine)
    if bending_weight is None:
        bending_weight = DEFAULT_BENDING_WEIGHT[measure]
    if levels < 1:
        raise ValueError(f"levels must be at least 1, got {levels}")
    if not (np.isfinite(bending_weight) and bending_weight >= 0):
        raise ValueError(f"bending_weight must be >= 0, got {bending_weight}")
    moving = np.asarray(moving, dtype=np.float64)
    fixed = np.asarray(fixed, dtype=np.float64)
    if moving.ndim != 2 or fixed.ndim != 2:
        raise ValueError(f"images must be 2D, got {moving.shape} and {fixed.shape}")
    if not np.all(np.isfinite(fixed)):
        raise ValueError("fixed image has non-finite pixels")
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
    w_img, used = _used_pixels(moving, weights, moving_mask)
    field_um = (moving.shape[1] / moving_px_per_um, moving.shape[0] / moving_px_per_um)
    if not 0 <= finest_level < levels:
        raise ValueError(f"finest_level must be in [0, levels), got {finest_level}")
    pyramid = _pyramid(moving, fixed, None if weights is None else w_img, used, levels)
    pyramid = [level for level in pyramid if level.factor >= 2**finest_level] or pyramid[-1:]
    spacings = _spacings(grid_spacing_um, len(pyramid))
    grids = [ControlGrid.over_field(field_um, s) for s in spacings]
    coef = np.zeros((*grids[0].shape, 2))
    if initial_displacement is not None:
        coef = grids[0].fit(initial_displacement)
    previous = grids[0]
    records = []
    for level, grid in zip(reversed(pyramid), grids, strict=True):  # coarse to fine
        t0 = time.perf_counter()
        if grid != previous:  # carry the displacement over to the new grid
            coef = grid.fit(lambda p, g=previous, c=coef: g.displacement(c, p))
        previous = grid
        cost = _level_cost(
            level,
            affine,
            grid,
            coef,
            moving_px_per_um,
            fixed_px_per_um,
            measure=measure,
            bending_weight=bending_weight,
            bins=bins,
            normalize=normalize,
            min_overlap=min_overlap,
        )
        unit = level.factor / moving_px_per_um  # the level's pixel, um
        coef, res, stopped = _optimise(cost, coef, unit, tol * level.factor, max_iter, ftol, gtol)
        value, _ = cost(coef.ravel())
        records.append(
            {
                "level": int(np.log2(level.factor)),
                "px_per_um": moving_px_per_um / level.factor,
                "pixels": cost.n_pixels,
                "grid_nodes": list(grid.shape),
                "grid_spacing_um": list(grid.spacing_um),
                "iterations": int(res.nit),
                "evaluations": int(res.nfev),
                "cost": float(value),
                "measure_value": float(cost.last_measure),
                "bending": float(cost.last_bending),
                "converged": stopped or bool(res.success),
                "message": (
                    f"step below {tol * level.factor:g} um" if stopped else str(res.message)
                ),
                "seconds": time.perf_counter() - t0,
                "overlap": float(cost.last_overlap),
            }
        )
    return _assemble(
        affine,
        previous,
        coef,
        measure,
        records,
        moving.shape,
        moving_px_per_um,
        used,
        t_all,
        options={
            "bending_weight": float(bending_weight),
            "grid_spacing_um": spacings,
            "bins": bins if measure == "mi" else None,
            "normalize": normalize if measure != "mi" else None,
            "tol_um": tol,
        },
    )


def _level_cost(
    level: _PyramidLevel,
    affine: np.ndarray,
    grid: ControlGrid,
    coef: np.ndarray,
    moving_px_per_um: float,
    fixed_px_per_um: float,
    **options,
) -> BsplineCost:
    """The level's cost, intensity statistics under the current control points."""
    return make_bspline_cost(
        level.moving,
        level.fixed,
        affine,
        grid,
        moving_px_per_um=moving_px_per_um / level.factor,
        fixed_px_per_um=fixed_px_per_um / level.factor,
        reference_um=coef,
        weights=None if level.weights is None else np.clip(level.weights, 0.0, 1.0),
        moving_mask=level.used,
        **options,
    )


def _optimise(
    cost: BsplineCost,
    coef: np.ndarray,
    unit: float,
    step_tol_um: float,
    max_iter: int,
    ftol: float,
    gtol: float,
):
    """L-BFGS-B over the control points in units of ``unit`` um: (coef, result, step stop)."""

    def scaled(z: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = cost(z * unit)
        return value, grad * unit

    z0 = coef.ravel() / unit
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
    return (res.x * unit).reshape(coef.shape), res, stop.triggered


def _assemble(
    affine: np.ndarray,
    grid: ControlGrid,
    coef: np.ndarray,
    measure: str,
    records: list[dict],
    shape: tuple[int, int],
    moving_px_per_um: float,
    used: np.ndarray,
    t_all: float,
    options: dict,
) -> NonrigidResult:
    """The result: exact spline, its sampled field, and the record."""

    def mapping(points: np.ndarray) -> np.ndarray:
        return apply(affine, points) + grid.displacement(coef, points)

    margin = FIELD_SPACING_UM * math.ceil(max(grid.spacing_um) / FIELD_SPACING_UM)
    deformation = DeformationField.from_mapping(
        mapping, field_um=grid.field_um, spacing_um=FIELD_SPACING_UM, margin_um=margin
    )
    xy = pixel_centres_um(shape, moving_px_per_um)[used.ravel()]
    disp = grid.displacement(coef, xy)
    info = {
        "levels": records,
        "seconds": time.perf_counter() - t_all,
        "bending": float(bending_energy(coef, grid)),
        "displacement_rms_um": float(np.sqrt(np.mean(np.sum(disp**2, axis=1)))),
        "min_jacobian_ratio": _jacobian_ratio(affine, grid, coef, xy),
        **options,
    }
    return NonrigidResult(
        field=deformation,
        affine=affine.copy(),
        grid=grid,
        coefficients_um=coef,
        measure=measure,
        value=records[-1]["cost"],
        info=info,
    )


__all__ = [
    "DEFAULT_BENDING_WEIGHT",
    "FIELD_SPACING_UM",
    "MEASURES",
    "BsplineCost",
    "ControlGrid",
    "NonrigidResult",
    "bending_energy",
    "make_bspline_cost",
    "register_bspline",
    "warp_with_field",
]
