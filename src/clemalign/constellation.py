"""Bead matching by local constellations: triangles of candidates hashed by side lengths.

Hypotheses from each point's few nearest neighbours (Algorithm 1, and the earlier
robust mode) fail among spurious candidates (bright puncta in cells): corresponding
beads are rarely each other's nearest neighbours there. :func:`constellation_register`
matches *triangles* (a point and two of its
``neighbours`` nearest neighbours) in both images, so a true triangle survives a few
interleaved distractors. Points are (x, y) in um; the transform maps the moving (source)
candidates onto the fixed (target) ones.

1. **Triangles.** Each point with every pair of its ``neighbours`` nearest neighbours;
   sides outside ``[min_side_um, max_side_um]`` and slivers (area below 10 % of the
   longest side squared) are dropped. Source vertices are ordered by decreasing
   opposite side; target triangles are kept in every vertex order an admissible map of
   a so-ordered triangle can produce. Side lengths ignore orientation, so mirrored
   matches are among them.
2. **Descriptors.** Log side lengths ``g`` in vertex order: the shape
   ``(g0 - g2, g1 - g2)`` is invariant to rotation, mirror and scale, the size
   ``mean(g)`` carries the scale. A linear part with singular values ``s1 >= s2``
   multiplies each side by a factor in ``[s2, s1]``: every log side moves by
   ``log s``, ``s`` in ``scale_range``, and the three moves differ by at most
   ``log(max_anisotropy)`` (0.26 for 1.3). Corresponding shapes therefore differ by at
   most ``log(max_anisotropy)`` per coordinate, sizes by the log scale range, both
   widened by the relative localisation error ``m = tolerance_um / shortest side``
   (capped at 0.3). The target descriptors sit on a grid of shape cells sorted by size
   (:class:`_DescriptorIndex`); a query visits the few cells of its box and
   binary-searches the size range, then the exact test on the three log-side changes
   applies.
3. **Hypotheses.** The affine of the three vertex pairs (closed form on the edge
   vectors), rejected when a singular value leaves ``scale_range`` or their ratio
   exceeds ``max_anisotropy`` (bounds widened by ``exp(m)``), or, without
   ``allow_mirror``, when the determinant is negative.
4. **Screening with a local refit.** Each hypothesis maps the ``n_first`` source points
   nearest the triangle's centroid; one counts if a target lies within its prediction
   tolerance ``tolerance_um * sqrt(1 + h)``, ``h`` the sum of its squared barycentric
   coordinates (the variance factor of a point predicted by a 3-point affine; points
   with ``h > 9`` are not used). If more count than chance predicts, the affine is
   re-fitted by least squares on the vertices and those points and the ``n_probes``
   nearest points are tested again with the new fit's leverage ``h``. The score is the
   surprise ``-log P(Poisson(expected) >= hits)``, ``expected`` the chance hits (target
   density x tolerance discs). This compiled step (numba, parallel over source
   triangles, each writing its own row: deterministic) keeps the
   ``keep_per_triangle`` best hypotheses of each source triangle; source triangles go
   in a seeded random order, in batches, until ``max_hypotheses`` have been screened.
5. **Refinement.** The ``n_refine`` best are recomputed exactly
   (:func:`clemalign.pointmatch.affines_from_triplets`) and re-fitted together: least
   squares over every source point within its prediction tolerance of its nearest
   target, ``h`` from the current fit, so the accepted zone grows from the triangle to
   the field; the better half goes on each round. Among those whose linear part stays
   within the prior (bounds widened by 5 %), the consensus (source points with a
   distinct target within ``tolerance_um``) picks the winner, polished by
   :func:`clemalign.pointmatch.polish_affine` (mutual nearest pairs within
   ``tolerance_um``, outlier trim, least squares, until the pairs stop changing).

Nothing here decides whether the match is significant: ``info`` holds the number of
consistent pairs, the tolerance, the target density and the number of hypotheses tried
for a test on top (:func:`clemalign.fiducials.robust_match` runs this matcher on the
most bead-like source candidates and tests each answer).
Limits (measured with the prototype's timing benchmark): with 20 true pairs among
uniformly spread candidates in a 20 x 20 um field, matches are found reliably up to ~100
candidates per image and rarely beyond ~150: the probes near a triangle are then mostly
distractors. With 300 uniformly spread candidates a tolerance of 0.15 um already
admits ~16 chance pairs per hypothesis, so 15-20 true pairs no longer stand out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import permutations

import numba
import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError, cKDTree

from .pointmatch import (
    FiducialError,
    FiducialResult,
    affines_from_triplets,
    check_points,
    polish_affine,
)

#: Every vertex order of a triangle.
_ORDERS = np.array(list(permutations(range(3))))

#: Smallest accepted triangle area as a fraction of the longest side squared (slivers
#: give ill-conditioned affines).
_MIN_SHAPE = 0.1

#: Points whose prediction variance factor ``h`` exceeds this are too far from the
#: fitted points to test a hypothesis.
_MAX_LEVERAGE = 9.0

#: Cap on the relative localisation error of a triangle side (log units).
_MAX_MARGIN = 0.3

#: Factor by which a refined hypothesis may exceed the prior's bounds (its fit uses
#: noisy points; beyond this it is not a solution of the stated problem).
_PRIOR_SLACK = 1.05


@dataclass(frozen=True)
class _Prior:
    """Admissible linear parts: singular values in ``[scale_lo, scale_hi]``, their ratio
    at most ``anisotropy``, a negative determinant only with ``allow_mirror``."""

    scale_lo: float
    scale_hi: float
    anisotropy: float
    allow_mirror: bool

    def admits(self, linear: np.ndarray, slack: float) -> np.ndarray:
        """Which linear parts (H, 2, 2) are admissible, bounds widened by ``slack``."""
        s = np.linalg.svd(linear, compute_uv=False)
        ok = (s[:, 0] <= self.scale_hi * slack) & (s[:, 1] * slack >= self.scale_lo)
        ok &= s[:, 0] <= self.anisotropy * slack * s[:, 1]
        if not self.allow_mirror:
            ok &= np.linalg.det(linear) > 0
        return ok

    def bounds(self) -> np.ndarray:
        """log scale low, log scale high, log anisotropy, scale low, scale high,
        anisotropy (for the kernel)."""
        lo, hi, an = self.scale_lo, self.scale_hi, self.anisotropy
        return np.array([np.log(lo), np.log(hi), np.log(an), lo, hi, an])


# ---------------------------------------------------------------------- triangles


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _side_lengths(points: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Side opposite each vertex of triangles ``tri`` (T, 3) -> (T, 3), um."""
    p = points[tri]
    return np.stack(
        [
            np.hypot(*(p[:, 1] - p[:, 2]).T),
            np.hypot(*(p[:, 0] - p[:, 2]).T),
            np.hypot(*(p[:, 0] - p[:, 1]).T),
        ],
        axis=1,
    )


