"""Fiducial (bead) landmark registration: detection, Algorithm 1, baseline, robust mode.

Everything works in physical units (um), so images at different magnifications
compare directly. The moving (source) image is the electron micrograph, the fixed
(target) image the confocal; transforms map moving to fixed coordinates.

* :func:`detect_beads`: white top-hat background removal, automatic threshold,
  connected components, a size filter in physical units, intensity-weighted centroids.
* :func:`gaussian_centres`: sub-pixel bead centres by a 2D Gaussian fit per bead (the
  localisation of the paper's reference [5]).
* :func:`algorithm1`: the paper's Algorithm 1. Each landmark's two nearest neighbours
  give ``r = d1 / d2``; each source landmark's candidate targets are those with the
  closest ``r``; the neighbour triplets give an affine; the hypothesis with the least
  median nearest-target distance wins; a least-squares affine over the correspondences
  it implies refines it (``refine=False`` is the baseline of reference [5]).
* :func:`robust_register`: beyond the paper. Hypotheses from several neighbour
  combinations (not only the similarity-invariant ratio of the two nearest), verified
  by consensus (inlier count), then refined by iterated mutual-nearest-neighbour
  least squares within a tolerance. Registers shear and anisotropic scale (10 %) and
  tolerates missing and spurious beads.
* :func:`predicted_tre_um`: fiducial registration error and the predicted target
  registration error of an affine least-squares fit (Fitzpatrick's analysis, for the
  affine model).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import permutations

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.optimize import least_squares
from scipy.spatial import cKDTree
from skimage import filters, measure, morphology

from .errors import ClemalignError
from .metrics import landmark_errors_um, mae_std
from .settings import merge_params
from .significance import DEFAULT_PLAUSIBLE, DEFAULT_SIGNIFICANCE, MatchCheck, assess_match
from .transforms import Transform, apply, fit_affine, px_to_um, rc_px_to_xy_um, um_to_px


class FiducialError(ClemalignError):
    """Registration from fiducials is impossible on this input (too few beads,
    collinear beads, no consistent hypothesis); the message says what was found."""


# ------------------------------------------------------------------------- detection


@dataclass
class Beads:
    """Detected bead candidates of one image, most bead-like first.

    Attributes
    ----------
    xy_um : ndarray, shape (N, 2)
        Centres (x, y) in um (pixel-centre convention, x along columns).
    diameter_um : ndarray, shape (N,)
        Equivalent diameter of each binary component, um.
    peak : ndarray, shape (N,)
        Maximum of the background-subtracted image in each component.
    n_components : int
        Components before the size, roundness and mask filters.
    threshold : float
        Threshold used on the background-subtracted image.
    score : ndarray, shape (N,)
        Bead-likeness: the scale-normalised Laplacian-of-Gaussian response at the
        expected apparent size, times the component's roundness (minor / major axis).
    n_masked : int
        Candidates dropped because they lie in the mask (databar, burned-in markers).
    """

    xy_um: np.ndarray
    diameter_um: np.ndarray
    peak: np.ndarray
    n_components: int
    threshold: float
    score: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_masked: int = 0


def apparent_diameter_um(bead_diameter_um: float, psf_fwhm_um: float) -> float:
    """Expected diameter of a bead's image: the bead blurred by the PSF (in quadrature)."""
    return float(np.hypot(bead_diameter_um, psf_fwhm_um))


def detect_databar(image: np.ndarray, min_rows: int = 8, uniform_fraction: float = 0.5) -> int:
    """Height (rows) of a databar at the bottom of an SEM image, or 0.

    A databar (the instrument's strip with text and scale bar) is a band of rows most
    of whose pixels share one exact value; rows of a micrograph never do (noise). The
    bar is the longest bottom band in which at least 90 % of the rows are uniform (text
    and scale-bar rows are the exceptions), starting at a uniform row.

    Parameters
    ----------
    image : ndarray
        2D image as read (integer or float).
    min_rows : int
        Bands lower than this are not called a databar.
    uniform_fraction : float
        A row is uniform when this fraction of its pixels equals its most common value.

    Returns
    -------
    int
        Rows to ignore at the bottom.
    """
    img = np.asarray(image)
    uniform = np.array([np.unique(row, return_counts=True)[1].max() for row in img])
    uniform = uniform >= uniform_fraction * img.shape[1]
    # fraction of uniform rows in each bottom band [r, end)
    from_bottom = np.cumsum(uniform[::-1])[::-1] / np.arange(len(uniform), 0, -1)
    bands = np.flatnonzero(uniform & (from_bottom >= 0.9))
    if not len(bands) or not uniform[-1]:
        return 0
    height = len(uniform) - int(bands.min())
    return height if height >= min_rows else 0


