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


@numba.njit(cache=True)
def _scan(
    bp,
    src,
    coh,
    agree,
    fq_fix,
    qp_fix,
    feats,
    tproj,
    proj_c,
    mean_c,
    off_r,
    off_c,
    w_c,
    tval,
    tpair,
    trow,
    tcol,
    idx_map,
    pair_off,
    pair_h,
    pair_w,
    kappa_eff,
    use_coherence,
    n_cand,
    exact,
    compare,
):
    """Synthesise one level in scan-line order (fills bp, src, coh, agree in place)."""
    n_rows, n_cols = bp.shape
    n_c = off_r.size
    k = tproj.shape[1]
    d_fix = fq_fix.shape[1]
    qc = np.empty(n_c)
    mask = np.empty(n_c, dtype=np.bool_)
    qp = np.empty(k)
    cand_d = np.empty(n_cand * _MASKED_CANDIDATES)
    cand_i = np.empty(n_cand * _MASKED_CANDIDATES, dtype=np.int64)
    inside = np.empty(n_c, dtype=np.bool_)
    n_coh = 0
    for r in range(n_rows):
        for c in range(n_cols):
            q = r * n_cols + c
            fq = fq_fix[q]
            n_masked = 0
            for j in range(n_c):
                rr = r + off_r[j]
                cc = c + off_c[j]
                inside[j] = rr >= 0 and cc >= 0 and cc < n_cols
                if rr >= 0 and off_r[j] < 0:  # rows above: reflect columns as A' is padded
                    if cc < 0:
                        cc = -cc
                    elif cc >= n_cols:
                        cc = 2 * (n_cols - 1) - cc
                if rr >= 0 and cc >= 0 and cc < n_cols:
                    qc[j] = w_c[j] * bp[rr, cc]
                    mask[j] = True
                else:  # not synthesised yet: left out of the distance
                    qc[j] = mean_c[j]
                    mask[j] = False
                    n_masked += 1
            if exact:
                best_t, best_d = _exact_search(fq, qc, mask, feats, d_fix)
            if (not exact) or compare:
                for m in range(k):
                    qp[m] = qp_fix[q, m]
                for j in range(n_c):
                    dv = qc[j] - mean_c[j]
                    if dv != 0.0:
                        for m in range(k):
                            qp[m] += dv * proj_c[j, m]
                n_use = n_cand * _MASKED_CANDIDATES if n_masked else n_cand
                ann_t, ann_d = _ann_search(
                    qp, tproj, n_use, cand_d, cand_i, fq, qc, mask, feats, d_fix
                )
                if exact:
                    agree[r, c] = 1 if ann_t == best_t else 0
                else:
                    best_t, best_d = ann_t, ann_d
            chosen = best_t
            is_coh = False
            if use_coherence:
                coh_t = -1
                coh_d = np.inf
                last = -1
                for j in range(n_c):
                    if not inside[j]:
                        continue
                    s = src[r + off_r[j], c + off_c[j]]
                    pr = trow[s] - off_r[j]
                    pc = tcol[s] - off_c[j]
                    pi = tpair[s]
                    if pr < 0 or pc < 0 or pr >= pair_h[pi] or pc >= pair_w[pi]:
                        continue
                    t2 = idx_map[pair_off[pi] + pr * pair_w[pi] + pc]
                    if t2 < 0 or t2 == last or t2 == coh_t:
                        continue
                    last = t2
                    d2 = _full_dist(fq, qc, mask, feats, t2, d_fix, coh_d)
                    if d2 < coh_d:
                        coh_d = d2
                        coh_t = t2
                if coh_t >= 0 and coh_d <= best_d * (1.0 + kappa_eff) and coh_t != best_t:
                    chosen = coh_t
                    is_coh = True
                    n_coh += 1
            src[r, c] = chosen
            coh[r, c] = is_coh
            bp[r, c] = tval[chosen]
    return n_coh


# ---------------------------------------------------------------------- public entry