def neighbour_triangles(
    points: np.ndarray, neighbours: int, min_side_um: float, max_side_um: float
) -> np.ndarray:
    """Triangles of each point and two of its ``neighbours`` nearest neighbours.

    Parameters
    ----------
    points : ndarray, shape (N, 2)
        Candidates (x, y), um.
    neighbours : int
        Neighbourhood size.
    min_side_um, max_side_um : float
        Accepted side lengths, um.

    Returns
    -------
    ndarray, shape (T, 3) of int
        Vertex indices (ascending), each triangle once; slivers (area below 10 % of the
        longest side squared) removed.
    """
    k = min(neighbours, len(points) - 1)
    _, nb = cKDTree(points).query(points, k=k + 1, distance_upper_bound=max_side_um)
    nb = nb.reshape(len(points), k + 1)[:, 1:]
    ia, ib = np.triu_indices(k, 1)
    centre = np.repeat(np.arange(len(points)), len(ia))
    tri = np.stack([centre, nb[:, ia].ravel(), nb[:, ib].ravel()], axis=1)
    tri = tri[(tri < len(points)).all(axis=1)]  # neighbours beyond max_side_um
    tri = np.unique(np.sort(tri, axis=1), axis=0)
    sides = _side_lengths(points, tri)
    area = 0.5 * np.abs(
        _cross(points[tri[:, 1]] - points[tri[:, 0]], points[tri[:, 2]] - points[tri[:, 0]])
    )
    longest = sides.max(axis=1)
    keep = (sides.min(axis=1) >= min_side_um) & (longest <= max_side_um)
    return tri[keep & (area >= _MIN_SHAPE * longest**2)]


