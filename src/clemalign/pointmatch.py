"""Point-set primitives shared by the fiducial matchers (:mod:`clemalign.fiducials`,
:mod:`clemalign.constellation`): the result record, input checks, exact affines of
point triplets, nearest-neighbour correspondences and the least-squares polish.

Points are (x, y) in um; a transform maps the moving (source) points onto the fixed
(target) ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from .errors import ClemalignError
from .transforms import apply, fit_affine


class FiducialError(ClemalignError):
    """Registration from fiducials is impossible on this input (too few beads,
    collinear beads, no consistent hypothesis); the message says what was found."""


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
        ``algorithm1``, ``gaussian_baseline``, ``robust`` or ``constellation``.
    info : dict
        Method-specific details (inlier counts, iterations).
    """

    matrix: np.ndarray
    pairs: np.ndarray
    hypothesis_error_um: float
    n_hypotheses: int
    method: str
    info: dict = field(default_factory=dict)


def check_points(points: np.ndarray, role: str) -> np.ndarray:
    """``points`` as float (N, 2) um; :class:`FiducialError` naming ``role`` when fewer
    than 3 or all collinear (an affine is then not determined)."""
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


def affines_from_triplets(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def trim_outlier_pairs(
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


def polish_affine(
    src: np.ndarray,
    dst: np.ndarray,
    matrix: np.ndarray,
    tolerance_um: float,
    max_iterations: int = 20,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Least-squares refinement of a hypothesis: mutual nearest pairs within
    ``tolerance_um``, :func:`trim_outlier_pairs`, affine fit, until the pairs stop
    changing (normally 2-3 rounds; at most ``max_iterations``).

    Returns
    -------
    matrix : ndarray, shape (3, 3)
    pairs : ndarray, shape (M, 2) of int
        (source, target) indices of the final fit.
    iterations : int

    Raises
    ------
    FiducialError
        Fewer than 3 mutual nearest pairs under the current affine.
    """
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
        new_pairs = trim_outlier_pairs(src, dst, new_pairs)
        if np.array_equal(new_pairs, pairs):
            break
        pairs = new_pairs
        matrix = fit_affine(src[pairs[:, 0]], dst[pairs[:, 1]])
    return matrix, pairs, iterations
