"""The original image analogies (Hertzmann et al. 2001; paper sec. 4.1, Algorithm 2).

Given training pairs ``(A, A')`` on a common grid and a test image ``B``, synthesise
``B'`` pixel by pixel in scan-line order (rows top to bottom, columns left to right),
coarsest pyramid level first. Each pixel ``q`` of ``B'_l`` copies ``A'_l(p)`` of the
training pixel ``p`` chosen by

* the best approximate match: the training pixel whose feature vector is nearest to
  ``q``'s (see *Search* below);
* the coherence match (Ashikhmin 2001, as in Hertzmann's ``BestCoherenceMatch``): for
  every already synthesised neighbour ``r`` of ``q`` in the causal neighbourhood (inside
  the image), the candidate ``s(r) + (q - r)``, ``s(r)`` being the source recorded for
  ``r``, if it is a training pixel of the same pair; the candidate with the smallest
  feature distance wins;
* the coherence rule: the coherence match is taken if
  ``d_coh <= d_app (1 + 2^(l - L) kappa)``, ``l`` the level, ``L`` the finest (here
  level index ``k = L - l``, 0 at the finest, so the factor is ``1 + 2^-k kappa``).
  ``kappa = 0`` switches the coherence search off: pure approximate-nearest-neighbour
  synthesis. A pixel counts as *coherent* (``AnalogyResult.coherent``) when the rule
  chose a coherence candidate that differs from the approximate match.

Conventions
-----------
Images are 2D float arrays indexed ``[row, col]`` (px). Pyramid level 0 is the input
sampling; level ``k`` is level ``k - 1`` smoothed by a Gaussian of sigma 1 px and
decimated by 2 (``[::2, ::2]``), so pixel ``(r, c)`` of level ``k`` lies over pixel
``(r // 2, c // 2)`` of level ``k + 1``. ``A'`` may hold NaN where the confocal has no
data; a pyramid pixel is NaN when more than 1% of its smoothing weight falls on NaN.

Features
--------
For a pixel at level ``k`` (``p`` = ``patch_size``, 15 by default at every level, as the
paper uses 15x15 patches for both analogy methods), the feature vector concatenates

1. the ``p x p`` patch of ``A_k`` (query: ``B_k``) centred on the pixel;
2. the coarse ``c x c`` patches of ``A_{k+1}`` and ``A'_{k+1}`` (query: ``B_{k+1}`` and
   the already complete ``B'_{k+1}``) centred on ``(r // 2, c // 2)``, with
   ``c = p // 2`` made odd (7 for 15; Hertzmann uses 3x3 under 5x5) — absent at the
   coarsest level;
3. the causal part of the ``p x p`` patch of ``A'_k`` (query: ``B'_k``): the ``p // 2``
   rows above and the ``p // 2`` pixels to the left (112 values for 15).

Each neighbourhood is weighted by a Gaussian kernel of sigma ``weight_sigma * size`` px
normalised to unit sum (the causal part keeps the full kernel's entries), and features
are stored multiplied by the square root of the weight, so the squared Euclidean
distance of two feature vectors is Hertzmann's Gaussian-weighted SSD. Hertzmann et al.
do not give the sigma; the default 0.08 (1.2 px for 15x15, so the 5x5 core carries 93%
of the weight, close to Hertzmann's 5x5 neighbourhoods) is the best of the sweep in
``benchmarks/hertzmann.py``.

Borders: every image (``A``, ``A'``, ``B``, and the rows of ``B'`` already synthesised)
is reflected at its border (numpy ``'reflect'``), so training and query neighbourhoods
are built alike and a training pixel near a border is usable. Causal ``B'`` pixels that
do not exist yet (above the first row; left of the current pixel in the first columns)
are left out of the distance; for the PCA search key they are set to the training mean
(no deviation) and such pixels re-rank 8 times more candidates. Training pixels are
those whose (reflected) fine and coarse ``A'`` neighbourhoods are NaN-free.

Search
------
``exact=False`` (default): principal component analysis of the training feature vectors
(fitted per level on the training set, on the dimensions carrying at least 1e-6 of the
largest weight; ``n_components`` = 24 components), then a brute-force scan of the PCA
coordinates with partial-distance pruning (components in order of decreasing variance;
exact in PCA space, no tree: in 24 dimensions a k-d tree saves little over a pruned scan
of 20000 points) keeping the ``n_candidates`` = 16 nearest, which are re-ranked by the
full weighted distance. The query's PCA coordinates are those of its fixed part (``B``
patch, coarse patches: one matrix product per level) plus those of its causal ``B'``
part (per pixel, as it depends on the scan). The result is approximate only because the
true nearest neighbour can fall outside the ``n_candidates`` nearest in PCA space.
``exact=True``: brute force over the full weighted features (reference). ``d_app`` and
``d_coh`` in the coherence rule are always full, un-reduced, weighted distances. The
scan loop is compiled with numba.

Training pixels
---------------
The training pixels of all pairs are pooled into one search set per level. With
``max_training_px`` set (default 20000, the issue's benchmark size), each level's budget
is split evenly over the pairs (a pair with fewer candidates gives its remainder to the
others) and each pair contributes the valid pixels inside one square window — the
largest square holding at most its share — placed at random (``seed``) among the
placements with the most valid pixels. A window rather than a random subset keeps the
sources spatially contiguous, which coherence needs.

Intensities
-----------
Inputs are in [0, 1], the TEM passed as the sparse method codes it (inverted,
``1 - tem``); nearest-neighbour matching is invariant to that inversion as long as
``A`` and ``B`` are coded alike. ``remap_luminance`` (Hertzmann sec. 3.4) maps each
``A`` linearly to ``B``'s mean and standard deviation before matching; ``A'`` is never
changed, so ``B'`` holds ``A'`` values.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numba
import numpy as np
import scipy.linalg
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import gaussian_filter

__all__ = ["AnalogyResult", "image_analogy", "gaussian_pyramid"]

#: Smoothing before each decimation by 2, px (at the finer level).
PYRAMID_SIGMA = 1.0
#: A coarse pixel is valid when at least this fraction of its smoothing weight is valid.
_VALID_WEIGHT = 0.99
#: Pixels whose causal neighbourhood is partly outside B' (first rows, first columns)
#: re-rank this many times more PCA candidates: their search key is less accurate.
_MASKED_CANDIDATES = 8
#: Feature dimensions with less than this fraction of the largest weight are left out of
#: the PCA search key (not out of the distances).
_KEY_WEIGHT = 1e-6


@dataclass
class AnalogyResult:
    """Output of :func:`image_analogy`.

    Attributes
    ----------
    image : ndarray of float64, shape of ``b``
        ``B'`` at the finest level; every value is a pixel of some ``A'``.
    source : ndarray of int32, shape (rows, cols, 3)
        Per pixel of ``B'``: (training pair index, row, col) of the copied ``A'`` pixel
        at the finest level (px).
    coherent : ndarray of bool, shape (rows, cols)
        True where the coherence candidate won over a different approximate match
        (finest level).
    info : dict
        ``seconds`` (per level, coarsest first; ``seconds_scan`` the scan-line search
        part of it), ``seconds_total``, ``coherence_fraction`` (pixels where the
        coherence candidate won over a different approximate match)
        and ``n_training_px`` per level, ``level_shapes``, ``search`` (what was used),
        ``params`` (the call's settings) and, with ``check_ann``, ``ann_agreement``.
    """

    image: np.ndarray
    source: np.ndarray
    coherent: np.ndarray
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- pyramids


def gaussian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """Gaussian pyramid, finest (the input) first; NaN marks missing data.

    Parameters
    ----------
    image : ndarray, 2D
        Input; non-finite values are missing data.
    levels : int
        Number of levels (1 returns the input only).

    Returns
    -------
    list of ndarray of float64
        Level ``k`` has shape ``ceil(shape / 2^k)``. A coarse pixel is NaN when more than
        1% of its (normalised) smoothing weight falls on missing pixels.
    """
    x = np.asarray(image, dtype=np.float64)
    valid = np.isfinite(x)
    out = [np.where(valid, x, np.nan)]
    vals = np.where(valid, x, 0.0)
    weight = valid.astype(np.float64)
    for _ in range(1, levels):
        sv = gaussian_filter(vals, PYRAMID_SIGMA, mode="reflect")[::2, ::2]
        sw = gaussian_filter(weight, PYRAMID_SIGMA, mode="reflect")[::2, ::2]
        ok = sw >= _VALID_WEIGHT
        vals = np.where(ok, sv / np.where(ok, sw, 1.0), 0.0)
        weight = ok.astype(np.float64)
        out.append(np.where(ok, vals, np.nan))
    return out


# --------------------------------------------------------------------------- features


def _kernel(size: int, weight_sigma: float) -> np.ndarray:
    """Gaussian weights of a ``size x size`` neighbourhood, unit sum."""
    h = size // 2
    y, x = np.mgrid[-h : h + 1, -h : h + 1]
    s = weight_sigma * size
    g = np.exp(-(x**2 + y**2) / (2.0 * s * s))
    return g / g.sum()


def _causal_offsets(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(drow, dcol) of the causal part of a ``size x size`` neighbourhood, scan order."""
    h = size // 2
    rows = [(dy, dx) for dy in range(-h, 0) for dx in range(-h, h + 1)]
    rows += [(0, dx) for dx in range(-h, 0)]
    off = np.array(rows, dtype=np.int64).reshape(-1, 2)
    return off[:, 0].copy(), off[:, 1].copy()


def _windows(image: np.ndarray, size: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``size x size`` patches (reflect-padded) centred on (rows, cols): (n, size²)."""
    h = size // 2
    padded = np.pad(image, h, mode="reflect") if h else image
    win = sliding_window_view(padded, (size, size))
    return win[rows, cols].reshape(rows.size, size * size)


@dataclass
class _Spec:
    """Layout of the feature vectors at one level."""

    size: int
    coarse: int  # 0 at the coarsest level
    w_fine: np.ndarray  # sqrt weights, size²
    w_coarse: np.ndarray  # sqrt weights, coarse²
    off_r: np.ndarray
    off_c: np.ndarray
    w_causal: np.ndarray  # sqrt weights of the causal offsets


def _spec(size: int, coarse: int, weight_sigma: float) -> _Spec:
    """Feature layout for fine side ``size`` and coarse side ``coarse`` (0: none)."""
    g = _kernel(size, weight_sigma)
    off_r, off_c = _causal_offsets(size)
    h = size // 2
    gc = _kernel(coarse, weight_sigma) if coarse else np.zeros((0, 0))
    return _Spec(
        size,
        coarse,
        np.sqrt(g).ravel(),
        np.sqrt(gc).ravel(),
        off_r,
        off_c,
        np.sqrt(g[off_r + h, off_c + h]),
    )


def _fixed_features(
    spec: _Spec,
    x: np.ndarray,
    x_coarse: np.ndarray | None,
    xp_coarse: np.ndarray | None,
    rows: np.ndarray,
    cols: np.ndarray,
) -> np.ndarray:
    """The scan-independent part: weighted fine ``x`` patch, coarse ``x`` and ``x'``."""
    parts = [_windows(x, spec.size, rows, cols) * spec.w_fine]
    if spec.coarse:
        for img in (x_coarse, xp_coarse):
            parts.append(_windows(img, spec.coarse, rows // 2, cols // 2) * spec.w_coarse)
    return np.hstack(parts)


def _causal_features(spec: _Spec, xp: np.ndarray, rows: np.ndarray, cols: np.ndarray):
    """Weighted causal ``x'`` values (reflect-padded) at (rows, cols): (n, n_causal)."""
    h = spec.size // 2
    padded = np.pad(xp, h, mode="reflect")
    return padded[rows[:, None] + spec.off_r + h, cols[:, None] + spec.off_c + h] * spec.w_causal


# ------------------------------------------------------------------ training windows


def _window_mask(valid: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Valid pixels inside the largest square window holding at most ``budget`` of them.

    Among placements with the most valid pixels, one is drawn with ``rng``.
    """
    n_rows, n_cols = valid.shape
    if int(valid.sum()) <= budget:
        return valid
    if budget <= 0:
        return np.zeros_like(valid)
    sat = np.zeros((n_rows + 1, n_cols + 1), dtype=np.int64)
    sat[1:, 1:] = valid.cumsum(0).cumsum(1)

    def counts(side: int) -> np.ndarray:
        h, w = min(side, n_rows), min(side, n_cols)
        return sat[h:, w:] - sat[:-h, w:] - sat[h:, :-w] + sat[:-h, :-w]

    lo, hi = 1, max(n_rows, n_cols)  # counts(lo).max() <= budget < counts(hi).max()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if counts(mid).max() <= budget:
            lo = mid
        else:
            hi = mid
    c = counts(lo)
    best = np.flatnonzero(c.ravel() == c.max())
    pick = int(best[rng.integers(best.size)])
    r0, c0 = divmod(pick, c.shape[1])
    mask = np.zeros_like(valid)
    h, w = min(lo, n_rows), min(lo, n_cols)
    mask[r0 : r0 + h, c0 : c0 + w] = valid[r0 : r0 + h, c0 : c0 + w]
    return mask


def _shares(available: list[int], budget: int | None) -> list[int]:
    """Split ``budget`` evenly over pairs; a pair with fewer gives the rest to others."""
    if budget is None:
        return list(available)
    share = [0] * len(available)
    open_ = list(range(len(available)))
    left = budget
    while open_:
        each = left // len(open_)
        small = [i for i in open_ if available[i] <= each]
        if not small:
            extra = left - each * len(open_)
            for j, i in enumerate(open_):
                share[i] = each + (1 if j < extra else 0)
            break
        for i in small:
            share[i] = available[i]
            left -= available[i]
            open_.remove(i)
    return share


# ------------------------------------------------------------------------ scan kernel


@numba.njit(cache=True)
def _full_dist(fq, qc, mask, feats, t, d_fix, bound):
    """Weighted squared distance (fixed part + unmasked causal part), pruned at bound."""
    acc = 0.0
    for j0 in range(0, d_fix, 32):  # check the bound every 32 terms
        for j in range(j0, min(j0 + 32, d_fix)):
            diff = fq[j] - feats[t, j]
            acc += diff * diff
        if acc >= bound:
            return acc
    for j in range(qc.size):
        if mask[j]:
            diff = qc[j] - feats[t, d_fix + j]
            acc += diff * diff
    return acc


@numba.njit(cache=True)
def _exact_search(fq, qc, mask, feats, d_fix):
    """Nearest training pixel by brute force on the full weighted features."""
    best_t = -1
    best_d = np.inf
    for t in range(feats.shape[0]):
        d = _full_dist(fq, qc, mask, feats, t, d_fix, best_d)
        if d < best_d:
            best_d = d
            best_t = t
    return best_t, best_d


@numba.njit(cache=True)
def _ann_search(qp, tproj, n_cand, cand_d, cand_i, fq, qc, mask, feats, d_fix):
    """n nearest in PCA space (partial-distance pruning), re-ranked on full features."""
    k = qp.size
    for i in range(n_cand):
        cand_d[i] = np.inf
        cand_i[i] = -1
    worst = np.inf
    for t in range(tproj.shape[0]):
        acc = 0.0
        for j in range(k):
            diff = qp[j] - tproj[t, j]
            acc += diff * diff
            if acc >= worst:
                break
        if acc < worst:
            i = n_cand - 1
            while i > 0 and cand_d[i - 1] > acc:
                cand_d[i] = cand_d[i - 1]
                cand_i[i] = cand_i[i - 1]
                i -= 1
            cand_d[i] = acc
            cand_i[i] = t
            worst = cand_d[n_cand - 1]
    best_t = -1
    best_d = np.inf
    for i in range(n_cand):
        t = cand_i[i]
        if t < 0:
            break
        d = _full_dist(fq, qc, mask, feats, t, d_fix, best_d)
        if d < best_d or (d == best_d and t < best_t):
            best_d = d
            best_t = t
    return best_t, best_d


class _Canvas(NamedTuple):
    """One level of ``B'`` being synthesised, filled in place by :func:`_scan`."""

    image: np.ndarray  # B'_k, float64 (rows, cols)
    match: np.ndarray  # training index copied per pixel, int64 (rows, cols)
    coherent: np.ndarray  # bool (rows, cols): the coherence rule chose a different match
    agree: np.ndarray  # int8 (rows, cols): with compare, 1 where ANN = exact, 0 if not; else -1


class _Query(NamedTuple):
    """The ``B`` side of one level: fixed features per pixel and the causal layout."""

    fixed: np.ndarray  # (rows * cols, d_fix) weighted B_k, B_{k+1}, B'_{k+1} patches
    off_r: np.ndarray  # causal offsets (drow, dcol), scan order
    off_c: np.ndarray
    w_causal: np.ndarray  # sqrt weights of the causal offsets


class _Training(NamedTuple):
    """The pooled training pixels of one level: the search set."""

    features: np.ndarray  # (n, d_fix + n_causal) weighted feature vectors
    value: np.ndarray  # (n,) A'_k at the pixel: what a match copies
    pair: np.ndarray  # (n,) int64 training pair index
    row: np.ndarray  # (n,) int64
    col: np.ndarray  # (n,) int64
    #: index[pair_offset[p] + r * pair_cols[p] + c]: training index of pixel (r, c) of
    #: pair p, -1 if it is not in the set
    index: np.ndarray
    pair_offset: np.ndarray  # int64 per pair: start of the pair's block in ``index``
    pair_rows: np.ndarray  # int64 per pair: A'_k shape
    pair_cols: np.ndarray


class _PcaKey(NamedTuple):
    """The PCA search key of one level (see *Search* in the module notes)."""

    train: np.ndarray  # (n, n_comp) PCA coordinates of the training features
    query_fixed: np.ndarray  # (rows * cols, n_comp) coordinates of the queries' fixed parts
    causal_proj: np.ndarray  # (n_causal, n_comp) projection of the causal part
    causal_mean: np.ndarray  # (n_causal,) training mean of the causal part


class _Rule(NamedTuple):
    """Search settings of one level."""

    kappa: float  # 2^-k kappa: the coherence rule's margin at this level
    coherence: bool  # run the coherence search (kappa > 0)
    n_candidates: int  # PCA candidates re-ranked on the full features
    exact: bool  # brute-force search instead of the PCA key
    compare: bool  # with exact: also run the PCA search and record agreement


class _Work(NamedTuple):
    """Scratch buffers of the scan, reused at every pixel."""

    qc: np.ndarray  # weighted causal B' values of the query (mean where not yet known)
    mask: np.ndarray  # causal entries synthesised already (in the distance)
    inside: np.ndarray  # causal neighbours inside B' (sources for coherence)
    qp: np.ndarray  # PCA coordinates of the query
    cand_d: np.ndarray  # PCA candidates: distances and training indices
    cand_i: np.ndarray


@numba.njit(cache=True, inline="always")
def _causal_neighbourhood(image, r, c, query, causal_mean, work):
    """Fill ``work`` with the query's causal ``B'`` values; return how many are missing."""
    n_cols = image.shape[1]
    n_masked = 0
    for j in range(query.off_r.size):
        rr = r + query.off_r[j]
        cc = c + query.off_c[j]
        work.inside[j] = rr >= 0 and cc >= 0 and cc < n_cols
        if rr >= 0 and query.off_r[j] < 0:  # rows above: reflect columns as A' is padded
            if cc < 0:
                cc = -cc
            elif cc >= n_cols:
                cc = 2 * (n_cols - 1) - cc
        if rr >= 0 and cc >= 0 and cc < n_cols:
            work.qc[j] = query.w_causal[j] * image[rr, cc]
            work.mask[j] = True
        else:  # not synthesised yet: left out of the distance
            work.qc[j] = causal_mean[j]
            work.mask[j] = False
            n_masked += 1
    return n_masked


@numba.njit(cache=True, inline="always")
def _query_key(q, key, work):
    """PCA coordinates of query ``q`` into ``work.qp``: fixed part plus causal part."""
    k = work.qp.size
    for m in range(k):
        work.qp[m] = key.query_fixed[q, m]
    for j in range(work.qc.size):
        dv = work.qc[j] - key.causal_mean[j]
        if dv != 0.0:
            for m in range(k):
                work.qp[m] += dv * key.causal_proj[j, m]


@numba.njit(cache=True, inline="always")
def _best_approximate_match(q, fq, n_masked, train, key, rule, work):
    """Hertzmann's BestApproximateMatch: (training index, distance, agreement or -1)."""
    d_fix = fq.size
    best_t = -1
    best_d = np.inf
    agree = -1
    if rule.exact:
        best_t, best_d = _exact_search(fq, work.qc, work.mask, train.features, d_fix)
    if (not rule.exact) or rule.compare:
        _query_key(q, key, work)
        n_use = rule.n_candidates * _MASKED_CANDIDATES if n_masked else rule.n_candidates
        ann_t, ann_d = _ann_search(
            work.qp,
            key.train,
            n_use,
            work.cand_d,
            work.cand_i,
            fq,
            work.qc,
            work.mask,
            train.features,
            d_fix,
        )
        if rule.exact:
            agree = 1 if ann_t == best_t else 0
        else:
            best_t, best_d = ann_t, ann_d
    return best_t, best_d, agree


@numba.njit(cache=True, inline="always")
def _best_coherence_match(match, r, c, fq, query, train, work):
    """Hertzmann's BestCoherenceMatch: (training index or -1, distance)."""
    coh_t = -1
    coh_d = np.inf
    last = -1
    for j in range(query.off_r.size):
        if not work.inside[j]:
            continue
        s = match[r + query.off_r[j], c + query.off_c[j]]
        pr = train.row[s] - query.off_r[j]
        pc = train.col[s] - query.off_c[j]
        pi = train.pair[s]
        if pr < 0 or pc < 0 or pr >= train.pair_rows[pi] or pc >= train.pair_cols[pi]:
            continue
        t2 = train.index[train.pair_offset[pi] + pr * train.pair_cols[pi] + pc]
        if t2 < 0 or t2 == last or t2 == coh_t:
            continue
        last = t2
        d2 = _full_dist(fq, work.qc, work.mask, train.features, t2, fq.size, coh_d)
        if d2 < coh_d:
            coh_d = d2
            coh_t = t2
    return coh_t, coh_d


@numba.njit(cache=True)
def _scan(canvas, query, train, key, rule):
    """Algorithm 2's loop over ``B'_k`` in scan-line order; fills ``canvas``, returns n coherent."""
    n_rows, n_cols = canvas.image.shape
    n_c = query.off_r.size
    n_buf = rule.n_candidates * _MASKED_CANDIDATES
    work = _Work(
        np.empty(n_c),
        np.empty(n_c, dtype=np.bool_),
        np.empty(n_c, dtype=np.bool_),
        np.empty(key.train.shape[1]),
        np.empty(n_buf),
        np.empty(n_buf, dtype=np.int64),
    )
    n_coh = 0
    for r in range(n_rows):
        for c in range(n_cols):
            q = r * n_cols + c
            fq = query.fixed[q]
            n_masked = _causal_neighbourhood(canvas.image, r, c, query, key.causal_mean, work)
            app_t, app_d, agree = _best_approximate_match(q, fq, n_masked, train, key, rule, work)
            canvas.agree[r, c] = agree
            chosen = app_t
            is_coh = False
            if rule.coherence:
                coh_t, coh_d = _best_coherence_match(canvas.match, r, c, fq, query, train, work)
                # the coherence rule
                if coh_t >= 0 and coh_d <= app_d * (1.0 + rule.kappa) and coh_t != app_t:
                    chosen = coh_t
                    is_coh = True
                    n_coh += 1
            canvas.match[r, c] = chosen
            canvas.coherent[r, c] = is_coh
            canvas.image[r, c] = train.value[chosen]
    return n_coh


# ------------------------------------------------------------------- level synthesis


@dataclass(frozen=True)
class _Settings:
    """The settings of one :func:`image_analogy` call, as given."""

    patch_size: int
    levels: int
    kappa: float
    n_components: int | None
    n_candidates: int
    max_training_px: int | None
    exact: bool
    remap_luminance: bool
    weight_sigma: float
    seed: int
    check_ann: bool

    @property
    def coarse_size(self) -> int:
        """Side of the coarser-level neighbourhood: ``patch_size // 2`` made odd."""
        return (self.patch_size // 2) | 1

    def rule(self, k: int) -> _Rule:
        """The search settings at level ``k`` (0 = finest)."""
        return _Rule(
            float(self.kappa) * 2.0**-k,
            bool(self.kappa > 0),
            int(self.n_candidates),
            bool(self.exact),
            bool(self.exact and self.check_ann),
        )


@dataclass(frozen=True)
class _Pyramids:
    """Gaussian pyramids of ``B`` and of every pair's ``A`` and ``A'`` (finest first)."""

    b: list[np.ndarray]
    a: list[list[np.ndarray]]
    ap: list[list[np.ndarray]]


@dataclass(frozen=True)
class _Level:
    """One synthesised level of ``B'`` and its statistics."""

    image: np.ndarray
    source: np.ndarray  # int32 (rows, cols, 3): pair, row, col of the copied A' pixel
    coherent: np.ndarray
    coherence_fraction: float
    ann_agreement: float | None
    n_training_px: int
    n_components: int
    feature_dim: int
    seconds: float
    seconds_scan: float


def _build_pyramids(b: np.ndarray, pairs: list, levels: int) -> _Pyramids:
    """Gaussian pyramids of the test image and the training pairs."""
    return _Pyramids(
        gaussian_pyramid(b, levels),
        [gaussian_pyramid(a, levels) for a, _ in pairs],
        [gaussian_pyramid(ap, levels) for _, ap in pairs],
    )


def _valid_training_pixels(
    ap: np.ndarray, ap_coarse: np.ndarray | None, size: int, coarse_size: int
) -> np.ndarray:
    """Pixels whose reflected fine (and coarse) ``A'`` neighbourhoods are NaN-free."""
    h = size // 2
    if min(ap.shape) <= h:  # too small to reflect-pad
        valid = np.zeros(ap.shape, dtype=bool)
    else:
        fpad = np.pad(~np.isfinite(ap), h, mode="reflect")
        valid = ~sliding_window_view(fpad, (size, size)).any(axis=(2, 3))
    if ap_coarse is not None and valid.any():
        cpad = np.pad(~np.isfinite(ap_coarse), coarse_size // 2, mode="reflect")
        cbad = sliding_window_view(cpad, (coarse_size, coarse_size)).any(axis=(2, 3))
        rr, cc = np.nonzero(valid)
        valid[rr, cc] = ~cbad[rr // 2, cc // 2]
    return valid


def _training_windows(pyr: _Pyramids, s: _Settings) -> list[list[np.ndarray]]:
    """Per level (index ``k``) and pair, the training pixels: one window within budget."""
    rng = np.random.default_rng(s.seed)
    windows: list[list[np.ndarray]] = [[] for _ in range(s.levels)]
    for k in range(s.levels - 1, -1, -1):  # coarse to fine: the order rng is drawn in
        coarse = k < s.levels - 1
        valid = [
            _valid_training_pixels(
                ap[k], ap[k + 1] if coarse else None, s.patch_size, s.coarse_size
            )
            for ap in pyr.ap
        ]
        shares = _shares([int(v.sum()) for v in valid], s.max_training_px)
        windows[k] = [_window_mask(v, n, rng) for v, n in zip(valid, shares, strict=True)]
        if int(sum(int(m.sum()) for m in windows[k])) == 0:
            raise ValueError(
                f"no valid training pixel at pyramid level {k} (shapes "
                f"{[p[k].shape for p in pyr.ap]}): the training images are too small for "
                f"patch_size={s.patch_size} and levels={s.levels}, or A' has no data"
            )
    return windows


def _training_set(spec: _Spec, k: int, masks: list[np.ndarray], pyr: _Pyramids) -> _Training:
    """Features and positions of the training pixels in ``masks``, pooled over pairs."""
    coarse = spec.coarse > 0
    feats, tval, tpair, trow, tcol = [], [], [], [], []
    pair_off, pair_h, pair_w = [], [], []
    offset = 0
    for i, m in enumerate(masks):
        rr, cc = np.nonzero(m)
        a_k, ap_k = pyr.a[i][k], pyr.ap[i][k]
        ac = pyr.a[i][k + 1] if coarse else None
        apc = np.nan_to_num(pyr.ap[i][k + 1]) if coarse else None
        fixed = _fixed_features(spec, a_k, ac, apc, rr, cc)
        feats.append(np.hstack([fixed, _causal_features(spec, ap_k, rr, cc)]))
        tval.append(ap_k[rr, cc])
        tpair.append(np.full(rr.size, i))
        trow.append(rr)
        tcol.append(cc)
        pair_off.append(offset)
        pair_h.append(ap_k.shape[0])
        pair_w.append(ap_k.shape[1])
        offset += ap_k.size
    tpair = np.concatenate(tpair).astype(np.int64)
    trow = np.concatenate(trow).astype(np.int64)
    tcol = np.concatenate(tcol).astype(np.int64)
    index = np.full(offset, -1, dtype=np.int64)
    index[np.asarray(pair_off)[tpair] + trow * np.asarray(pair_w)[tpair] + tcol] = np.arange(
        tpair.size
    )
    return _Training(
        np.ascontiguousarray(np.vstack(feats)),
        np.concatenate(tval),
        tpair,
        trow,
        tcol,
        index,
        np.asarray(pair_off, dtype=np.int64),
        np.asarray(pair_h, dtype=np.int64),
        np.asarray(pair_w, dtype=np.int64),
    )


def _query(spec: _Spec, k: int, pyr_b: list[np.ndarray], bp_coarse: np.ndarray | None) -> _Query:
    """The scan-independent features of every pixel of ``B_k`` and the causal layout."""
    rows, cols = np.indices(pyr_b[k].shape)
    b_coarse = pyr_b[k + 1] if spec.coarse else None
    fixed = _fixed_features(spec, pyr_b[k], b_coarse, bp_coarse, rows.ravel(), cols.ravel())
    return _Query(fixed, spec.off_r, spec.off_c, spec.w_causal)


def _pca_key(
    spec: _Spec, feats: np.ndarray, fq_fix: np.ndarray, n_components: int | None
) -> _PcaKey:
    """PCA of the training features on the dimensions of weight >= 1e-6 of the largest.

    The others change a distance by less than that; dropping them keeps the eigenproblem
    small and well scaled. Re-ranking uses all dimensions.
    """
    d_fix = fq_fix.shape[1]
    w2 = (
        np.concatenate([spec.w_fine, *([spec.w_coarse] * 2 if spec.coarse else []), spec.w_causal])
        ** 2
    )
    key = np.flatnonzero(w2 >= _KEY_WEIGHT * w2.max())
    mean = feats.mean(axis=0)
    n_comp = key.size if n_components is None else n_components
    n_comp = int(min(n_comp, key.size, feats.shape[0]))
    sub = (feats - mean)[:, key]
    _, evecs = scipy.linalg.eigh(sub.T @ sub, driver="evd")
    proj = np.zeros((feats.shape[1], n_comp))
    proj[key] = evecs[:, ::-1][:, :n_comp]
    return _PcaKey(
        np.ascontiguousarray(sub @ proj[key]),
        np.ascontiguousarray((fq_fix - mean[:d_fix]) @ proj[:d_fix]),
        np.ascontiguousarray(proj[d_fix:]),
        np.ascontiguousarray(mean[d_fix:]),
    )


def _blank_canvas(shape: tuple[int, int]) -> _Canvas:
    """An empty ``B'_k`` of ``shape``, ready for :func:`_scan`."""
    return _Canvas(
        np.zeros(shape),
        np.zeros(shape, dtype=np.int64),
        np.zeros(shape, dtype=np.bool_),
        np.full(shape, -1, dtype=np.int8),
    )


def _synthesise_level(
    k: int,
    pyr: _Pyramids,
    masks: list[np.ndarray],
    bp_coarse: np.ndarray | None,
    s: _Settings,
) -> _Level:
    """``B'_k`` from the training pixels in ``masks`` and the coarser ``B'_{k+1}``."""
    t_level = time.perf_counter()
    spec = _spec(s.patch_size, s.coarse_size if k < s.levels - 1 else 0, s.weight_sigma)
    train = _training_set(spec, k, masks, pyr)
    query = _query(spec, k, pyr.b, bp_coarse)
    key = _pca_key(spec, train.features, query.fixed, s.n_components)
    canvas = _blank_canvas(pyr.b[k].shape)
    t_scan = time.perf_counter()
    n_coh = _scan(canvas, query, train, key, s.rule(k))
    t_end = time.perf_counter()
    m = canvas.match
    return _Level(
        image=canvas.image,
        source=np.stack([train.pair[m], train.row[m], train.col[m]], axis=-1).astype(np.int32),
        coherent=canvas.coherent,
        coherence_fraction=n_coh / canvas.image.size,
        ann_agreement=float((canvas.agree == 1).mean()) if s.exact and s.check_ann else None,
        n_training_px=int(train.pair.size),
        n_components=int(key.train.shape[1]),
        feature_dim=int(train.features.shape[1]),
        seconds=t_end - t_level,
        seconds_scan=t_end - t_scan,
    )


def _assemble(done: list[_Level], s: _Settings, n_pairs: int, t_start: float) -> AnalogyResult:
    """The finest level as the result, the levels' statistics (coarsest first) as info."""
    search = (
        "exact brute force on the full weighted features"
        if s.exact
        else f"PCA ({s.n_components} components per level) brute-force scan with partial-"
        f"distance pruning, {s.n_candidates} nearest re-ranked on the full weighted features"
    )
    info = {
        "levels": s.levels,
        "level_shapes": [list(lv.image.shape) for lv in done],
        "seconds": [lv.seconds for lv in done],
        "seconds_scan": [lv.seconds_scan for lv in done],
        "seconds_total": time.perf_counter() - t_start,
        "coherence_fraction": [lv.coherence_fraction for lv in done],
        "n_training_px": [lv.n_training_px for lv in done],
        "n_components_used": [lv.n_components for lv in done],
        "feature_dim": [lv.feature_dim for lv in done],
        "search": search,
        "params": {
            "patch_size": s.patch_size,
            "coarse_patch_size": s.coarse_size,
            "levels": s.levels,
            "kappa": float(s.kappa),
            "n_components": s.n_components,
            "n_candidates": s.n_candidates,
            "max_training_px": s.max_training_px,
            "exact": s.exact,
            "remap_luminance": s.remap_luminance,
            "weight_sigma": s.weight_sigma,
            "pyramid_sigma_px": PYRAMID_SIGMA,
            "seed": s.seed,
            "n_pairs": n_pairs,
        },
    }
    if s.exact and s.check_ann:
        info["ann_agreement"] = [lv.ann_agreement for lv in done]
    finest = done[-1]
    return AnalogyResult(finest.image, finest.source, finest.coherent, info)


# ---------------------------------------------------------------------- public entry


def _check_inputs(b, pairs, s: _Settings) -> tuple[np.ndarray, list]:
    """Validated ``b`` and pairs as float64 (``A'`` NaN where not finite); raise on bad input."""
    patch_size, levels, kappa = s.patch_size, s.levels, s.kappa
    n_components, n_candidates, budget = s.n_components, s.n_candidates, s.max_training_px
    b = np.asarray(b, dtype=np.float64)
    if b.ndim != 2:
        raise ValueError(f"b must be a 2D image (rows, cols), got shape {b.shape}")
    if not np.all(np.isfinite(b)):
        raise ValueError("b holds non-finite values; the test image must be complete")
    if not isinstance(patch_size, int | np.integer) or patch_size < 3 or patch_size % 2 == 0:
        raise ValueError(f"patch_size must be an odd integer >= 3, got {patch_size!r}")
    if not isinstance(levels, int | np.integer) or levels < 1:
        raise ValueError(f"levels must be an integer >= 1, got {levels!r}")
    if not np.isfinite(kappa) or kappa < 0:
        raise ValueError(f"kappa must be finite and >= 0, got {kappa!r}")
    if n_components is not None and n_components < 1:
        raise ValueError(f"n_components must be >= 1 or None, got {n_components!r}")
    if n_candidates < 1:
        raise ValueError(f"n_candidates must be >= 1, got {n_candidates!r}")
    if budget is not None and budget < 1:
        raise ValueError(f"max_training_px must be >= 1 or None, got {budget!r}")
    if min(b.shape) < 2 ** (levels - 1):
        raise ValueError(f"b of shape {b.shape} is too small for {levels} pyramid levels")
    if len(pairs) == 0:
        raise ValueError("pairs is empty; give at least one (A, A') training pair")
    out = []
    for i, pair in enumerate(pairs):
        if len(pair) != 2:
            raise ValueError(f"pairs[{i}] must be an (A, A') tuple, got {len(pair)} items")
        a = np.asarray(pair[0], dtype=np.float64)
        ap = np.asarray(pair[1], dtype=np.float64)
        if a.ndim != 2 or ap.ndim != 2:
            raise ValueError(
                f"pairs[{i}]: A and A' must be 2D images, got shapes {a.shape} and {ap.shape}"
            )
        if a.shape != ap.shape:
            raise ValueError(
                f"pairs[{i}]: A shape {a.shape} and A' shape {ap.shape} differ; "
                "they must be on the same grid"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"pairs[{i}]: A holds non-finite values (only A' may hold NaN)")
        out.append((a, np.where(np.isfinite(ap), ap, np.nan)))
    return b, out


def _remap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hertzmann sec. 3.4: ``a`` linearly mapped to ``b``'s mean and standard deviation."""
    sa = a.std()
    if sa == 0:
        return np.full_like(a, b.mean())
    return (a - a.mean()) * (b.std() / sa) + b.mean()


def image_analogy(
    b: np.ndarray,
    pairs: list[tuple[np.ndarray, np.ndarray]],
    *,
    patch_size: int = 15,
    levels: int = 3,
    kappa: float = 0.5,
    n_components: int | None = 24,
    n_candidates: int = 16,
    max_training_px: int | None = 20000,
    exact: bool = False,
    remap_luminance: bool = False,
    weight_sigma: float = 0.08,
    seed: int = 0,
    check_ann: bool = False,
) -> AnalogyResult:
    """Synthesise ``B'`` such that ``A : A' :: B : B'`` (paper Algorithm 2).

    Parameters
    ----------
    b : ndarray, 2D
        Test image ``B`` (rows, cols), finite, e.g. the TEM in [0, 1] coded as the sparse
        method codes it (inverted).
    pairs : list of (ndarray, ndarray)
        Training pairs ``(A, A')`` on the same grid (each pair may have its own shape);
        ``A'`` may hold NaN where it has no data. All pairs are pooled into one search
        set per level.
    patch_size : int
        Side of the (fine) neighbourhood, px, odd; used at every level (paper: 15).
        The coarser-level neighbourhood has side ``patch_size // 2`` made odd.
    levels : int
        Pyramid levels (1 = single scale).
    kappa : float
        Coherence parameter (>= 0); the coherence match is taken when
        ``d_coh <= d_app (1 + 2^-k kappa)`` at level ``k`` (0 = finest). 0 disables the
        coherence search. Default 0.5 (the low end of Hertzmann et al.'s 0.5-5 for
        textures), chosen by the sweep in ``benchmarks/hertzmann.py`` (Pearson r of
        ``B'`` against the true ``B'``, two seeds): on two phantom cases 0.5 and 0 tie
        (mean r 0.600 and 0.598) ahead of 0.25-2 (0.55-0.57) and 5 (0.43); on texture
        by numbers r falls slowly with kappa (0.972 at 0, 0.960 at 0.5, 0.85 at 5).
        Of the tie, 0.5 keeps the coherence step that defines the algorithm.
    n_components : int or None
        PCA components for the approximate search (clipped to the feature dimension and
        the number of training pixels); None keeps all (the search is then exact up to
        rounding).
    n_candidates : int
        Nearest neighbours in PCA space re-ranked on the full features. 16: on a 64x64
        phantom crop 0.4% of queries then differ from the exact search (1.5% with 8).
    max_training_px : int or None
        Training pixels per level at most, split evenly over the pairs, each pair's
        taken as one square window (see module notes). None uses every valid pixel.
    exact : bool
        Brute-force search on the full features instead (reference; slow).
    remap_luminance : bool
        Map each ``A`` to ``B``'s mean and standard deviation before matching (Hertzmann
        sec. 3.4). Off by default: the inputs are already normalised alike, and in the
        benchmark's sweep remapping lowers r (phantoms 0.52 vs 0.60).
    weight_sigma : float
        Sigma of the Gaussian neighbourhood weights as a fraction of the neighbourhood
        side (0.08: 1.2 px for 15x15). Swept at kappa 0.5: 0.05 / 0.08 / 0.12 / 0.25 give
        mean phantom r 0.51 / 0.60 / 0.58 / 0.41.
    seed : int
        Seeds the placement of the training windows; equal seeds give identical results.
    check_ann : bool
        With ``exact=True``: also run the approximate search at every pixel on the
        exact run's state and report the fraction of pixels where it returns the same
        match as ``info['ann_agreement']`` (per level, coarsest first).

    Returns
    -------
    AnalogyResult

    Raises
    ------
    ValueError
        ``b`` not 2D or not finite; a pair not two 2D images of one shape, or ``A`` not
        finite; a bad parameter; no valid training pixel at some level (images too small
        for ``patch_size`` and ``levels``, or ``A'`` all NaN).
    """
    s = _Settings(
        patch_size=patch_size,
        levels=levels,
        kappa=kappa,
        n_components=n_components,
        n_candidates=n_candidates,
        max_training_px=max_training_px,
        exact=exact,
        remap_luminance=remap_luminance,
        weight_sigma=weight_sigma,
        seed=seed,
        check_ann=check_ann,
    )
    b, pairs = _check_inputs(b, pairs, s)
    t_start = time.perf_counter()
    if remap_luminance:
        pairs = [(_remap(a, b), ap) for a, ap in pairs]
    pyr = _build_pyramids(b, pairs, levels)
    windows = _training_windows(pyr, s)
    done: list[_Level] = []
    for k in range(levels - 1, -1, -1):  # coarse to fine
        bp_coarse = done[-1].image if done else None
        done.append(_synthesise_level(k, pyr, windows[k], bp_coarse, s))
    return _assemble(done, s, len(pairs), t_start)
