"""Registration routes of the analogy track: which moving image is registered against the
confocal under which measures (paper sec. 4.7 and 5.3), and the capture range.

For every case the moving image lives on the preprocessed TEM grid and the fixed image
is the confocal crop; transforms map TEM um to crop um. The *sources* are:

``sparse``
    the sparse-analogy prediction against the confocal (measures ssd, mi, and wssd: eq.
    12 weighted by ``1 - uncertainty``);
``sparse_denoised``
    the same prediction against the consistently denoised confocal (sec. 4.7);
``hertzmann``
    the original image-analogy prediction against the confocal;
``raw``
    the TEM itself: inverted (``1 - TEM``) for SSD, as the paper notes, raw for MI.

How each answer is scored is :mod:`clemalign.evaluation`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .confidence import ConfidenceLimits, assess, chance_level, with_consensus
from .evaluation import score
from .io import read_image
from .register import (
    DEFAULT_SSD_CONTRAST_UM,
    ContrastCache,
    RegistrationResult,
    grid_error_um,
    perturb_affine,
    register_affine,
    weights_from_uncertainty,
)
from .search import StartSearch, crop_around, pick_refined, start_candidates
from .transforms import DeformationField, translation_matrix

#: Moving-image sources, in the order of the tables.
SOURCES = ("sparse", "sparse_denoised", "hertzmann", "raw")
#: Sources whose prediction has an uncertainty map, so eq. 12 applies.
WEIGHTED_SOURCES = ("sparse", "sparse_denoised")


def source_measures(source: str, measures: list[str], weighted_ssd: bool) -> list[str]:
    """Measures registered for a source: the configured ones, plus ``wssd`` where it applies."""
    if source not in SOURCES:
        raise ValueError(f"unknown registration source {source!r}; use one of {SOURCES}")
    out = list(measures)
    if weighted_ssd and source in WEIGHTED_SOURCES:
        out.append("wssd")
    return out


def moving_image(source: str, measure: str, tem: np.ndarray, predicted: np.ndarray | None):
    """The moving image of a (source, measure): the prediction, or the TEM for ``raw``.

    For ``raw`` the TEM is inverted (``1 - TEM``, intensities in [0, 1]) under SSD, where
    dark-in-TEM must meet bright-in-confocal, and kept as it is under MI, which does not
    care.
    """
    if source == "raw":
        tem = np.asarray(tem, dtype=np.float64)
        return 1.0 - tem if measure in ("ssd", "wssd") else tem
    if predicted is None:
        raise ValueError(f"source {source!r} needs a predicted image")
    return np.asarray(predicted, dtype=np.float64)


@dataclass
class RegistrationImages:
    """What one (case, source) registers: all on the preprocessed sampling ``px_per_um``.

    Attributes
    ----------
    tem : ndarray
        The preprocessed TEM (moving grid).
    fixed : ndarray
        The confocal crop, or its denoised version for ``sparse_denoised``.
    predicted : ndarray or None
        The predicted confocal on the TEM grid (None for ``raw``).
    weights : ndarray or None
        Eq. 12 weights ``1 - uncertainty`` on the TEM grid (sparse sources only).
    px_per_um : float
    """

    tem: np.ndarray
    fixed: np.ndarray
    predicted: np.ndarray | None
    weights: np.ndarray | None
    px_per_um: float


def source_files(source: str, files: Mapping[str, str]) -> tuple[str, str | None, str | None]:
    """The files one source registers, picked from a case's registration inputs.

    Parameters
    ----------
    source : str
        One of :data:`SOURCES`.
    files : mapping
        A case's inputs by role: ``lm`` (the confocal crop), and where the sources need
        them ``sparse`` and ``sparse_uncertainty`` (the sparse prediction and its spread),
        ``confocal_denoised``, ``hertzmann``.

    Returns
    -------
    fixed, predicted, uncertainty : str, str or None, str or None
        The fixed image (the denoised confocal for ``sparse_denoised``), the moving
        prediction (None for ``raw``) and the eq. 12 uncertainty (sparse sources only).
    """
    if source not in SOURCES:
        raise ValueError(f"unknown registration source {source!r}; use one of {SOURCES}")
    fixed = files["confocal_denoised"] if source == "sparse_denoised" else files["lm"]
    if source == "raw":
        return fixed, None, None
    if source == "hertzmann":
        return fixed, files["hertzmann"], None
    return fixed, files["sparse"], files["sparse_uncertainty"]


def load_registration_images(
    case: str,
    em: str,
    fixed: str,
    predicted: str | None = None,
    uncertainty: str | None = None,
) -> RegistrationImages:
    """Read the images of one registration and check they share one sampling.

    Raises
    ------
    ValueError
        Naming the case and the file whose px/um differs from the TEM's.
    """
    tem, ppu = read_image(em)
    fixed_img, fixed_ppu = read_image(fixed)
    if abs(fixed_ppu - ppu) > 1e-6 * ppu:
        raise ValueError(f"case {case}: {fixed} is at {fixed_ppu} px/um, the TEM at {ppu}")
    pred = None if predicted is None else read_image(predicted)[0]
    weights = None if uncertainty is None else weights_from_uncertainty(read_image(uncertainty)[0])
    return RegistrationImages(tem, fixed_img, pred, weights, ppu)


def register_measures(
    moving_for: Callable[[str], np.ndarray],
    fixed: np.ndarray,
    start: np.ndarray,
    measures: list[str],
    px_per_um: float,
    weights: np.ndarray | None = None,
    options: Mapping[str, object] | None = None,
    *,
    confidence: ConfidenceLimits | None = None,
    rng: np.random.Generator | None = None,
    search: StartSearch | None = None,
    contrast: ContrastCache | None = None,
) -> dict[str, dict]:
    """Register one source under each measure; a failure is recorded, not raised.

    Parameters
    ----------
    moving_for : callable
        ``measure -> moving image`` on the TEM grid.
    fixed : ndarray
        Confocal crop (same sampling).
    start : ndarray, shape (3, 3)
        Starting TEM -> crop matrix, um.
    measures : list of str
        ``ssd``, ``mi``, ``wssd``.
    px_per_um : float
        Sampling of both images.
    weights : ndarray, optional
        Eq. 12 weights on the TEM grid, in [0, 1] (``wssd`` only).
    options : mapping, optional
        Keyword options of :func:`clemalign.register.register_affine` (levels, bins...).
    confidence : ConfidenceLimits, optional
        When given, every answer is checked (:func:`clemalign.confidence.assess`) and its
        status is ``ok``, ``uncertain: <reason>`` or ``failed: <reason>``; without it an
        answer the optimiser returns is ``ok``.
    rng : numpy.random.Generator, optional
        For the checks' chance placements (required with ``confidence``).
    search : StartSearch, optional
        Search about the start first (:func:`clemalign.search.start_candidates`, on the
        source's SSD moving image, whose intensities rise with the confocal's); each
        candidate is registered at the coarsest level, and the one whose answer
        correlates best with the confocal (locally normalised) is registered at every
        level. None: the local registration from ``start`` alone (the paper's).
    contrast : ContrastCache, optional
        Locally normalised images kept from earlier calls on the same ``fixed`` (and
        ``moving_for`` returning the same arrays), e.g. :func:`capture_trials`' trials.

    Returns
    -------
    dict
        Per measure: ``status``; when the optimiser returned an answer, ``matrix`` (nested
        lists), ``value``, ``info``, with ``search`` the search's ``search`` record
        (candidates, winner, its correlation and its ``gap`` to the best other basin)
        and, with ``confidence``, the checks' ``confidence`` record.
    """
    options = dict(options or {})
    # the candidates and the winner register the same images: normalise them once
    moving_for = functools.cache(moving_for)
    contrast_um = options.pop("ssd_contrast_um", DEFAULT_SSD_CONTRAST_UM)
    if contrast is None or not contrast.serves(fixed, px_per_um, contrast_um):
        contrast = ContrastCache(fixed, px_per_um, contrast_um)

    def run(image: np.ndarray, begin: np.ndarray, measure: str, **more: int) -> RegistrationResult:
        w = weights if measure == "wssd" else None
        moving_c, fixed_c = contrast(image, measure, px_per_um, w, options.get("moving_mask"))
        return register_affine(
            moving_c,
            fixed_c,
            begin,
            moving_px_per_um=px_per_um,
            fixed_px_per_um=px_per_um,
            measure=measure,
            weights=w,
            ssd_contrast_um=None,
            **(options | more),
        )

    probe = moving_for("ssd") if search is not None else None
    found = None
    if search is not None:
        found = start_candidates(
            probe,
            fixed,
            start,
            moving_px_per_um=px_per_um,
            fixed_px_per_um=px_per_um,
            search=search,
            contrast=contrast,
        )
    out: dict[str, dict] = {}
    for measure in measures:
        try:
            if found is None:
                result, searched = run(moving_for(measure), start, measure), None
            else:
                coarsest = int(options.get("levels", 3)) - 1
                result, searched = _best_candidate(
                    run,
                    moving_for(measure),
                    probe,
                    fixed,
                    found,
                    measure,
                    px_per_um,
                    search.contrast_um,
                    coarsest,
                    contrast,
                )
        except (ValueError, np.linalg.LinAlgError, FloatingPointError) as err:
            out[measure] = {"status": f"failed: {err}"}
            continue
        out[measure] = {
            "status": "ok",
            "matrix": np.asarray(result.matrix).tolist(),
            "value": float(result.value),
            "info": result.info,
            **({"search": searched} if searched is not None else {}),
        }
        if confidence is not None:
            moving = moving_for(measure)

            def refine(image, begin, measure=measure):
                return run(image, begin, measure).matrix

            chance = chance_level(
                refine, moving, fixed, result.matrix, px_per_um, measure, rng, confidence
            )
            converged = bool(result.info["levels"][-1]["converged"])
            status, record = assess(
                moving,
                fixed,
                result.matrix,
                start,
                px_per_um,
                measure,
                chance,
                confidence,
                converged,
                search_gap=(searched or {}).get("gap"),
            )
            out[measure] |= {"status": status, "confidence": record | {"chance": chance}}
    return out


def _best_candidate(
    run: Callable[..., RegistrationResult],
    moving: np.ndarray,
    probe: np.ndarray,
    fixed: np.ndarray,
    found: list[dict],
    measure: str,
    px_per_um: float,
    contrast_um: float,
    coarsest: int,
    contrast: ContrastCache | None = None,
) -> tuple[RegistrationResult, dict]:
    """The search's candidates registered at the coarsest level; the winner (best
    locally normalised correlation of ``probe``) registered at every level; ``contrast``:
    the registration's normalised images, shared with the choice of the winner."""
    first, kept = [], []
    for c in found:
        try:
            first.append(run(moving, c["matrix"], measure, finest_level=coarsest).matrix)
            kept.append(c)
        except (ValueError, np.linalg.LinAlgError, FloatingPointError):
            continue
    if not first:
        raise ValueError("no candidate of the start search overlaps the fixed image enough")
    best, r, gap = pick_refined(probe, fixed, first, px_per_um, contrast_um, contrast)
    if best < 0:
        raise ValueError("no candidate of the start search overlaps the fixed image enough")
    record = {
        "candidates": [
            {"rotation_deg": c["rotation_deg"], "scale": c["scale"], "ncc": c["ncc"]} for c in kept
        ],
        "winner": best,
        "similarity": r,
        "gap": gap if np.isfinite(gap) else None,  # None: no other basin among the candidates
    }
    return run(moving, first[best], measure), record