def bead_mask(
    shape: tuple[int, int], databar_rows: int = 0, mask: np.ndarray | None = None
) -> np.ndarray | None:
    """Pixels whose candidates are ignored: the bottom ``databar_rows`` rows and the
    nonzero pixels of ``mask`` (burned-in markers); None when nothing is masked."""
    if not databar_rows and mask is None:
        return None
    out = np.zeros(shape, bool) if mask is None else np.asarray(mask).astype(bool).copy()
    if out.shape != tuple(shape):
        raise ValueError(f"mask shape {out.shape} differs from the image's {tuple(shape)}")
    if databar_rows:
        out[-databar_rows:] = True
    return out


def detect_beads(
    image: np.ndarray,
    px_per_um: float,
    bead_diameter_um: float = 0.1,
    psf_fwhm_um: float = 0.0,
    threshold: str | float = "yen",
    size_range: tuple[float, float] = (0.4, 2.5),
    mask: np.ndarray | None = None,
    min_roundness: float = 0.0,
    max_candidates: int | None = None,
) -> Beads:
    """Find bright beads: binarise, connected components, physical size filter, centroids,
    then rank by bead-likeness.

    Parameters
    ----------
    image : ndarray
        2D image, beads bright.
    px_per_um : float
        Sampling in px/um.
    bead_diameter_um : float
        Physical bead diameter (paper: 100 nm gold).
    psf_fwhm_um : float
        Resolution of the microscope (confocal ~0.25 um, SEM ~0); sets the expected
        apparent size.
    threshold : str or float
        ``'yen'`` (default), ``'otsu'``, ``'li'``, ``'triangle'``, ``'isodata'``
        (scikit-image's automatic methods, on the background-subtracted image), or a
        number: a fixed threshold in the image's intensity units above background.
    size_range : (float, float)
        Accepted equivalent diameter as multiples of the expected apparent diameter.
    mask : ndarray of bool, optional
        True where candidates are ignored (databar, burned-in markers); masked pixels
        also do not enter the automatic threshold.
    min_roundness : float
        Smallest accepted minor / major axis ratio of a component (0 keeps all).
    max_candidates : int, optional
        Keep only this many, the most bead-like (all when None).

    Returns
    -------
    Beads
        Sorted by decreasing :attr:`Beads.score`.
    """
    img = np.asarray(image, dtype=np.float32)
    expected = apparent_diameter_um(bead_diameter_um, psf_fwhm_um)
    radius_px = max(2, int(round(1.5 * expected * px_per_um)))
    background_free = morphology.white_tophat(img, morphology.disk(radius_px))
    smooth = ndimage.gaussian_filter(background_free, max(0.5, 0.15 * expected * px_per_um))
    level = _threshold(smooth if mask is None else smooth[~mask], threshold)
    labels = measure.label(smooth > level)
    props = measure.regionprops(labels, intensity_image=background_free)
    # scale-normalised LoG at the blob scale of a disc of the expected apparent size
    sigma_px = max(0.7, expected * px_per_um / (2.0 * np.sqrt(2.0)))
    log_response = -(sigma_px**2) * ndimage.gaussian_laplace(background_free, sigma_px)
    rows = []
    pixel_area = 1.0 / px_per_um**2
    min_pixels = 3
    n_masked = 0
    for prop in props:
        d_um = 2.0 * np.sqrt(prop.area * pixel_area / np.pi)
        if (
            prop.area < min_pixels
            or not size_range[0] * expected <= d_um <= size_range[1] * expected
        ):
            continue
        rc = np.asarray(prop.centroid_weighted, dtype=float)
        r, c = int(round(rc[0])), int(round(rc[1]))
        if mask is not None and mask[min(r, mask.shape[0] - 1), min(c, mask.shape[1] - 1)]:
            n_masked += 1
            continue
        roundness = prop.axis_minor_length / max(prop.axis_major_length, 1e-9)
        if roundness < min_roundness:
            continue
        score = float(log_response[r, c]) * max(roundness, 0.0)
        rows.append((*rc_px_to_xy_um(rc, px_per_um)[0], d_um, float(prop.intensity_max), score))
    table = np.array(rows, dtype=float).reshape(-1, 5)
    order = np.argsort(-table[:, 4], kind="stable")[:max_candidates]
    table = table[order]
    return Beads(table[:, :2], table[:, 2], table[:, 3], len(props), level, table[:, 4], n_masked)


def _threshold(values: np.ndarray, threshold: str | float) -> float:
    """The automatic (scikit-image method name) or fixed threshold level."""
    if not isinstance(threshold, str):
        return float(threshold)
    method = getattr(filters, f"threshold_{threshold}", None)
    if method is None:
        raise ValueError(f"unknown threshold method {threshold!r}")
    return float(method(values))