def _source_order(points: np.ndarray, tri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ordered by decreasing opposite side; returns triangles and log sides."""
    sides = _side_lengths(points, tri)
    order = np.argsort(-sides, axis=1, kind="stable")
    return np.take_along_axis(tri, order, 1), np.log(np.take_along_axis(sides, order, 1))


def _target_orders(
    points: np.ndarray, tri: np.ndarray, slack: float
) -> tuple[np.ndarray, np.ndarray]:
    """The vertex orders in which the log sides decrease, each step allowed to rise by
    ``slack`` (what an admissible map does to a source-ordered triangle); returns
    triangles and log sides."""
    tri = tri[:, _ORDERS].reshape(-1, 3)
    g = np.log(_side_lengths(points, tri))
    keep = (g[:, 0] + slack >= g[:, 1]) & (g[:, 1] + slack >= g[:, 2])
    return tri[keep], g[keep]


@dataclass(frozen=True)
class _DescriptorIndex:
    """Target triangles sorted for descriptor box queries.

    The shape ``(g0 - g2, g1 - g2)`` (log side ratios, shifted by ``offset``) is binned
    in square cells of side ``cell``; entries are sorted by cell, then by size
    ``mean(g)``, and ``cell_start`` delimits the cells.
    """

    tri: np.ndarray
    log_sides: np.ndarray
    size: np.ndarray
    cell_start: np.ndarray
    ncell: int
    cell: float
    offset: float

    @property
    def grid(self) -> np.ndarray:
        """ncell, cell, offset (for the kernel)."""
        return np.array([self.ncell, self.cell, self.offset])

    @classmethod
    def build(cls, tri: np.ndarray, log_sides: np.ndarray, cell: float, offset: float):
        shape = log_sides[:, :2] - log_sides[:, 2:]
        size = log_sides.mean(axis=1)
        cells = np.floor((shape + offset) / cell).astype(np.int64)
        ncell = int(cells.max(initial=0)) + 2
        key = cells[:, 0] * ncell + cells[:, 1]
        order = np.lexsort((size, key))
        cell_start = np.searchsorted(key[order], np.arange(ncell * ncell + 1))
        return cls(
            np.ascontiguousarray(tri[order]),
            np.ascontiguousarray(log_sides[order]),
            np.ascontiguousarray(size[order]),
            cell_start.astype(np.int64),
            ncell,
            float(cell),
            float(offset),
        )


# ----------------------------------------------------------------------- probes


class _TargetRaster:
    """Distance to the nearest target (and its index) on a raster over the targets.

    Distances from pixel centres, in units of ``tolerance_um / 16``, are stored as
    ``uint8`` (capped at 255) so that the raster stays in the processor's cache (the
    probe tests read it at random); the pixel is a quarter of the tolerance (error below
    0.2 tolerance: screening only). A one-pixel border holds 255 so that points beyond
    the raster, clipped onto it, find nothing.
    """

    def __init__(self, points: np.ndarray, tolerance_um: float, margin_um: float) -> None:
        extent = points.max(axis=0) - points.min(axis=0) + 2 * margin_um
        pixel = max(tolerance_um / 4.0, float(extent.max()) / 1024.0)
        self.unit = tolerance_um / 16.0
        self.origin = points.min(axis=0) - margin_um - pixel
        self.pixel = pixel
        cols, rows = (np.ceil(extent / pixel).astype(int) + 3).tolist()
        self.shape = (rows, cols)
        cr = np.floor((points - self.origin) / pixel).astype(np.int64)
        empty = np.ones(self.shape, dtype=bool)
        empty[cr[:, 1], cr[:, 0]] = False
        label = np.full(self.shape, -1, dtype=np.int64)
        label[cr[:, 1], cr[:, 0]] = np.arange(len(points))
        _, (ri, ci) = ndimage.distance_transform_edt(empty, return_indices=True)
        nearest = label[ri, ci]
        yy, xx = np.mgrid[0:rows, 0:cols]
        dist = np.hypot(
            self.origin[0] + (xx + 0.5) * pixel - points[nearest, 0],
            self.origin[1] + (yy + 0.5) * pixel - points[nearest, 1],
        )
        code = np.minimum(np.floor(dist / self.unit), 255).astype(np.uint8)
        code[[0, -1], :] = 255
        code[:, [0, -1]] = 255
        self.code = np.ascontiguousarray(code.ravel())
        self.nearest = np.ascontiguousarray(nearest.ravel().astype(np.int32))

    @property
    def geometry(self) -> np.ndarray:
        """origin x, origin y, pixel, rows, cols, code unit (for the kernel)."""
        return np.array([*self.origin, self.pixel, *self.shape, self.unit], dtype=float)

    def codes(self, tau2: np.ndarray) -> np.ndarray:
        """Largest accepted code for squared tolerances; negative values (flags) pass."""
        code = np.minimum(np.floor(np.sqrt(np.maximum(tau2, 0.0)) / self.unit), 254)
        return np.where(tau2 < 0, np.round(tau2), code).astype(np.int16)


def _density_per_um2(points: np.ndarray) -> float:
    """Points per um^2 over their convex hull."""
    try:
        area = ConvexHull(points).volume
    except QhullError:
        area = 0.0
    return len(points) / max(area, 1e-12)


def _barycentric_leverage(points: np.ndarray, tri: np.ndarray, probes: np.ndarray) -> np.ndarray:
    """Sum of squared barycentric coordinates of probes (T, K) in triangles (T, 3): the
    variance factor of a point predicted by the triangle's exact affine."""
    v0 = points[tri[:, 0]]
    e1, e2 = points[tri[:, 1]] - v0, points[tri[:, 2]] - v0
    det = _cross(e1, e2)[:, None]
    rel = points[probes] - v0[:, None]
    l1 = _cross(rel, e2[:, None]) / det
    l2 = _cross(e1[:, None], rel) / det
    return l1**2 + l2**2 + (1.0 - l1 - l2) ** 2