def capture_trials(
    moving_for: Callable[[str], np.ndarray],
    fixed: np.ndarray,
    start: np.ndarray,
    answers: Mapping[str, np.ndarray],
    px_per_um: float,
    rng: np.random.Generator,
    trials: int,
    bounds: Mapping[str, float],
    success_um: float,
    landmarks: pd.DataFrame,
    ground_truth: np.ndarray | None,
    weights: np.ndarray | None = None,
    options: Mapping[str, object] | None = None,
    *,
    confidence: ConfidenceLimits | None = None,
    chance: Mapping[str, Mapping] | None = None,
    agreed: tuple[str, np.ndarray] | None = None,
    search: StartSearch | None = None,
) -> pd.DataFrame:
    """Register again from perturbed starts; did each come back to its unperturbed answer?

    The same ``trials`` perturbations (drawn once from ``rng``) are used for every
    measure, so measures are compared on equal starts.

    Parameters
    ----------
    answers : mapping
        Measure -> unperturbed answer (3x3, TEM um -> crop um); only these measures run.
    bounds : mapping
        ``max_rotation_deg``, ``max_scale``, ``max_shear``, ``max_translation_um``.
    success_um : float
        A trial succeeds when its mean distance over the TEM grid to the unperturbed
        answer is at most this.
    confidence : ConfidenceLimits, optional
        Check every trial's answer (:func:`clemalign.confidence.assess`) against
        ``chance`` (measure -> the unperturbed registration's ``chance_level``).
    agreed : (str, ndarray), optional
        The case's consensus (:func:`clemalign.confidence.consensus`): a trial's answer
        far from it is uncertain.
    search : StartSearch, optional
        Search about each perturbed start first, as :func:`register_measures` does (one
        search per trial, shared by the measures).
    (others as in :func:`register_measures` and :func:`score`)

    Returns
    -------
    DataFrame
        One row per (measure, trial): ``measure, trial, start_um`` (the perturbed start's
        distance to the unperturbed one), ``to_answer_um``, ``success``, ``error_um`` (the
        ground-truth grid error when there is ground truth, else the landmark MAE),
        ``reference`` (which of the two), ``search_gap`` (the start search's lead of the
        winner over the best other basin; inf: one basin; NaN: no search), ``status``.
    """
    columns = [
        "measure",
        "trial",
        "start_um",
        "to_answer_um",
        "success",
        "error_um",
        "search_gap",
        "status",
    ]
    reference = "ground truth" if ground_truth is not None else "landmarks"
    if not answers:
        return pd.DataFrame(columns=[*columns, "reference"])
    shape = np.asarray(moving_for(next(iter(answers)))).shape  # the TEM grid
    centre = (shape[1] / (2 * px_per_um), shape[0] / (2 * px_per_um))
    starts = [
        perturb_affine(
            start,
            rng,
            centre,
            max_rotation_deg=bounds["max_rotation_deg"],
            max_scale=bounds["max_scale"],
            max_shear=bounds["max_shear"],
            max_translation_um=bounds["max_translation_um"],
        )
        for _ in range(trials)
    ]
    rows = []
    moving_for = functools.cache(moving_for)  # same arrays every trial: normalised once
    contrast_um = dict(options or {}).get("ssd_contrast_um", DEFAULT_SSD_CONTRAST_UM)
    contrast = ContrastCache(fixed, px_per_um, contrast_um)
    for trial, perturbed in enumerate(starts):
        every = register_measures(
            moving_for,
            fixed,
            perturbed,
            list(answers),
            px_per_um,
            weights,
            options,
            search=search,
            contrast=contrast,
        )
        for measure, answer in answers.items():
            got = every[measure]
            matrix = np.asarray(got["matrix"]) if "matrix" in got else None
            status = got["status"]
            gap = got.get("search", {}).get("gap")  # None: one basin, or no search
            if confidence is not None and matrix is not None:
                converged = bool(got["info"]["levels"][-1]["converged"])
                args = (moving_for(measure), fixed, matrix, perturbed, px_per_um, measure)
                status, _ = assess(*args, chance[measure], confidence, converged, search_gap=gap)
                status = with_consensus(status, matrix, agreed, shape, px_per_um, confidence)
            row = {
                "measure": measure,
                "trial": trial,
                "start_um": grid_error_um(perturbed, answer, shape, px_per_um),
                "search_gap": np.nan if "search" not in got else np.inf if gap is None else gap,
                "status": status,
            }
            if matrix is not None:
                to_answer = grid_error_um(matrix, answer, shape, px_per_um)
                scored = score(matrix, landmarks, ground_truth, shape, px_per_um)
                row |= {
                    "to_answer_um": to_answer,
                    "success": bool(to_answer <= success_um),
                    "error_um": scored["gt_mean_um" if ground_truth is not None else "mae_um"],
                }
            else:
                row |= {"to_answer_um": np.nan, "success": False, "error_um": np.nan}
            rows.append(row)
    rows.sort(key=lambda row: list(answers).index(row["measure"]))  # stable: trials in order
    table = pd.DataFrame(rows, columns=columns)
    table["reference"] = reference
    return table