def gaussian_centres(
    image: np.ndarray, px_per_um: float, xy_um: np.ndarray, window_um: float
) -> np.ndarray:
    """Refine bead centres by fitting ``a exp(-|p - c|^2 / (2 s^2))`` on a planar
    background per bead (least squares, Levenberg-Marquardt).

    Parameters
    ----------
    image : ndarray
        2D image, beads bright.
    px_per_um : float
        Sampling, px/um.
    xy_um : ndarray, shape (N, 2)
        Starting centres (x, y) um.
    window_um : float
        Side of the square window fitted around each bead, um.

    Returns
    -------
    ndarray, shape (N, 2)
        Fitted centres (x, y) um; a bead whose fit fails or leaves the window keeps its
        starting centre.
    """
    img = np.asarray(image, dtype=float)
    half = max(2, int(round(0.5 * window_um * px_per_um)))
    out = np.array(xy_um, dtype=float).reshape(-1, 2).copy()
    for k, (x, y) in enumerate(out):
        col, row = um_to_px(x, px_per_um), um_to_px(y, px_per_um)
        r0, c0 = int(round(row)) - half, int(round(col)) - half
        r1, c1 = r0 + 2 * half + 1, c0 + 2 * half + 1
        if r0 < 0 or c0 < 0 or r1 > img.shape[0] or c1 > img.shape[1]:
            continue
        patch = img[r0:r1, c0:c1]
        rr, cc = np.mgrid[r0:r1, c0:c1].astype(float)
        b0 = float(np.percentile(patch, 20))
        p0 = [patch.max() - b0, row, col, max(1.0, half / 2.5), b0, 0.0, 0.0]
        dr, dc = rr - row, cc - col

        def residual(p: np.ndarray, rr=rr, cc=cc, dr=dr, dc=dc, patch=patch) -> np.ndarray:
            # spot + planar background: a sloped background biases a flat-background fit
            a, pr, pc, s, b, gr, gc = p
            spot = a * np.exp(-((rr - pr) ** 2 + (cc - pc) ** 2) / (2 * s * s))
            return (spot + b + gr * dr + gc * dc - patch).ravel()

        try:
            fit = least_squares(residual, p0, method="lm", max_nfev=200)
        except (ValueError, np.linalg.LinAlgError):
            continue
        _, pr, pc, s = fit.x[:4]
        if fit.success and abs(pr - row) < half and abs(pc - col) < half and s > 0:
            out[k] = (px_to_um(pc, px_per_um), px_to_um(pr, px_per_um))
    return out


# ------------------------------------------------------------------------- matching


@dataclass
class FiducialResult:
    """A transform found from fiducials, with what supports it.

    Attributes
    ----------
    matrix : ndarray, shape (3, 3)
        Moving (source) um -> fixed (target) um.
    pairs : ndarray, shape (M, 2) of int
        Indices (source, target) of the correspondences the final fit used.
    hypothesis_error_um : float
        Median nearest-target distance of the winning hypothesis (Algorithm 1's score).
    n_hypotheses : int
        Hypotheses evaluated.
    method : str
        ``algorithm1``, ``gaussian_baseline`` or ``robust``.
    info : dict
        Method-specific details (inlier counts, iterations).
    """

    matrix: np.ndarray
    pairs: np.ndarray
    hypothesis_error_um: float
    n_hypotheses: int
    method: str
    info: dict = field(default_factory=dict)


def _check_points(points: np.ndarray, role: str) -> np.ndarray:
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    if len(pts) < 3:
        listed = np.round(pts, 3).tolist()
        raise FiducialError(
            f"{len(pts)} beads found in the {role} image (need at least 3): {listed} um"
        )
    centred = pts - pts.mean(0)
    sv = np.linalg.svd(centred, compute_uv=False)
    if sv[-1] <= 1e-6 * max(sv[0], 1e-12):
        raise FiducialError(
            f"all {len(pts)} beads of the {role} image are collinear "
            f"(from {np.round(pts.min(0), 3).tolist()} to "
            f"{np.round(pts.max(0), 3).tolist()} um); an affine is not determined"
        )
    return pts


