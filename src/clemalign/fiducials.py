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
* :func:`robust_match`: beyond the paper. Local constellations (triangles of
  neighbouring candidates, :mod:`clemalign.constellation`) from the most bead-like
  source candidates, verified by consensus, polished by iterated mutual-nearest-
  neighbour least squares, each answer tested against chance (:func:`check_match`).
  Registers tilt (anisotropy up to 1.35), mirror and shear among hundreds of
  bead-like distractors and tolerates missing beads.
* :func:`predicted_tre_um`: fiducial registration error and the predicted target
  registration error of an affine least-squares fit (Fitzpatrick's analysis, for the
  affine model).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.optimize import least_squares
from scipy.spatial import cKDTree
from skimage import filters, measure, morphology

from .constellation import constellation_register
from .metrics import landmark_errors_um, mae_std
from .pointmatch import (
    FiducialError,
    FiducialResult,
    affines_from_triplets,
    check_points,
    nearest_pairs,
    polish_affine,
)
from .settings import merge_params
from .significance import (
    DEFAULT_PLAUSIBLE,
    DEFAULT_SIGNIFICANCE,
    TOLERANCE_FRACTIONS,
    MatchCheck,
    assess_match,
)
from .transforms import (
    apply,
    fit_affine,
    px_to_um,
    rc_px_to_xy_um,
    transform_record,
    um_to_px,
)

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


def _score_median(mats: np.ndarray, src: np.ndarray, tree: cKDTree) -> np.ndarray:
    moved = np.einsum("hij,nj->hni", mats[:, :2, :2], src) + mats[:, None, :2, 2]
    dist, _ = tree.query(moved.reshape(-1, 2))
    return np.median(dist.reshape(len(mats), len(src)), axis=1)


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
    src = check_points(src_um, "source (EM)")
    dst = check_points(dst_um, "target (LM)")
    r_src, nb_src = neighbour_ratios(src)
    r_dst, nb_dst = neighbour_ratios(dst)
    n_cand = min(n_candidates, len(dst))
    cand = np.argsort(np.abs(r_dst[None, :] - r_src[:, None]), axis=1)[:, :n_cand]
    i = np.repeat(np.arange(len(src)), n_cand)
    j = cand.ravel()
    tri_src = np.stack([src[i], src[nb_src[i, 0]], src[nb_src[i, 1]]], axis=1)
    tri_dst = np.stack([dst[j], dst[nb_dst[j, 0]], dst[nb_dst[j, 1]]], axis=1)
    mats, valid = affines_from_triplets(tri_src, tri_dst)
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


def robust_match(
    src_um: np.ndarray,
    dst_um: np.ndarray,
    settings: dict,
    check_tolerance_um: float,
    target_field_um: tuple[float, float],
) -> FiducialResult:
    """The robust mode: constellation matching that holds in crowds, tilt and mirror.

    Bright spots that are not beads (puncta, debris) outnumber the beads in both images
    of a real sample. Each attempt of ``settings["attempts"]`` runs
    :func:`clemalign.constellation.constellation_register` from the ``candidates`` most
    bead-like source candidates (``src_um`` is sorted by bead-likeness, as
    :func:`detect_beads` returns it) to every target candidate, polishes the answer
    with all source candidates (:func:`clemalign.pointmatch.polish_affine`) and tests
    it (:func:`check_match`). The first significant and plausible answer is returned;
    when none is, the one with the smallest number of false alarms. The hypotheses of
    every attempt tried count in ``n_hypotheses`` (the multiple-testing count).

    Parameters
    ----------
    src_um, dst_um : ndarray, shape (N, 2), (M, 2)
        Source (moving, most bead-like first) and target candidates, (x, y) um.
    settings : dict
        ``fiducials.robust``: ``tolerance_um``, ``neighbours`` and ``attempts`` (each
        ``candidates`` and optionally ``target_neighbours`` and ``tolerance_um``), plus
        ``scale_range``, ``max_anisotropy`` (the plausible affine) and
        ``significance``.
    check_tolerance_um : float
        Largest correspondence distance of the significance test, um.
    target_field_um : (float, float)
        Width and height of the target image, um.

    Returns
    -------
    FiducialResult
        ``method="robust"``; ``info`` adds ``attempt`` (0-based index of the answer)
        and ``attempts_tried``.

    Raises
    ------
    FiducialError
        Every attempt failed to produce a transform (the last attempt's reason).
    """
    src = check_points(src_um, "source (EM)")
    dst = check_points(dst_um, "target (LM)")
    plausible = {k: settings[k] for k in ("scale_range", "max_anisotropy")}
    best, best_nfa, total, error = None, np.inf, 0, None
    for k, attempt in enumerate(settings["attempts"]):
        tolerance = float(attempt.get("tolerance_um", settings["tolerance_um"]))
        try:
            res = constellation_register(
                src[: int(attempt["candidates"])],
                dst,
                scale_range=tuple(plausible["scale_range"]),
                max_anisotropy=float(plausible["max_anisotropy"]),
                tolerance_um=tolerance,
                neighbours=int(settings["neighbours"]),
                target_neighbours=attempt.get("target_neighbours"),
            )
            matrix, pairs, _ = polish_affine(src, dst, res.matrix, tolerance)
        except FiducialError as err:
            error = err
            continue
        total += res.n_hypotheses
        res = FiducialResult(
            matrix,
            pairs,
            res.hypothesis_error_um,
            total,
            "robust",
            {**{key: v for key, v in res.info.items() if key != "n_hypotheses"}, "attempt": k},
        )
        check = check_match(res, src, dst, check_tolerance_um, target_field_um)
        if check.log10_nfa < best_nfa:
            best, best_nfa = res, check.log10_nfa
        if check.status(settings["significance"], plausible) == "ok":
            break
    if best is None:
        raise error
    best.n_hypotheses = total
    best.info["attempts_tried"] = k + 1
    return best