def capture_summary(trials: pd.DataFrame) -> pd.DataFrame:
    """Per (protocol, case, source, measure): trials, success rate, median error (um), and
    how honest the statuses were.

    ``median_um`` is the median over the trials of ``error_um`` (ground-truth grid error
    where ground truth is known, otherwise the landmark MAE; ``reference`` says which);
    trials without an answer count as failures and do not enter the median.
    ``flagged_rate`` is the fraction of trials whose status is not ``ok``;
    ``silent_over_1um`` counts trials reported ``ok`` although ``error_um`` exceeds 1 um
    (the failures a user would not be warned of).
    """
    rows = []
    keys = ["protocol", "case", "source", "measure", "reference"]
    if "protocol" not in trials:
        trials = trials.assign(protocol="standard")
    for (protocol, case, source, measure, reference), group in trials.groupby(keys, sort=False):
        rows.append(
            {
                "protocol": protocol,
                "case": case,
                "source": source,
                "measure": measure,
                "trials": len(group),
                "success_rate": float(group["success"].mean()),
                "median_um": float(group["error_um"].median()),
                "flagged_rate": float((group["status"] != "ok").mean()),
                "silent_over_1um": int(((group["status"] == "ok") & (group["error_um"] > 1)).sum()),
                "reference": reference,
            }
        )
    return pd.DataFrame(rows)