@dataclass(frozen=True)
class _Probes:
    """Source points that test the hypotheses of each source triangle.

    ``index`` (T, K): the points nearest the triangle's centroid, nearest first.
    ``accept`` (T, K): raster code up to which a probe counts under the triangle's own
    affine (-1 beyond ``h = 9``, -2 for the triangle's vertices). ``first_expected``
    (T,): chance hits among the first ``n_first``.
    """

    index: np.ndarray
    accept: np.ndarray
    first_expected: np.ndarray
    n_first: int

    @classmethod
    def build(
        cls, src, tri, n_probes, n_first, tolerance_um, density, raster: _TargetRaster
    ) -> _Probes:
        k = min(n_probes + 3, len(src))
        _, index = cKDTree(src).query(src[tri].mean(axis=1), k=k)
        index = index.reshape(len(tri), k)
        lev = _barycentric_leverage(src, tri, index)
        vertex = (index[:, :, None] == tri[:, None, :]).any(axis=2)
        tau2 = tolerance_um**2 * (1.0 + lev)
        flag = np.where(vertex, -2.0, np.where(lev <= _MAX_LEVERAGE, tau2, -1.0))
        n_first = min(n_first, k)
        first = flag[:, :n_first]
        chance = np.where(first > 0, np.minimum(density * np.pi * first, 1.0), 0.0)
        return cls(index, raster.codes(flag), chance.sum(axis=1), n_first)


# ---------------------------------------------------------------- compiled search


@numba.njit(cache=True, inline="always")
def _poisson_surprise(count, expected):  # pragma: no cover - compiled
    """``-log P(X >= count)``, X ~ Poisson(expected), from the first term and the
    geometric bound of the rest (tight when ``count`` exceeds ``expected``; 0 when it
    does not)."""
    if count <= expected:
        return 0.0
    expected = max(expected, 1e-12)
    log_first = count * np.log(expected) - expected - math.lgamma(count + 1.0)
    return -(log_first - np.log(1.0 - expected / (count + 1.0)))


@numba.njit(cache=True, inline="always")
def _solve_normal(g, b, inv, par):  # pragma: no cover - compiled
    """Inverse of the symmetric 3x3 normal matrix ``g`` (upper triangle read) into
    ``inv`` and the least-squares parameters ``inv @ b`` (3x2) into ``par``; False if
    ``g`` is singular."""
    inv[0, 0] = g[1, 1] * g[2, 2] - g[1, 2] * g[1, 2]
    inv[0, 1] = g[0, 2] * g[1, 2] - g[0, 1] * g[2, 2]
    inv[0, 2] = g[0, 1] * g[1, 2] - g[0, 2] * g[1, 1]
    inv[1, 1] = g[0, 0] * g[2, 2] - g[0, 2] * g[0, 2]
    inv[1, 2] = g[0, 2] * g[0, 1] - g[0, 0] * g[1, 2]
    inv[2, 2] = g[0, 0] * g[1, 1] - g[0, 1] * g[0, 1]
    det = g[0, 0] * inv[0, 0] + g[0, 1] * inv[0, 1] + g[0, 2] * inv[0, 2]
    if abs(det) < 1e-12:
        return False
    for r in range(3):
        for c in range(r, 3):
            inv[r, c] /= det
            inv[c, r] = inv[r, c]
    for r in range(3):
        for c in range(2):
            par[r, c] = inv[r, 0] * b[0, c] + inv[r, 1] * b[1, c] + inv[r, 2] * b[2, c]
    return True


@numba.njit(cache=True, inline="always")
def _accumulate(gram, rhs, x, y, qx, qy):  # pragma: no cover - compiled
    """Add the pair (x, y) -> (qx, qy) to the normal equations (upper triangle)."""
    gram[0, 0] += x * x
    gram[0, 1] += x * y
    gram[0, 2] += x
    gram[1, 1] += y * y
    gram[1, 2] += y
    gram[2, 2] += 1.0
    rhs[0, 0] += qx * x
    rhs[0, 1] += qy * x
    rhs[1, 0] += qx * y
    rhs[1, 1] += qy * y
    rhs[2, 0] += qx
    rhs[2, 1] += qy


@numba.njit(cache=True, inline="always")
def _raster_flat(x, y, geometry):  # pragma: no cover - compiled
    """Flat raster index of the pixel under (x, y), clipped onto the border."""
    col = min(max((x - geometry[0]) / geometry[2], 0.0), geometry[4] - 1.0)
    row = min(max((y - geometry[1]) / geometry[2], 0.0), geometry[3] - 1.0)
    return int(row) * int(geometry[4]) + int(col)


@numba.njit(cache=True, inline="always")
def _keep_best(scores, entries, score, entry):  # pragma: no cover - compiled
    """Insert (score, entry) into the descending list ``scores`` if it belongs there."""
    j = scores.shape[0] - 1
    if score <= scores[j]:
        return
    while j > 0 and scores[j - 1] < score:
        scores[j] = scores[j - 1]
        entries[j] = entries[j - 1]
        j -= 1
    scores[j] = score
    entries[j] = entry


@numba.njit(cache=True, inline="always")
def _cell_range(u, radius, offset, cell, ncell):  # pragma: no cover - compiled
    """Shape cells overlapping ``[u - radius, u + radius]``."""
    lo = max(int(math.floor((u - radius + offset) / cell)), 0)
    hi = min(int(math.floor((u + radius + offset) / cell)), ncell - 1)
    return lo, hi