def _check_inputs(b, pairs, patch_size, levels, kappa, n_components, n_candidates, budget):
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
    b, pairs = _check_inputs(
        b, pairs, patch_size, levels, kappa, n_components, n_candidates, max_training_px
    )
    rng = np.random.default_rng(seed)
    t_start = time.perf_counter()
    if remap_luminance:
        pairs = [(_remap(a, b), ap) for a, ap in pairs]
    pyr_b = gaussian_pyramid(b, levels)
    pyr_a = [gaussian_pyramid(a, levels) for a, _ in pairs]
    pyr_ap = [gaussian_pyramid(ap, levels) for _, ap in pairs]
    coarse_size = (patch_size // 2) | 1
    h = patch_size // 2

    seconds, scan_seconds, coh_frac, n_train, agreement, n_used = [], [], [], [], [], []
    feature_dims: list[int] = []
    bp_coarse = None
    for k in range(levels - 1, -1, -1):
        t_level = time.perf_counter()
        spec = _spec(patch_size, coarse_size if k < levels - 1 else 0, weight_sigma)
        has_coarse = spec.coarse > 0

        # Training set: valid pixels of every pair (whole fine neighbourhood inside and
        # NaN-free, coarse neighbourhood NaN-free), one window per pair within budget.
        cands = []
        for i in range(len(pairs)):
            ap = pyr_ap[i][k]
            nan = ~np.isfinite(ap)
            if min(ap.shape) <= h:  # too small to reflect-pad
                valid = np.zeros(ap.shape, dtype=bool)
            else:
                fpad = np.pad(nan, h, mode="reflect")
                valid = ~sliding_window_view(fpad, (patch_size, patch_size)).any(axis=(2, 3))
            if has_coarse and valid.any():
                cnan = ~np.isfinite(pyr_ap[i][k + 1])
                cpad = np.pad(cnan, coarse_size // 2, mode="reflect")
                cbad = sliding_window_view(cpad, (coarse_size, coarse_size)).any(axis=(2, 3))
                rr, cc = np.nonzero(valid)
                valid[rr, cc] = ~cbad[rr // 2, cc // 2]
            cands.append(valid)
        shares = _shares([int(v.sum()) for v in cands], max_training_px)
        masks = [_window_mask(v, s, rng) for v, s in zip(cands, shares, strict=True)]
        n_t = int(sum(int(m.sum()) for m in masks))
        if n_t == 0:
            raise ValueError(
                f"no valid training pixel at pyramid level {k} (shapes "
                f"{[p[k].shape for p in pyr_ap]}): the training images are too small for "
                f"patch_size={patch_size} and levels={levels}, or A' has no data"
            )

        feats, tval, tpair, trow, tcol = [], [], [], [], []
        pair_off, pair_h, pair_w = [], [], []
        offset = 0
        for i, m in enumerate(masks):
            rr, cc = np.nonzero(m)
            a_k, ap_k = pyr_a[i][k], pyr_ap[i][k]
            ac = pyr_a[i][k + 1] if has_coarse else None
            apc = np.nan_to_num(pyr_ap[i][k + 1]) if has_coarse else None
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
        feats = np.ascontiguousarray(np.vstack(feats))
        tval = np.concatenate(tval)
        tpair = np.concatenate(tpair).astype(np.int64)
        trow = np.concatenate(trow).astype(np.int64)
        tcol = np.concatenate(tcol).astype(np.int64)
        idx_map = np.full(offset, -1, dtype=np.int64)
        idx_map[np.asarray(pair_off)[tpair] + trow * np.asarray(pair_w)[tpair] + tcol] = np.arange(
            n_t
        )
        d_fix = feats.shape[1] - spec.off_r.size
        feature_dims.append(int(feats.shape[1]))

        # Query: fixed part for every pixel of B_k.
        rows_b, cols_b = np.indices(pyr_b[k].shape)
        rows_b, cols_b = rows_b.ravel(), cols_b.ravel()
        fq_fix = _fixed_features(
            spec, pyr_b[k], pyr_b[k + 1] if has_coarse else None, bp_coarse, rows_b, cols_b
        )

        # PCA of the training features (the search key), fitted per level on the
        # dimensions carrying at least 1e-6 of the largest weight (the others change a
        # distance by less than that; dropping them keeps the eigenproblem small and
        # well scaled). Re-ranking uses all dimensions.
        w2 = (
            np.concatenate(
                [spec.w_fine, *([spec.w_coarse] * 2 if has_coarse else []), spec.w_causal]
            )
            ** 2
        )
        key = np.flatnonzero(w2 >= _KEY_WEIGHT * w2.max())
        mean = feats.mean(axis=0)
        n_comp = key.size if n_components is None else n_components
        n_comp = int(min(n_comp, key.size, n_t))
        centred = feats - mean
        sub = centred[:, key]
        _, evecs = scipy.linalg.eigh(sub.T @ sub, driver="evd")
        proj = np.zeros((feats.shape[1], n_comp))
        proj[key] = evecs[:, ::-1][:, :n_comp]
        tproj = np.ascontiguousarray(sub @ proj[key])
        qp_fix = np.ascontiguousarray((fq_fix - mean[:d_fix]) @ proj[:d_fix])
        proj_c = np.ascontiguousarray(proj[d_fix:])
        mean_c = np.ascontiguousarray(mean[d_fix:])

        shape = pyr_b[k].shape
        bp = np.zeros(shape)
        src = np.zeros(shape, dtype=np.int64)
        coh = np.zeros(shape, dtype=np.bool_)
        agree = np.full(shape, -1, dtype=np.int8)
        t_scan = time.perf_counter()
        n_coh = _scan(
            bp,
            src,
            coh,
            agree,
            fq_fix,
            qp_fix,
            feats,
            tproj,
            proj_c,
            mean_c,
            spec.off_r,
            spec.off_c,
            spec.w_causal,
            tval,
            tpair,
            trow,
            tcol,
            idx_map,
            np.asarray(pair_off, dtype=np.int64),
            np.asarray(pair_h, dtype=np.int64),
            np.asarray(pair_w, dtype=np.int64),
            float(kappa) * 2.0**-k,
            bool(kappa > 0),
            int(n_candidates),
            bool(exact),
            bool(exact and check_ann),
        )
        bp_coarse = bp
        scan_seconds.append(time.perf_counter() - t_scan)
        seconds.append(time.perf_counter() - t_level)
        coh_frac.append(n_coh / bp.size)
        n_train.append(n_t)
        n_used.append(n_comp)
        if exact and check_ann:
            agreement.append(float((agree == 1).mean()))

    source = np.stack([tpair[src], trow[src], tcol[src]], axis=-1).astype(np.int32)
    search = (
        "exact brute force on the full weighted features"
        if exact
        else f"PCA ({n_components} components per level) brute-force scan with partial-"
        f"distance pruning, {n_candidates} nearest re-ranked on the full weighted features"
    )
    info = {
        "levels": levels,
        "level_shapes": [list(pyr_b[k].shape) for k in range(levels - 1, -1, -1)],
        "seconds": seconds,
        "seconds_scan": scan_seconds,
        "seconds_total": time.perf_counter() - t_start,
        "coherence_fraction": coh_frac,
        "n_training_px": n_train,
        "n_components_used": n_used,
        "feature_dim": feature_dims,
        "search": search,
        "params": {
            "patch_size": patch_size,
            "coarse_patch_size": coarse_size,
            "levels": levels,
            "kappa": float(kappa),
            "n_components": n_components,
            "n_candidates": n_candidates,
            "max_training_px": max_training_px,
            "exact": exact,
            "remap_luminance": remap_luminance,
            "weight_sigma": weight_sigma,
            "pyramid_sigma_px": PYRAMID_SIGMA,
            "seed": seed,
            "n_pairs": len(pairs),
        },
    }
    if agreement:
        info["ann_agreement"] = agreement
    return AnalogyResult(bp, source, coh, info)