def case_answers(results: Mapping[str, Mapping]) -> dict[str, np.ndarray]:
    """Every answer of a case that is not ``failed``, as ``"source/measure"`` -> 3x3.

    Parameters
    ----------
    results : mapping
        Source -> that source's registration record (the ``register`` rule's JSON:
        ``{"measures": {measure: {"status", "matrix", ...}}}``).
    """
    return {
        f"{source}/{measure}": np.asarray(r["matrix"], float)
        for source, record in results.items()
        for measure, r in record["measures"].items()
        if "matrix" in r and not r["status"].startswith("failed")
    }


# ------------------------------------------------------------------ non-rigid refinement

# A refined route's rows carry the measure suffixed by clemalign.tables.NONRIGID_SUFFIX:
# Table 2's ``mi+bspline`` is the ``mi`` answer followed by register_bspline.


@dataclass(frozen=True)
class NonrigidOptions:
    """Which routes get the B-spline refinement, and how (``registration.nonrigid``).

    Attributes
    ----------
    routes : tuple of str
        ``"source/measure"`` routes refined after their affine answer.
    grid_spacing_um : float
        Finest control-point spacing, um.
    bending_weight : dict
        Measure -> bending-energy weight (cost units x um²).
    finest_level : int
        Last pyramid level registered (0: full sampling).
    max_displacement_rms_um : float
        A field moving the TEM by more than this (RMS over the TEM, um) beyond the affine
        is ``uncertain``: more than a section's distortion plausibly is.
    """

    routes: tuple[str, ...]
    grid_spacing_um: float
    bending_weight: dict
    finest_level: int
    max_displacement_rms_um: float

    @classmethod
    def maybe(cls, config: Mapping | None) -> NonrigidOptions | None:
        """From ``registration.nonrigid`` (None: no refinement)."""
        if not config or not config.get("routes"):
            return None
        return cls(
            tuple(config["routes"]),
            float(config["grid_spacing_um"]),
            {k: float(v) for k, v in config["bending_weight"].items()},
            int(config["finest_level"]),
            float(config["max_displacement_rms_um"]),
        )

    def measures_of(self, source: str) -> list[str]:
        """The measures of ``source`` that are refined."""
        return [r.split("/", 1)[1] for r in self.routes if r.split("/", 1)[0] == source]


