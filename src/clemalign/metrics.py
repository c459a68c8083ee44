"""Registration errors in physical units."""

from __future__ import annotations

import numpy as np

from .transforms import apply


def landmark_errors_um(
    matrix: np.ndarray, moving_xy_um: np.ndarray, fixed_xy_um: np.ndarray
) -> np.ndarray:
    """Distance (um) between each moving landmark mapped by ``matrix`` and its fixed partner.

    Parameters
    ----------
    matrix : ndarray, shape (3, 3)
        Moving -> fixed transform, um.
    moving_xy_um, fixed_xy_um : ndarray, shape (N, 2)
        Corresponding landmarks (x, y) in um.

    Returns
    -------
    ndarray, shape (N,)
        Absolute errors, um.
    """
    diff = apply(matrix, moving_xy_um) - np.asarray(fixed_xy_um, dtype=float).reshape(-1, 2)
    return np.hypot(diff[:, 0], diff[:, 1])


def mae_std(errors: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of absolute errors, as the paper's tables report them.

    The STD is the sample standard deviation (``ddof=1``) of the absolute errors; with
    fewer than two errors it is NaN.
    """
    errors = np.asarray(errors, dtype=float)
    if errors.size == 0:
        return float("nan"), float("nan")
    std = float(np.std(errors, ddof=1)) if errors.size > 1 else float("nan")
    return float(np.mean(errors)), std


def pearson_r(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Pearson correlation of two images over ``mask`` (finite pixels by default)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    if mask is not None:
        keep &= mask
    return float(np.corrcoef(a[keep], b[keep])[0, 1])


def normalized_mutual_information(
    a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, bins: int = 64
) -> float:
    """Studholme's NMI, (H(a) + H(b)) / H(a, b), in [1, 2], over ``mask``.

    Intensities are binned linearly between each image's 0.5 and 99.5 percentiles.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    if mask is not None:
        keep &= mask
    x, y = a[keep], b[keep]
    rx = np.percentile(x, [0.5, 99.5])
    ry = np.percentile(y, [0.5, 99.5])
    joint, _, _ = np.histogram2d(np.clip(x, *rx), np.clip(y, *ry), bins=bins, range=[rx, ry])
    p = joint / joint.sum()

    def entropy(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    return (entropy(p.sum(1)) + entropy(p.sum(0))) / entropy(p)