@numba.njit(cache=True, inline="always")
def _sides_admissible(g_src, g_dst, m, log_lo, log_hi, log_aniso):  # pragma: no cover
    """Exact side test: every log-side change within the log scale range +- ``m``, their
    spread within the log anisotropy + ``2 m``."""
    d0, d1, d2 = g_dst[0] - g_src[0], g_dst[1] - g_src[1], g_dst[2] - g_src[2]
    dmin, dmax = min(d0, d1, d2), max(d0, d1, d2)
    return dmin >= log_lo - m and dmax <= log_hi + m and dmax - dmin <= log_aniso + 2 * m


@numba.njit(cache=True, inline="always")
def _linear_admissible(a00, a01, a10, a11, grow, bounds, allow_mirror):  # pragma: no cover
    """Singular values within the scale range, their ratio within the anisotropy (both
    widened by ``grow``), mirror only if allowed. ``L = a z + b conj(z)`` has singular
    values ``|a| +- |b|`` and the sign of ``|a| - |b|`` as determinant (np.hypot is slow
    here)."""
    re_a, im_a = 0.5 * (a00 + a11), 0.5 * (a10 - a01)
    re_b, im_b = 0.5 * (a00 - a11), 0.5 * (a10 + a01)
    conf = math.sqrt(re_a * re_a + im_a * im_a)
    anti = math.sqrt(re_b * re_b + im_b * im_b)
    s1, s2 = conf + anti, abs(conf - anti)
    if s1 > bounds[4] * grow or s2 * grow < bounds[3] or s1 > bounds[5] * grow * grow * s2:
        return False
    return allow_mirror or conf >= anti


@numba.njit(cache=True, inline="always")
def _first_stage(
    t, e, affine, source, index, probe, raster, gram, rhs
):  # pragma: no cover - compiled
    """Probe hits of the first ``n_first`` probes under the 3-point affine; the normal
    equations ``gram``, ``rhs`` receive the vertices and the hits."""
    src, tri_s = source[0], source[1]
    dst, index_tri = index[0], index[1]
    probes, accept, n_first = probe[0], probe[1], probe[3]
    code, nearest, geometry = raster
    a00, a01, a10, a11, tx, ty = affine
    gram[:, :] = 0.0
    rhs[:, :] = 0.0
    for v in range(3):
        x, y = src[tri_s[t, v], 0], src[tri_s[t, v], 1]
        _accumulate(gram, rhs, x, y, dst[index_tri[e, v], 0], dst[index_tri[e, v], 1])
    hits = 0
    for k in range(n_first):
        if accept[t, k] < 0:
            continue
        px, py = src[probes[t, k], 0], src[probes[t, k], 1]
        flat = _raster_flat(a00 * px + a01 * py + tx, a10 * px + a11 * py + ty, geometry)
        if code[flat] <= accept[t, k]:
            hits += 1
            j = nearest[flat]
            _accumulate(gram, rhs, px, py, dst[j, 0], dst[j, 1])
    return hits


@numba.njit(cache=True, inline="always")
def _second_stage(t, inv, par, source, probe, raster, tol2, chance_coef):  # pragma: no cover
    """Probe hits under the refit ``par`` with tolerances ``tol2 (1 + h)`` from its
    leverage ``h = x^T inv x`` (h <= 9), and the chance hits expected."""
    src = source[0]
    probes, accept = probe[0], probe[1]
    code, geometry = raster[0], raster[2]
    expected, hits = 0.0, 0
    for k in range(probes.shape[1]):
        if accept[t, k] == -2:
            continue
        px, py = src[probes[t, k], 0], src[probes[t, k], 1]
        lev = (
            inv[0, 0] * px * px
            + inv[1, 1] * py * py
            + inv[2, 2]
            + 2.0 * (inv[0, 1] * px * py + inv[0, 2] * px + inv[1, 2] * py)
        )
        if lev > _MAX_LEVERAGE:
            continue
        expected += min(chance_coef * (1.0 + lev), 1.0)
        mx = par[0, 0] * px + par[1, 0] * py + par[2, 0]
        my = par[0, 1] * px + par[1, 1] * py + par[2, 1]
        dist = code[_raster_flat(mx, my, geometry)] * geometry[5]
        if dist * dist <= tol2 * (1.0 + lev):
            hits += 1
    return hits, expected