def refine_nonrigid(
    results: dict[str, dict],
    moving_for: Callable[[str], np.ndarray],
    fixed: np.ndarray,
    px_per_um: float,
    options: NonrigidOptions,
    source: str,
    weights: np.ndarray | None = None,
    optimiser: Mapping[str, object] | None = None,
) -> None:
    """Add the B-spline refinement to each configured measure's affine answer, in place.

    ``results[measure]["nonrigid"]`` becomes ``status``, ``field`` (the moving um ->
    fixed um mapping, :meth:`clemalign.transforms.DeformationField.to_dict`) and
    ``info``. The status is the affine's, ``failed`` when there is no affine answer, the
    refinement raised or the field folds, and ``uncertain`` when the field moves the TEM
    by more than ``options.max_displacement_rms_um`` beyond the affine.

    Parameters
    ----------
    results : dict
        :func:`register_measures`' answer for ``source``.
    moving_for : callable
        ``measure -> moving image`` on the TEM grid.
    fixed : ndarray
        Confocal crop (same sampling, ``px_per_um``).
    px_per_um : float
        Sampling of both images.
    options : NonrigidOptions
        Routes and parameters.
    source : str
        The source registered.
    weights : ndarray, optional
        Eq. 12 weights (``wssd``).
    optimiser : mapping, optional
        ``levels`` and ``bins`` of the affine registration, used again.
    """
    optimiser = dict(optimiser or {})
    for measure in options.measures_of(source):
        if measure not in results:
            continue
        results[measure]["nonrigid"] = _refine_one(
            results[measure],
            moving_for(measure),
            fixed,
            px_per_um,
            options,
            measure,
            weights,
            optimiser,
        )