def robust_settings(settings: dict | None = None) -> dict:
    """The ``settings`` argument of :func:`robust_match` from fiducial settings
    (overrides of :data:`DEFAULT_FIDUCIAL_SETTINGS`): ``robust``, the plausible affine
    and the significance thresholds in one dict."""
    s = merge_params(DEFAULT_FIDUCIAL_SETTINGS, settings)
    return {**s["robust"], **s["plausible_affine"], "significance": s["significance"]}


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
    "robust": {
        "tolerance_um": 0.1,
        "neighbours": 16,
        "attempts": [
            {"candidates": 60},
            {"candidates": 60, "tolerance_um": 0.04},
            {"candidates": 40, "target_neighbours": 32},
            {"candidates": 40, "target_neighbours": 32, "tolerance_um": 0.04},
        ],
    },
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
            return transform_record(self.status, None, moving, fixed, method, None, self.matrix)
        notes = {"fre_nm": self.fre_um * 1000.0, "n_matched": len(self.pairs_src_um)}
        return transform_record(self.status, self.matrix, moving, fixed, method, notes)


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
            lambda a, b: robust_match(a, b, robust_settings(s), tol, lm_field_um),
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
    neighbours within a tolerance under the final transform whose residual, divided by
    ``1 - h`` (``h`` its leverage among those pairs), is still within it: when the
    transform is the least-squares fit to those pairs (as after a polish), that is the
    pair's residual under the fit without it. A final fit is adjusted to its pairs,
    and a few chance pairs it pulled in would otherwise look consistent. As in ORSA, the tolerance
    is chosen where the number of false alarms is smallest among
    :data:`clemalign.significance.TOLERANCE_FRACTIONS` of ``tolerance_um``; the
    multiple-testing count is the method's number of hypotheses times the number of
    tolerances tried.

    Parameters
    ----------
    result : FiducialResult
        The method's transform and hypothesis count.
    src_um, dst_um : ndarray
        All candidates of the source (moving) and target (fixed) image, (x, y) um.
    tolerance_um : float
        Largest correspondence distance, um.
    target_field_um : (float, float)
        Width and height of the target image, um.

    Returns
    -------
    MatchCheck
        At the tolerance with the smallest NFA (``MatchCheck.tolerance_um``).
    """
    src = np.asarray(src_um, dtype=float).reshape(-1, 2)
    dst = np.asarray(dst_um, dtype=float).reshape(-1, 2)
    moved = apply(result.matrix, src)
    n_tests = max(result.n_hypotheses, 1) * len(TOLERANCE_FRACTIONS)
    checks = []
    for fraction in TOLERANCE_FRACTIONS:
        eps = fraction * tolerance_um
        pairs = nearest_pairs(moved, dst, eps, mutual=True)
        residual = np.hypot(*(moved[pairs[:, 0]] - dst[pairs[:, 1]]).T)
        with np.errstate(divide="ignore", invalid="ignore"):  # 3 pairs or fewer: none holds
            held_out = residual / (1.0 - _leverage(src[pairs[:, 0]]))
        n_consistent = int(np.sum(held_out < eps))
        checks.append(
            assess_match(result.matrix, src, dst, n_consistent, n_tests, eps, target_field_um)
        )
    return min(checks, key=lambda c: (c.log10_nfa, -c.tolerance_um))


def _leverage(points: np.ndarray) -> np.ndarray:
    """Diagonal of the hat matrix of an affine least-squares fit on ``points`` (N, 2):
    a pair's residual divided by ``1 - h`` is its residual when it is left out of the
    fit. 1 (no pair held out counts) for 3 points or fewer or a degenerate design."""
    n = len(points)
    if n <= 3:
        return np.ones(n)
    design = np.column_stack([points, np.ones(n)])
    gram = design.T @ design
    if np.linalg.cond(gram) > 1e12:
        return np.ones(n)
    h = np.einsum("ni,ij,nj->n", design, np.linalg.inv(gram), design)
    return np.minimum(h, 1.0 - 1e-12)