@numba.njit(cache=True, fastmath=True)
def _screen_triangle(
    t, source, index, probe, raster, params, out_score, out_entry
):  # pragma: no cover - compiled
    """Match, screen and locally refit the hypotheses of source triangle ``t``
    (module docstring, steps 2-4); keep the best (surprise, target entry) in
    ``out_score``/``out_entry``.

    ``source``: points, triangles, log sides, margins. ``index``: target points,
    :class:`_DescriptorIndex` arrays (triangles, log sides, sizes, cell starts) and
    (ncell, cell, offset). ``probe``: :class:`_Probes` fields. ``raster``:
    :class:`_TargetRaster` codes, nearest targets, geometry. ``params``:
    :meth:`_Prior.bounds`, allow_mirror, tolerance^2, chance hits per unit of
    ``1 + h``. Returns the numbers of descriptor matches and admissible hypotheses.
    """
    src, tri_s, g_s, margin = source
    dst, index_tri, index_g, index_size, cell_start, grid = index
    first_expected = probe[2]
    bounds, allow_mirror, tol2, chance_coef = params
    log_lo, log_hi, log_aniso = bounds[0], bounds[1], bounds[2]
    ncell, cell, offset = int(grid[0]), grid[1], grid[2]
    m = margin[t]
    grow = math.exp(m)
    # source edge vectors at vertex 0 and their inverse, shared by all hypotheses
    p0x, p0y = src[tri_s[t, 0], 0], src[tri_s[t, 0], 1]
    v1x, v1y = src[tri_s[t, 1], 0] - p0x, src[tri_s[t, 1], 1] - p0y
    v2x, v2y = src[tri_s[t, 2], 0] - p0x, src[tri_s[t, 2], 1] - p0y
    det = v1x * v2y - v1y * v2x
    i00, i01, i10, i11 = v2y / det, -v2x / det, -v1y / det, v1x / det
    # descriptor box: shape cells, size range
    radius = log_aniso + m
    c0_lo, c0_hi = _cell_range(g_s[t, 0] - g_s[t, 2], radius, offset, cell, ncell)
    c1_lo, c1_hi = _cell_range(g_s[t, 1] - g_s[t, 2], radius, offset, cell, ncell)
    size = (g_s[t, 0] + g_s[t, 1] + g_s[t, 2]) / 3.0
    size_lo, size_hi = size + log_lo - m, size + log_hi + m
    gram, rhs = np.empty((3, 3)), np.empty((3, 2))
    inv, par = np.empty((3, 3)), np.empty((3, 2))
    n_match, n_adm = 0, 0
    for c0 in range(c0_lo, c0_hi + 1):
        for c1 in range(c1_lo, c1_hi + 1):
            a, b = cell_start[c0 * ncell + c1], cell_start[c0 * ncell + c1 + 1]
            lo = a + np.searchsorted(index_size[a:b], size_lo)
            hi = a + np.searchsorted(index_size[a:b], size_hi, side="right")
            n_match += hi - lo
            for e in range(lo, hi):
                if not _sides_admissible(g_s[t], index_g[e], m, log_lo, log_hi, log_aniso):
                    continue
                q0x, q0y = dst[index_tri[e, 0], 0], dst[index_tri[e, 0], 1]
                w1x, w1y = dst[index_tri[e, 1], 0] - q0x, dst[index_tri[e, 1], 1] - q0y
                w2x, w2y = dst[index_tri[e, 2], 0] - q0x, dst[index_tri[e, 2], 1] - q0y
                a00, a01 = w1x * i00 + w2x * i10, w1x * i01 + w2x * i11
                a10, a11 = w1y * i00 + w2y * i10, w1y * i01 + w2y * i11
                if not _linear_admissible(a00, a01, a10, a11, grow, bounds, allow_mirror):
                    continue
                n_adm += 1
                affine = (
                    a00,
                    a01,
                    a10,
                    a11,
                    q0x - a00 * p0x - a01 * p0y,
                    q0y - a10 * p0x - a11 * p0y,
                )
                hits = _first_stage(t, e, affine, source, index, probe, raster, gram, rhs)
                if hits <= first_expected[t] or not _solve_normal(gram, rhs, inv, par):
                    continue
                hits, expected = _second_stage(
                    t, inv, par, source, probe, raster, tol2, chance_coef
                )
                _keep_best(out_score, out_entry, _poisson_surprise(hits, expected), e)
    return n_match, n_adm


@numba.njit(cache=True, parallel=True)
def _search(
    order, source, index, probe, raster, params, out_score, out_entry, out_counts
):  # pragma: no cover
    """:func:`_screen_triangle` for source triangles ``order`` in parallel, triangle
    ``order[i]`` into row ``i`` of the outputs (so the result does not depend on the
    threads); ``out_counts[i]``: descriptor matches, admissible hypotheses."""
    for i in numba.prange(order.shape[0]):
        n_match, n_adm = _screen_triangle(
            order[i], source, index, probe, raster, params, out_score[i], out_entry[i]
        )
        out_counts[i, 0] = n_match
        out_counts[i, 1] = n_adm


# -------------------------------------------------------------------- refinement