def _refine_one(
    affine: Mapping,
    moving: np.ndarray,
    fixed: np.ndarray,
    px_per_um: float,
    options: NonrigidOptions,
    measure: str,
    weights: np.ndarray | None,
    optimiser: dict,
) -> dict:
    """One route's refinement record (see :func:`refine_nonrigid`)."""
    from .nonrigid import register_bspline

    if "matrix" not in affine or affine["status"].startswith("failed"):
        return {"status": affine["status"]}  # nothing to refine: the affine's reason
    try:
        result = register_bspline(
            moving,
            fixed,
            np.asarray(affine["matrix"], float),
            moving_px_per_um=px_per_um,
            fixed_px_per_um=px_per_um,
            measure=measure,
            grid_spacing_um=options.grid_spacing_um,
            levels=int(optimiser.get("levels", 3)),
            finest_level=options.finest_level,
            bending_weight=options.bending_weight[measure],
            bins=int(optimiser.get("bins", 32)),
            weights=weights if measure == "wssd" else None,
            ssd_contrast_um=optimiser.get("ssd_contrast_um"),
        )
    except (ValueError, np.linalg.LinAlgError, FloatingPointError) as err:
        return {"status": f"failed: the non-rigid refinement failed: {err}"}
    keys = ("seconds", "bending", "displacement_rms_um", "min_jacobian_ratio")
    info = {k: result.info[k] for k in keys} | {
        "grid_spacing_um": options.grid_spacing_um,
        "bending_weight": options.bending_weight[measure],
    }
    status = _nonrigid_status(affine["status"], info, options)
    return {
        "status": status,
        "value": float(result.value),
        "info": info,
        "field": result.field.to_dict(),
    }


def refine_nonrigid_in_field(
    moving: np.ndarray,
    fixed: np.ndarray,
    matrix: np.ndarray,
    status: str,
    *,
    moving_px_per_um: float,
    fixed_px_per_um: float,
    crop_margin_um: float,
    options: NonrigidOptions,
    measure: str = "mi",
    optimiser: Mapping[str, object] | None = None,
) -> tuple[dict, DeformationField | None]:
    """The B-spline refinement of an affine answer given in a whole fixed image's frame (the
    global search's), on the crop a landmark-started pair would have
    (:func:`clemalign.search.crop_around`).

    Returns
    -------
    record : dict
        ``status`` (as :func:`refine_nonrigid`'s, from the affine's ``status``), and when
        refined ``value`` and ``info``.
    field : DeformationField or None
        Moving um -> the whole fixed image's um; None when the refinement failed.
    """
    crop, lo = crop_around(
        fixed, fixed_px_per_um, matrix, moving.shape, moving_px_per_um, crop_margin_um
    )
    to_crop = translation_matrix(-lo[0], -lo[1])
    affine = {"matrix": to_crop @ np.asarray(matrix, float), "status": status}
    record = _refine_one(
        affine, moving, crop, moving_px_per_um, options, measure, None, dict(optimiser or {})
    )
    if "field" not in record:
        return record, None
    field = DeformationField.from_dict(record.pop("field")).then(translation_matrix(lo[0], lo[1]))
    return record, field


def _nonrigid_status(affine_status: str, info: Mapping, options: NonrigidOptions) -> str:
    """The affine's status, downgraded by what the field itself shows."""
    ratio, rms = info["min_jacobian_ratio"], info["displacement_rms_um"]
    if ratio <= 0:
        return f"failed: the non-rigid field folds (smallest area ratio {ratio:.2f})"
    if rms > options.max_displacement_rms_um:
        reason = (
            f"the non-rigid field moves the TEM by {rms:.2f} um RMS beyond the affine "
            f"(more than {options.max_displacement_rms_um:g} um)"
        )
        return f"uncertain: {reason}" if affine_status == "ok" else f"{affine_status}; {reason}"
    return affine_status


def nonrigid_answer(record: Mapping, affine_status: str, registered_status: str = "ok") -> tuple:
    """(field or None, status) of a route's B-spline refinement for scoring.

    The refinement inherits every doubt about the affine it started from:
    ``affine_status`` is the affine's final status (after the routes' consensus),
    ``registered_status`` its status when it was refined; a refinement that added no
    reason of its own takes ``affine_status``, one with its own reason keeps that too.
    """
    status = record["status"]
    field = DeformationField.from_dict(record["field"]) if "field" in record else None
    if status in ("ok", registered_status) or affine_status.startswith("failed"):
        status = affine_status
    elif affine_status != "ok" and affine_status not in status:
        status = f"{status}; {affine_status.split(': ', 1)[-1]}"
    return field, status