def neighbour_ratios(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ratio ``r = d1 / d2`` of each point's two nearest-neighbour distances.

    Returns
    -------
    r : ndarray, shape (N,)
    neighbours : ndarray, shape (N, 2) of int
        Index of the nearest and the second-nearest neighbour.
    """
    dist, idx = cKDTree(points).query(points, k=3)
    return dist[:, 1] / np.maximum(dist[:, 2], 1e-12), idx[:, 1:3]


def _affines_from_triplets(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batch exact affines from point triplets: src, dst (H, 3, 2) -> (H, 3, 3), valid mask."""
    design = np.concatenate([src, np.ones(src.shape[:2] + (1,))], axis=2)  # (H, 3, 3)
    area = np.abs(np.linalg.det(design))
    scale = np.maximum(np.abs(src - src.mean(1, keepdims=True)).max(axis=(1, 2)), 1e-12)
    valid = area > 1e-3 * scale**2
    mats = np.zeros((len(src), 3, 3))
    mats[:, 2, 2] = 1.0
    if valid.any():
        sol = np.linalg.solve(design[valid], dst[valid])  # (h, 3, 2): rows a, b, t
        mats[valid, :2, :] = np.transpose(sol, (0, 2, 1))
    return mats, valid


def _score_median(mats: np.ndarray, src: np.ndarray, tree: cKDTree) -> np.ndarray:
    moved = np.einsum("hij,nj->hni", mats[:, :2, :2], src) + mats[:, None, :2, 2]
    dist, _ = tree.query(moved.reshape(-1, 2))
    return np.median(dist.reshape(len(mats), len(src)), axis=1)


def nearest_pairs(
    moved: np.ndarray, dst: np.ndarray, tolerance_um: float, mutual: bool = False
) -> np.ndarray:
    """Correspondences (i, j): target j nearest to moved source i, closer than tolerance.

    With ``mutual`` only pairs that are each other's nearest neighbours are kept.
    """
    dist, j = cKDTree(dst).query(moved)
    keep = dist < tolerance_um
    if mutual:
        _, back = cKDTree(moved).query(dst)
        keep &= back[j] == np.arange(len(moved))
    i = np.flatnonzero(keep)
    return np.stack([i, j[keep]], axis=1)


def algorithm1(
    src_um: np.ndarray,
    dst_um: np.ndarray,
    n_candidates: int = 3,
    tolerance_um: float = 0.2,
    refine: bool = True,
) -> FiducialResult:
    """The paper's Algorithm 1 on landmark positions in um.

    Parameters
    ----------
    src_um, dst_um : ndarray, shape (N, 2), (M, 2)
        Source (moving) and target (fixed) landmarks, (x, y) um.
    n_candidates : int
        Candidate targets per source landmark: those with the closest ratio ``r``.
    tolerance_um : float
        After the winning hypothesis, a source landmark corresponds to its nearest
        target when they lie closer than this (um); the refinement fits those pairs.
    refine : bool
        Least-squares refinement (the paper's step 15). Off for the baseline of [5].

    Returns
    -------
    FiducialResult

    Raises
    ------
    FiducialError
        Fewer than 3 landmarks, collinear landmarks, or no valid hypothesis.
    """
    src = _check_points(src_um, "source (EM)")
    dst = _check_points(dst_um, "target (LM)")
    r_src, nb_src = neighbour_ratios(src)
    r_dst, nb_dst = neighbour_ratios(dst)
    n_cand = min(n_candidates, len(dst))
    cand = np.argsort(np.abs(r_dst[None, :] - r_src[:, None]), axis=1)[:, :n_cand]
    i = np.repeat(np.arange(len(src)), n_cand)
    j = cand.ravel()
    tri_src = np.stack([src[i], src[nb_src[i, 0]], src[nb_src[i, 1]]], axis=1)
    tri_dst = np.stack([dst[j], dst[nb_dst[j, 0]], dst[nb_dst[j, 1]]], axis=1)
    mats, valid = _affines_from_triplets(tri_src, tri_dst)
    if not valid.any():
        raise FiducialError(
            f"no consistent hypothesis: every neighbour triplet of the "
            f"{len(src)} source beads is degenerate"
        )
    mats = mats[valid]
    errors = _score_median(mats, src, cKDTree(dst))
    best = int(np.argmin(errors))
    matrix = mats[best]
    pairs = nearest_pairs(apply(matrix, src), dst, tolerance_um)
    method = "algorithm1" if refine else "gaussian_baseline"
    if refine:
        if len(pairs) < 3:
            raise FiducialError(
                f"no consistent hypothesis: the best one (median error "
                f"{errors[best]:.3f} um) brings only {len(pairs)} source beads "
                f"within {tolerance_um} um of a target"
            )
        matrix = fit_affine(src[pairs[:, 0]], dst[pairs[:, 1]])
    return FiducialResult(matrix, pairs, float(errors[best]), int(valid.sum()), method)


def robust_register(
    src_um: np.ndarray,
    dst_um: np.ndarray,
    neighbours: int = 4,
    ratio_tolerance: float = 0.25,
    max_anisotropy: float = 1.35,
    tolerance_um: float = 0.2,
    max_iterations: int = 20,
) -> FiducialResult:
    """Consensus registration that does not rely on the similarity-invariant ratio.

    Hypotheses come from every source landmark ``i`` and target ``j`` with ordered
    pairs ``(a, b)`` and ``(c, d)`` among their ``neighbours`` nearest neighbours whose
    distance ratios ``d(i,a)/d(i,b)`` and ``d(j,c)/d(j,d)`` agree within
    ``ratio_tolerance`` (relative): tolerant enough for shear and anisotropic scale of
    10 %. Each triplet gives an affine; affines whose singular values differ by more
    than ``max_anisotropy`` are dropped; the rest are scored by consensus (source
    landmarks within ``tolerance_um`` of a target), ties broken by median distance.
    The winner is refined by least squares over mutual nearest neighbours within the
    tolerance, less pairs whose residual exceeds 3.5 x the median (a spurious blob next
    to a bead the other image lacks), re-matched and re-fitted until the
    correspondences stop changing.

    Parameters
    ----------
    src_um, dst_um : ndarray
        Source (moving) and target (fixed) landmarks, (x, y) um.
    neighbours : int
        Neighbourhood size for hypotheses.
    ratio_tolerance : float
        Allowed relative difference of the distance ratios.
    max_anisotropy : float
        Largest accepted ratio of the linear part's singular values.
    tolerance_um : float
        Inlier distance, um.
    max_iterations : int
        Cap on the refinement loop (it normally stops after 2-3).

    Returns
    -------
    FiducialResult
    """
    src = _check_points(src_um, "source (EM)")
    dst = _check_points(dst_um, "target (LM)")
    k = min(neighbours, len(src) - 1, len(dst) - 1)
    d_s, n_s = cKDTree(src).query(src, k=k + 1)
    d_t, n_t = cKDTree(dst).query(dst, k=k + 1)
    combos = np.array(list(permutations(range(1, k + 1), 2)))  # ordered neighbour pairs
    ratio_s = np.log(d_s[:, combos[:, 0]] / np.maximum(d_s[:, combos[:, 1]], 1e-12))  # (Ns, C)
    ratio_t = np.log(d_t[:, combos[:, 0]] / np.maximum(d_t[:, combos[:, 1]], 1e-12))  # (Nt, C)
    tree = cKDTree(dst)
    best = (-1, np.inf, None)
    n_hyp = 0
    for i in range(len(src)):
        # (Nt, C_src, C_dst) compatibility of ratio i's combos with every target's combos
        ok = np.abs(ratio_s[i][None, :, None] - ratio_t[:, None, :]) < ratio_tolerance
        jj, cs, ct = np.nonzero(ok)
        if not len(jj):
            continue
        tri_src = np.stack(
            [
                np.broadcast_to(src[i], (len(jj), 2)),
                src[n_s[i, combos[cs, 0]]],
                src[n_s[i, combos[cs, 1]]],
            ],
            axis=1,
        )
        tri_dst = np.stack(
            [dst[jj], dst[n_t[jj, combos[ct, 0]]], dst[n_t[jj, combos[ct, 1]]]], axis=1
        )
        mats, valid = _affines_from_triplets(tri_src, tri_dst)
        sv = np.linalg.svd(mats[:, :2, :2], compute_uv=False)
        valid &= sv[:, 0] <= max_anisotropy * np.maximum(sv[:, 1], 1e-12)
        if not valid.any():
            continue
        mats = mats[valid]
        n_hyp += len(mats)
        moved = np.einsum("hij,nj->hni", mats[:, :2, :2], src) + mats[:, None, :2, 2]
        dist, _ = tree.query(moved.reshape(-1, 2))
        dist = dist.reshape(len(mats), len(src))
        inliers = (dist < tolerance_um).sum(axis=1)
        med = np.median(dist, axis=1)
        h = int(np.lexsort((med, -inliers))[0])
        if inliers[h] > best[0] or (inliers[h] == best[0] and med[h] < best[1]):
            best = (int(inliers[h]), float(med[h]), mats[h])
    if best[2] is None or best[0] < 3:
        raise FiducialError(
            f"no consistent hypothesis among {n_hyp} candidates: the best "
            f"explains {max(best[0], 0)} of {len(src)} source beads within "
            f"{tolerance_um} um (need 3)"
        )
    matrix = best[2]
    pairs = np.zeros((0, 2), dtype=int)
    iterations = 0
    while iterations < max_iterations:
        iterations += 1
        new_pairs = nearest_pairs(apply(matrix, src), dst, tolerance_um, mutual=True)
        if len(new_pairs) < 3:
            raise FiducialError(
                f"refinement lost the correspondences: {len(new_pairs)} mutual "
                f"nearest pairs within {tolerance_um} um"
            )
        new_pairs = _trim_outlier_pairs(src, dst, new_pairs)
        if np.array_equal(new_pairs, pairs):
            break
        pairs = new_pairs
        matrix = fit_affine(src[pairs[:, 0]], dst[pairs[:, 1]])
    return FiducialResult(
        matrix,
        pairs,
        best[1],
        n_hyp,
        "robust",
        {"inliers_of_hypothesis": best[0], "iterations": iterations},
    )


def _trim_outlier_pairs(
    src: np.ndarray, dst: np.ndarray, pairs: np.ndarray, factor: float = 3.5
) -> np.ndarray:
    """Drop pairs whose residual under their own affine fit exceeds ``factor`` x the
    median residual: for Gaussian localisation errors the distances are Rayleigh
    distributed and 3.5 x the median is beyond their 99.9 % quantile, so only pairs
    that do not belong (a spurious blob next to an unmatched bead) go."""
    if len(pairs) <= 4:
        return pairs
    fit = fit_affine(src[pairs[:, 0]], dst[pairs[:, 1]])
    res = np.hypot(*(apply(fit, src[pairs[:, 0]]) - dst[pairs[:, 1]]).T)
    keep = res <= max(factor * np.median(res), 1e-9)
    return pairs[keep] if keep.sum() >= 3 else pairs


# ------------------------------------------------------------------------ error model


def fiducial_registration_error_um(
    src_um: np.ndarray, dst_um: np.ndarray, matrix: np.ndarray
) -> float:
    """RMS distance (um) between mapped source fiducials and their targets (FRE)."""
    res = apply(matrix, src_um) - np.asarray(dst_um, dtype=float)
    return float(np.sqrt(np.mean(np.sum(res**2, axis=1))))


def predicted_tre_um(src_um: np.ndarray, fre_um: float, targets_um: np.ndarray) -> np.ndarray:
    """Predicted target registration error of an affine least-squares fit, in um.

    For ``N`` fiducials at ``p_i`` (moving frame) with isotropic localisation error of
    variance ``sigma^2`` per axis, the fitted affine maps a target ``r`` with error
    variance ``2 sigma^2 (1 / N + (r - c)^T S^-1 (r - c))`` (``c``: fiducial centroid,
    ``S = sum (p_i - c)(p_i - c)^T``): the affine counterpart of Fitzpatrick, West &
    Maurer's (1998) rigid-body TRE formula, and likewise growing with the distance from
    the fiducials' centroid along their principal axes. ``sigma^2`` is estimated without
    bias from the FRE: ``sigma^2 = N FRE^2 / (2 N - 6)``.

    Parameters
    ----------
    src_um : ndarray, shape (N, 2)
        Fiducials used by the fit, moving frame (um), N > 3.
    fre_um : float
        Fiducial registration error (RMS, um) of that fit.
    targets_um : ndarray, shape (M, 2)
        Target positions, moving frame (um).

    Returns
    -------
    ndarray, shape (M,)
        Predicted RMS TRE at each target, um.
    """
    pts = np.asarray(src_um, dtype=float).reshape(-1, 2)
    n = len(pts)
    if n <= 3:
        return np.full(len(np.atleast_2d(targets_um)), np.inf)
    sigma2 = n * fre_um**2 / (2 * n - 6)
    c = pts.mean(0)
    s_inv = np.linalg.inv((pts - c).T @ (pts - c))
    d = np.asarray(targets_um, dtype=float).reshape(-1, 2) - c
    leverage = 1.0 / n + np.einsum("ni,ij,nj->n", d, s_inv, d)
    return np.sqrt(2.0 * sigma2 * leverage)


# ------------------------------------------------------------------------- one case

#: Methods run on every fiducial case, in table order.
METHODS = ("algorithm1", "gaussian_baseline", "robust")

DEFAULT_FIDUCIAL_SETTINGS: dict = {
    "bead_diameter_nm": 100.0,
    "em_psf_fwhm_nm": 0.0,
    "lm_psf_fwhm_nm": 250.0,
    "threshold": "yen",
    "size_range": [0.4, 2.5],
    "min_roundness": 0.5,
    "max_candidates": 1000,
    "databar": "auto",
    "n_candidates": 3,
    "tolerance_um": 0.2,
    "robust": {"neighbours": 4, "ratio_tolerance": 0.25},
    "plausible_affine": DEFAULT_PLAUSIBLE,
    "significance": DEFAULT_SIGNIFICANCE,
}


@dataclass
class MethodOutcome:
    """One method's result on one case: a transform, or why there is none."""

    method: str
    status: str  # "ok", "uncertain: <reason>" or "failed: <reason>"
    matrix: np.ndarray | None = None  # kept when the check fails, for diagnosis
    pairs_src_um: np.ndarray | None = None
    pairs_dst_um: np.ndarray | None = None
    fre_um: float = float("nan")
    tre_um: np.ndarray | None = None  # predicted TRE at the evaluation targets
    result: FiducialResult | None = None
    check: MatchCheck | None = None  # significance and plausibility of the match
    seconds: float = float("nan")  # matching time (benchmarks; never written to results)

    def summary(self, em_xy_um: np.ndarray, lm_xy_um: np.ndarray) -> dict:
        """Status and scores (nm) against landmark pairs (EM um, LM um), for the JSON."""
        entry: dict = {"status": self.status}
        if self.matrix is None:
            return entry
        err_nm = landmark_errors_um(self.matrix, em_xy_um, lm_xy_um) * 1000.0
        mae, std = mae_std(err_nm)
        entry.update(
            mae_nm=mae,
            std_nm=std,
            max_nm=float(err_nm.max()),
            n_matched=len(self.pairs_src_um),
            fre_nm=self.fre_um * 1000.0,
            hypothesis_error_nm=self.result.hypothesis_error_um * 1000.0,
            n_hypotheses=self.result.n_hypotheses,
            **self.result.info,
        )
        if self.check is not None:
            entry["significance"] = self.check.record()
        if self.tre_um is not None:
            entry["predicted_tre_nm_median"] = float(np.median(self.tre_um) * 1000.0)
            entry["predicted_tre_nm_max"] = float(np.max(self.tre_um) * 1000.0)
        return entry

    def transform_record(self) -> dict:
        """The transform as :meth:`clemalign.transforms.Transform.to_dict` (SEM um ->
        confocal um) with its status; a failed method has ``matrix: None`` (and the
        transform the check rejected as ``rejected_matrix``, for diagnosis only)."""
        moving, fixed, method = "em (SEM)", "lm (confocal)", f"fiducials: {self.method}"
        if self.matrix is None or self.status.startswith("failed"):
            rejected = {} if self.matrix is None else {"rejected_matrix": self.matrix.tolist()}
            return {
                "matrix": None,
                "units": "um",
                "direction": "moving_to_fixed",
                "moving": moving,
                "fixed": fixed,
                "method": method,
                "status": self.status,
                **rejected,
            }
        notes = {"fre_nm": self.fre_um * 1000.0, "n_matched": len(self.pairs_src_um)}
        return {
            **Transform(self.matrix, moving, fixed, method, notes).to_dict(),
            "status": self.status,
        }


@dataclass
class FiducialCase:
    """Detections and the outcome of every method on one SEM/confocal pair."""

    em_beads: Beads
    lm_beads: Beads
    em_gauss_um: np.ndarray
    lm_gauss_um: np.ndarray
    outcomes: dict[str, MethodOutcome]
    em_databar_rows: int = 0

    def pairs_table(self) -> pd.DataFrame:
        """Matched bead pairs of every method: ``method, em_x_um, em_y_um, lm_x_um,
        lm_y_um``."""
        rows = [
            (method, sx, sy, tx, ty)
            for method, out in ((m, self.outcomes[m]) for m in METHODS if m in self.outcomes)
            if out.matrix is not None
            for (sx, sy), (tx, ty) in zip(out.pairs_src_um, out.pairs_dst_um, strict=True)
        ]
        return pd.DataFrame(rows, columns=["method", "em_x_um", "em_y_um", "lm_x_um", "lm_y_um"])


def register_fiducial_case(
    em: np.ndarray,
    em_px_per_um: float,
    lm: np.ndarray,
    lm_px_per_um: float,
    settings: dict | None = None,
    targets_um: np.ndarray | None = None,
    em_mask: np.ndarray | None = None,
    lm_mask: np.ndarray | None = None,
) -> FiducialCase:
    """Detect beads in both images and run Algorithm 1, the baseline and the robust mode.

    A method that cannot register (too few or collinear beads, no consistent
    hypothesis) gets ``status = "failed: ..."`` and no transform; the others go on.

    Parameters
    ----------
    em, lm : ndarray
        SEM (moving) and confocal bead channel (fixed), beads bright.
    em_px_per_um, lm_px_per_um : float
        Their sampling, px/um.
    settings : dict, optional
        Overrides of :data:`DEFAULT_FIDUCIAL_SETTINGS`.
    targets_um : ndarray, optional
        Moving-frame points where the predicted TRE is evaluated (e.g. the landmarks);
        only for the least-squares methods (the baseline keeps its 3-point affine, for
        which the formula does not hold).
    em_mask, lm_mask : ndarray of bool, optional
        True where an image holds no beads (burned-in markers); with ``databar: auto``
        the SEM databar (:func:`detect_databar`) is masked too.

    Returns
    -------
    FiducialCase
    """
    s = merge_params(DEFAULT_FIDUCIAL_SETTINGS, settings)
    bead = s["bead_diameter_nm"] / 1000.0
    databar = detect_databar(em) if s["databar"] == "auto" else 0
    em_beads = _detect(em, em_px_per_um, s, "em", bead_mask(em.shape, databar, em_mask))
    lm_beads = _detect(lm, lm_px_per_um, s, "lm", bead_mask(lm.shape, 0, lm_mask))
    em_window = 3.0 * apparent_diameter_um(bead, s["em_psf_fwhm_nm"] / 1000.0)
    lm_window = 3.0 * apparent_diameter_um(bead, s["lm_psf_fwhm_nm"] / 1000.0)
    em_gauss = gaussian_centres(em, em_px_per_um, em_beads.xy_um, em_window)
    lm_gauss = gaussian_centres(lm, lm_px_per_um, lm_beads.xy_um, lm_window)
    tol = s["tolerance_um"]
    lm_field_um = (lm.shape[1] / lm_px_per_um, lm.shape[0] / lm_px_per_um)
    runs = {
        "algorithm1": (
            em_beads.xy_um,
            lm_beads.xy_um,
            lambda a, b: algorithm1(a, b, s["n_candidates"], tol, refine=True),
        ),
        "gaussian_baseline": (
            em_gauss,
            lm_gauss,
            lambda a, b: algorithm1(a, b, s["n_candidates"], tol, refine=False),
        ),
        "robust": (
            em_beads.xy_um,
            lm_beads.xy_um,
            lambda a, b: robust_register(
                a,
                b,
                tolerance_um=tol,
                max_anisotropy=s["plausible_affine"]["max_anisotropy"],
                **s["robust"],
            ),
        ),
    }
    outcomes = {}
    for method, (src, dst, run) in runs.items():
        start = time.perf_counter()
        try:
            res = run(src, dst)
        except FiducialError as error:
            outcomes[method] = MethodOutcome(method, f"failed: {error}")
            outcomes[method].seconds = time.perf_counter() - start
            continue
        seconds = time.perf_counter() - start
        ps, pd_ = src[res.pairs[:, 0]], dst[res.pairs[:, 1]]
        fre = fiducial_registration_error_um(ps, pd_, res.matrix) if len(ps) else float("nan")
        tre = None
        if targets_um is not None and len(ps) > 3 and method != "gaussian_baseline":
            tre = predicted_tre_um(ps, fre, targets_um)
        check = check_match(res, src, dst, tol, lm_field_um)
        status = check.status(s["significance"], s["plausible_affine"])
        outcomes[method] = MethodOutcome(
            method, status, res.matrix, ps, pd_, fre, tre, res, check, seconds
        )
    return FiducialCase(em_beads, lm_beads, em_gauss, lm_gauss, outcomes, databar)


def _detect(
    image: np.ndarray, px_per_um: float, s: dict, modality: str, mask: np.ndarray | None
) -> Beads:
    """:func:`detect_beads` with the case settings for the ``em`` or ``lm`` image."""
    return detect_beads(
        image,
        px_per_um,
        s["bead_diameter_nm"] / 1000.0,
        s[f"{modality}_psf_fwhm_nm"] / 1000.0,
        s["threshold"],
        tuple(s["size_range"]),
        mask,
        s["min_roundness"],
        s["max_candidates"],
    )


def check_match(
    result: FiducialResult,
    src_um: np.ndarray,
    dst_um: np.ndarray,
    tolerance_um: float,
    target_field_um: tuple[float, float],
) -> MatchCheck:
    """Significance and plausibility of a method's transform (:mod:`clemalign.significance`).

    The consistent pairs are counted the same way for every method: mutual nearest
    neighbours within ``tolerance_um`` under the final transform. The multiple-testing
    count is the method's number of hypotheses.

    Parameters
    ----------
    result : FiducialResult
        The method's transform and hypothesis count.
    src_um, dst_um : ndarray
        All candidates of the source (moving) and target (fixed) image, (x, y) um.
    tolerance_um : float
        Correspondence distance, um.
    target_field_um : (float, float)
        Width and height of the target image, um.

    Returns
    -------
    MatchCheck
    """
    consistent = nearest_pairs(apply(result.matrix, src_um), dst_um, tolerance_um, mutual=True)
    return assess_match(
        result.matrix,
        src_um,
        dst_um,
        len(consistent),
        result.n_hypotheses,
        tolerance_um,
        target_field_um,
    )