def _refine(
    src: np.ndarray,
    dst: np.ndarray,
    matrices: np.ndarray,
    normal_inv: np.ndarray,
    tolerance_um: float,
    rounds: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grow and re-fit hypotheses together, halving their number each round.

    A round takes, per hypothesis, every source point within its prediction tolerance
    ``tolerance_um * sqrt(1 + h)`` of its nearest target (``h = x^T (X^T X)^-1 x`` of the
    current fit, at most 9), fits the affine by least squares over them and keeps the
    half with the most such points (at least 16).

    Returns
    -------
    matrices : ndarray, shape (R', 3, 3)
    consensus : ndarray, shape (R',)
        Source points with a distinct target within ``tolerance_um``.
    median_um : ndarray, shape (R',)
        Median distance from the mapped source points to their nearest target, um.
    """
    tree = cKDTree(dst)
    design = np.column_stack([src, np.ones(len(src))])
    mats, cinv = matrices.copy(), normal_inv.copy()
    for _ in range(rounds):
        moved = np.einsum("rij,nj->rni", mats[:, :2, :2], src) + mats[:, None, :2, 2]
        dist, j = tree.query(moved.reshape(-1, 2))
        dist, j = dist.reshape(moved.shape[:2]), j.reshape(moved.shape[:2])
        lev = np.einsum("ni,rij,nj->rn", design, cinv, design)
        use = (lev <= _MAX_LEVERAGE) & (dist**2 <= tolerance_um**2 * (1.0 + lev))
        w = use.astype(float)
        gram = np.einsum("rn,ni,nj->rij", w, design, design)
        rhs = np.einsum("rn,ni,rnj->rij", w, design, dst[j])
        ok = (use.sum(axis=1) >= 3) & (np.abs(np.linalg.det(gram)) > 1e-9)
        if ok.any():
            sol = np.linalg.solve(gram[ok], rhs[ok])  # (r, 3, 2): rows a, b, t
            mats[ok, :2, :] = np.transpose(sol, (0, 2, 1))
            cinv[ok] = np.linalg.inv(gram[ok])
        better = np.argsort(-use.sum(axis=1), kind="stable")[: max(16, len(mats) // 2)]
        mats, cinv = mats[better], cinv[better]
    moved = np.einsum("rij,nj->rni", mats[:, :2, :2], src) + mats[:, None, :2, 2]
    dist, j = tree.query(moved.reshape(-1, 2))
    dist, j = dist.reshape(moved.shape[:2]), j.reshape(moved.shape[:2])
    close = dist <= tolerance_um
    rows = np.nonzero(close)[0]
    distinct = np.unique(rows * len(dst) + j[close])
    consensus = np.bincount(distinct // len(dst), minlength=len(mats))
    return mats, consensus, np.median(dist, axis=1)


# ------------------------------------------------------------------------- driver


def constellation_register(
    src_um: np.ndarray,
    dst_um: np.ndarray,
    *,
    scale_range: tuple[float, float] = (0.8, 1.25),
    max_anisotropy: float = 1.3,
    tolerance_um: float = 0.2,
    neighbours: int = 16,
    target_neighbours: int | None = None,
    min_side_um: float | None = None,
    max_side_um: float | None = None,
    allow_mirror: bool = True,
    n_probes: int = 48,
    n_first: int = 16,
    keep_per_triangle: int = 4,
    max_hypotheses: int = 3_000_000,
    n_refine: int = 1024,
    refine_rounds: int = 6,
    batch: int = 1024,
    rng_seed: int = 0,
    max_polish: int = 20,
) -> FiducialResult:
    """Affine (moving um -> fixed um) between two crowded candidate sets, by triangles.

    Parameters
    ----------
    src_um, dst_um : ndarray, shape (N, 2), (M, 2)
        Candidate centres (x, y) in um of the moving (source) and fixed (target) image.
    scale_range : (float, float)
        Accepted singular values of the linear part (the pixel sizes are known, so the
        true ones are near 1).
    max_anisotropy : float
        Largest accepted ratio of the singular values (tilt, anisotropic scan).
    tolerance_um : float
        Distance (um) within which a mapped source point and a target are consistent.
    neighbours : int
        Triangles join each point with two of this many nearest neighbours.
    target_neighbours : int, optional
        The same in the target (default ``neighbours``); more when the source holds only
        the most bead-like candidates, so that the partners of a source point's
        neighbours are among its partner's neighbours.
    min_side_um, max_side_um : float, optional
        Accepted triangle sides, um (default ``2 * tolerance_um`` and unbounded).
    allow_mirror : bool
        Accept linear parts with a negative determinant.
    n_probes, n_first : int
        Source points nearest each triangle that screen its hypotheses: the first
        ``n_first`` under the 3-point affine, all after the local refit.
    keep_per_triangle : int
        Screened hypotheses kept per source triangle.
    max_hypotheses : int
        Budget: no new batch of source triangles once this many admissible hypotheses
        have been screened (bounds the time: ~0.5 us each on 2 cores).
    n_refine : int
        Best screened hypotheses refined together.
    refine_rounds : int
        Growing least-squares rounds of the refinement.
    batch : int
        Source triangles per call of the compiled search.
    rng_seed : int
        Seed of the order in which source triangles are tried (matters only when the
        budget stops the search).
    max_polish : int
        Cap on the final mutual-nearest-pair iterations.

    Returns
    -------
    FiducialResult
        ``method="constellation"``; ``hypothesis_error_um`` is the median distance from
        the mapped source candidates to their nearest target under the winning refined
        hypothesis; ``n_hypotheses`` the admissible hypotheses screened. ``info``:
        ``n_consistent`` (final pairs), ``tolerance_um``, ``inliers_of_hypothesis``
        (consensus of the winner before polishing), ``iterations`` (polish),
        ``n_source``, ``n_target``, ``target_density_per_um2`` (over the convex hull),
        ``n_triangles_source``, ``n_triangles_target`` (target vertex orders),
        ``n_descriptor_matches``, ``n_hypotheses``, ``n_refined``, ``exhausted``
        (every source triangle was tried).

    Raises
    ------
    FiducialError
        Fewer than 3 or collinear candidates, no triangles, no admissible hypothesis,
        or no hypothesis with 3 consistent pairs.
    """
    src = check_points(src_um, "source (EM)")
    dst = check_points(dst_um, "target (LM)")
    prior = _Prior(
        float(scale_range[0]), float(scale_range[1]), float(max_anisotropy), allow_mirror
    )
    min_side = 2.0 * tolerance_um if min_side_um is None else float(min_side_um)
    max_side = np.inf if max_side_um is None else float(max_side_um)
    log_aniso = float(np.log(prior.anisotropy))
    tri_s, g_s = _source_order(src, neighbour_triangles(src, neighbours, min_side, max_side))
    spread = prior.scale_hi * prior.anisotropy
    tri_d, g_d = _target_orders(
        dst,
        neighbour_triangles(
            dst, target_neighbours or neighbours, min_side / spread, max_side * spread
        ),
        log_aniso + 0.1,
    )
    if not len(tri_s) or not len(tri_d):
        raise FiducialError(
            f"no triangles: {len(tri_s)} in the source, {len(tri_d)} in the target "
            f"(sides {min_side:.2f}-{max_side:.2f} um among {neighbours} neighbours)"
        )
    index = _DescriptorIndex.build(tri_d, g_d, log_aniso, 2 * log_aniso + 2 * _MAX_MARGIN)
    density = _density_per_um2(dst)
    raster = _TargetRaster(dst, tolerance_um, 4.0 * tolerance_um)
    probes = _Probes.build(src, tri_s, n_probes, n_first, tolerance_um, density, raster)
    margin = np.minimum(tolerance_um / np.exp(g_s[:, 2]), _MAX_MARGIN)
    kernel_args = (
        (src, tri_s, g_s, margin),
        (dst, index.tri, index.log_sides, index.size, index.cell_start, index.grid),
        (probes.index, probes.accept, probes.first_expected, probes.n_first),
        (raster.code, raster.nearest, raster.geometry),
        (prior.bounds(), prior.allow_mirror, tolerance_um**2, density * np.pi * tolerance_um**2),
    )
    order = np.random.default_rng(rng_seed).permutation(len(tri_s))
    score = np.full((len(order), keep_per_triangle), -1.0)
    entry = np.full((len(order), keep_per_triangle), -1, dtype=np.int64)
    counts = np.zeros((len(order), 2), dtype=np.int64)
    done = 0
    while done < len(order) and counts[:done, 1].sum() < max_hypotheses:
        part = slice(done, min(done + batch, len(order)))
        _search(order[part], *kernel_args, score[part], entry[part], counts[part])
        done = part.stop
    n_matches, n_hyp = (int(x) for x in counts[:done].sum(axis=0))
    row, col = np.nonzero(entry[:done] >= 0)
    if not len(row):
        raise FiducialError(
            f"no admissible hypothesis passed the screening among {n_hyp} admissible of "
            f"{n_matches} descriptor matches ({len(tri_s)} source, {len(tri_d)} target "
            f"triangles; scale {prior.scale_lo}-{prior.scale_hi}, anisotropy <= "
            f"{prior.anisotropy})"
        )
    best = np.argsort(-score[row, col], kind="stable")[:n_refine]
    s_tri, d_tri = tri_s[order[row[best]]], index.tri[entry[row[best], col[best]]]
    mats, valid = affines_from_triplets(src[s_tri], dst[d_tri])
    verts = np.concatenate([src[s_tri], np.ones((len(s_tri), 3, 1))], axis=2)[valid]
    cinv = np.linalg.inv(np.einsum("rki,rkj->rij", verts, verts))
    mats, consensus, median_um = _refine(src, dst, mats[valid], cinv, tolerance_um, refine_rounds)
    consensus = np.where(prior.admits(mats[:, :2, :2], _PRIOR_SLACK), consensus, 0)
    win = int(np.lexsort((median_um, -consensus))[0])
    info = {
        "tolerance_um": float(tolerance_um),
        "inliers_of_hypothesis": int(consensus[win]),
        "n_source": len(src),
        "n_target": len(dst),
        "target_density_per_um2": float(density),
        "n_triangles_source": len(tri_s),
        "n_triangles_target": len(tri_d),
        "n_descriptor_matches": n_matches,
        "n_hypotheses": n_hyp,
        "n_refined": int(valid.sum()),
        "exhausted": done == len(order),
    }
    if consensus[win] < 3:
        raise FiducialError(
            f"no consistent hypothesis among {n_hyp} screened: the best explains "
            f"{consensus[win]} of {len(src)} source points within {tolerance_um} um (need 3)"
        )
    matrix, pairs, iterations = polish_affine(src, dst, mats[win], tolerance_um, max_polish)
    info.update(n_consistent=len(pairs), iterations=iterations)
    return FiducialResult(matrix, pairs, float(median_um[win]), n_hyp, "constellation", info)
