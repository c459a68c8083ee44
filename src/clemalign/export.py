"""Registration results out to Fiji (BigWarp), Icy (ec-CLEM) and ITK, between the raw images.

Frames
------
A clemalign frame is um from the outer corner of pixel (0, 0) of an image, x along
columns, y along rows (:mod:`clemalign`). What the export deals with:

* **raw EM frame, raw LM frame**: the electron and the light micrograph as the case
  names them (``data/{case}/em.tif``, ``lm.tif`` or the case sheet's files), at their own
  pixel sizes (the sheet's ``em_px_per_um`` / ``lm_px_per_um`` when given, else the
  file's). Every exported transform maps raw EM um to raw LM um.
* **working frames of the analogy track**: the preprocessed TEM is the raw TEM resampled
  whole by :func:`clemalign.preprocess.resample` with origin (0, 0) (output pixel ``j``
  centred at ``(j + 0.5) / p`` um of the input frame), so it *is* the raw TEM frame at
  another sampling; the confocal crop's corner lies at ``lm_crop_origin_um`` of the raw
  LM frame (``frame.json``). A registration answer maps TEM um to crop um, hence
  ``raw = translation(lm_crop_origin_um) @ answer`` (:func:`raw_frame_matrix`).
* **the fiducial track** registers the raw images at their own sampling, uncropped: its
  answers are already between the raw frames (crop origin (0, 0)).

Which answer
------------
A case has many answers; one is exported (:func:`choose_answer`). Analogy track
(``export.route``): ``consensus``, the answer with the smallest median distance to the
case's other answers that did not fail (:func:`clemalign.confidence.consensus`), or a
named ``source/measure`` such as ``raw/mi``; its status is downgraded as Table 2's is when
it lies far from the consensus. Fiducial track (``export.fiducial_method``): ``auto``,
the first ``ok`` of :data:`FIDUCIAL_EXPORT_ORDER` (else the first ``uncertain``), or a
named method. When nothing is usable the status is ``failed: <reason>`` and only
``transform.json`` is written.

Files (:func:`export_case`)
---------------------------
``transform.json`` (both directions, both frames, status, route), ``transform.tfm``
(ITK), ``ecclem.xml`` (ec-CLEM), ``bigwarp_landmarks.csv`` (BigWarp), ``em_on_lm.tif``
and ``lm_on_em.tif`` (each image resampled onto the other's raw grid), ``residuals.csv``
(per landmark). The half-pixel conventions of the tools are :mod:`clemalign.formats`'.

A non-rigid answer (a :class:`~clemalign.transforms.DeformationField` between the working
frames) is exported by :func:`write_nonrigid_files`: ``deformation.json`` (the field
between the raw frames), ``lm_position_um.tif`` (where each EM pixel lands, for napari and
Fiji), ``displacement_itk.mha`` (ITK displacement field, LM -> EM as ``transform.tfm``),
``bigwarp_nonrigid_landmarks.csv`` (a grid of the field for BigWarp's thin-plate spline)
and ``em_on_lm_nonrigid.tif``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .formats import write_bigwarp_landmarks, write_ecclem_transform, write_itk_transform
from .io import LANDMARK_COLUMNS, landmark_points, write_json, write_tiff
from .transforms import (
    DeformationField,
    apply,
    fit_affine,
    px_to_um,
    transform_record,
    translation_matrix,
    warp_image,
    xy_um_to_rc_px,
)

#: ``export.route`` value that exports the case's consensus answer.
CONSENSUS = "consensus"
#: ``export.fiducial_method`` value that picks the first usable method.
AUTO = "auto"
#: Fiducial methods in the order ``auto`` tries them: the robust mode first (made for
#: crowded real bead images), then the paper's Algorithm 1, then the baseline of [5].
FIDUCIAL_EXPORT_ORDER = ("robust", "algorithm1", "gaussian_baseline")
#: Files an export writes besides ``transform.json``, only when an answer is usable.
EXCHANGE_FILES = (
    "transform.tfm",
    "ecclem.xml",
    "bigwarp_landmarks.csv",
    "em_on_lm.tif",
    "lm_on_em.tif",
    "residuals.csv",
)
#: Columns of ``residuals.csv``: landmark positions in the raw frames (um), the EM
#: landmark mapped by the exported transform (um, raw LM frame), its distance to the LM
#: landmark, and the distance left when the landmark is predicted by the least-squares
#: affine of the *other* landmarks (leave-one-out, independent of the registration).
RESIDUAL_COLUMNS = [
    *LANDMARK_COLUMNS,
    "mapped_lm_x_um",
    "mapped_lm_y_um",
    "residual_um",
    "loo_affine_residual_um",
]
#: Output pixels resampled at once (larger grids go in strips of rows): 4 Mpx, about
#: 250 MB of coordinates in :func:`clemalign.transforms.warp_image`.
STRIP_PIXELS = 1 << 22
#: What each file holds, as transform.json lists it.
FILE_NOTES = {
    "transform.tfm": "ITK text transform (SimpleITK, elastix, ANTs): maps LM (fixed) points to "
    "EM (moving) points, for images read with ITK origin 0 and spacing 1/px_per_um um",
    "ecclem.xml": "ec-CLEM (Icy) transformation: EM (source) um -> LM (target) um",
    "bigwarp_landmarks.csv": "BigWarp (Fiji) landmarks: moving = EM, fixed = LM, um with pixel i "
    "centred at i/px_per_um; open both raw images calibrated in um",
    "em_on_lm.tif": "raw EM resampled onto the raw LM grid (LM pixel size, NaN outside the EM)",
    "lm_on_em.tif": "raw LM analysis channel resampled onto the raw EM grid (EM pixel size, NaN "
    "outside the LM)",
    "residuals.csv": "per landmark: raw-frame positions, EM landmark mapped by the transform, its "
    "residual, and the leave-one-out residual of the affine fitted to the other landmarks (um)",
    "deformation.json": "non-rigid raw EM um -> raw LM um mapping (clemalign DeformationField: "
    "affine plus a cubic-spline residual sampled on a grid), um from the outer corner of pixel "
    "(0, 0)",
    "lm_position_um.tif": "float32 ImageJ stack (2, EM rows, EM cols) on the raw EM grid (EM pixel "
    "size): channel 0 = x, 1 = y, raw LM um (outer-corner origin) of each EM pixel centre",
    "displacement_itk.mha": "ITK displacement field (SimpleITK/ITK/elastix "
    "DisplacementFieldTransform): maps LM (fixed) points to EM (moving) points in the "
    "convention of transform.tfm (ITK origin 0, spacing 1/px_per_um um), over the raw LM image",
    "bigwarp_nonrigid_landmarks.csv": "BigWarp (Fiji) landmarks as bigwarp_landmarks.csv: a "
    "regular grid of EM points and their images through the field, so BigWarp's thin-plate "
    "spline approximates the non-rigid mapping (error in deformation.json)",
    "em_on_lm_nonrigid.tif": "raw EM resampled through the non-rigid field onto the raw LM grid "
    "(LM pixel size, NaN outside the EM)",
}
#: Files :func:`write_nonrigid_files` writes (the image only with ``images``).
NONRIGID_FILES = (
    "deformation.json",
    "lm_position_um.tif",
    "displacement_itk.mha",
    "bigwarp_nonrigid_landmarks.csv",
    "em_on_lm_nonrigid.tif",
)
#: Largest node spacing (um) of ``displacement_itk.mha`` (the spacing used is a multiple
#: or a fraction of the LM pixel, :func:`itk_node_spacing_um`). ITK interpolates the field
#: linearly between nodes, which errs by at most ``spacing**2 / 8`` times the curvature
#: of each displacement component: for a 0.3 um sinusoid of 8 um wavelength in x and in y
#: (curvature 0.3 (2 pi / 8)**2 = 0.19 1/um) 0.95 nm per component, 1.3 nm in all, at
#: 0.2 um (2.1 nm measured at 0.25 um); nothing at the nodes.
ITK_FIELD_SPACING_UM = 0.2
#: Pull-backs through a field stop when ``|phi(x) - y|`` is below this, um.
INVERSE_TOL_UM = 1e-6
#: Fixed-point iterations of a pull-back at most.
INVERSE_MAX_ITER = 200
#: Nodes per axis of ``bigwarp_nonrigid_landmarks.csv``: the smallest count whose
#: thin-plate spline reproduces the field within :data:`BIGWARP_TPS_TOL_UM`, at most the last.
BIGWARP_GRID_NODES = tuple(range(5, 16))
#: Largest thin-plate-spline error (um) the BigWarp grid aims for, both directions.
BIGWARP_TPS_TOL_UM = 0.01


# ------------------------------------------------------------------------------ frames


def raw_frame_matrix(
    matrix_um: np.ndarray,
    lm_crop_origin_um: Sequence[float],
    em_crop_origin_um: Sequence[float] = (0.0, 0.0),
) -> np.ndarray:
    """An EM -> LM affine between working frames, expressed between the raw frames.

    A working frame whose corner lies at ``origin`` of its raw frame has
    ``raw um = working um + origin``, so
    ``raw = translation(lm_crop_origin_um) @ matrix_um @ translation(-em_crop_origin_um)``.

    Parameters
    ----------
    matrix_um : ndarray, shape (3, 3)
        Working EM um -> working LM um (the analogy track: TEM um -> confocal-crop um).
    lm_crop_origin_um : (float, float)
        (x, y) of the LM working frame's corner in the raw LM frame, um
        (``frame.json``'s ``lm_crop_origin_um``).
    em_crop_origin_um : (float, float)
        The same for the EM (0, 0: the preprocessed TEM is the whole raw TEM).

    Returns
    -------
    ndarray, shape (3, 3)
        Raw EM um -> raw LM um.
    """
    to_raw_lm = translation_matrix(*map(float, lm_crop_origin_um))
    from_raw_em = translation_matrix(*(-float(v) for v in em_crop_origin_um))
    return to_raw_lm @ np.asarray(matrix_um, dtype=float) @ from_raw_em


def describe(matrix_um: np.ndarray) -> str:
    """The affine in words: rotation, stretches, mirror, translation."""
    linear = np.asarray(matrix_um, float)[:2, :2]
    u, stretch, vt = np.linalg.svd(linear)
    mirrored = np.linalg.det(linear) < 0
    rotation = u @ np.diag([1.0, -1.0 if mirrored else 1.0]) @ vt
    angle_deg = float(np.degrees(np.arctan2(rotation[1, 0], rotation[0, 0])))
    tx_um, ty_um = np.asarray(matrix_um, float)[:2, 2]
    return (
        f"rotation {angle_deg:.2f} deg, scale {stretch[0]:.4f} / {stretch[1]:.4f} (largest / "
        f"smallest stretch), {'mirrored' if mirrored else 'not mirrored'}, translation "
        f"({tx_um:.3f}, {ty_um:.3f}) um"
    )


def invertible(matrix_um: np.ndarray | None) -> bool:
    """Whether a matrix is a finite affine with an invertible linear part."""
    if matrix_um is None:
        return False
    matrix = np.asarray(matrix_um, dtype=float)
    if matrix.shape != (3, 3) or not np.all(np.isfinite(matrix)):
        return False
    return bool(abs(np.linalg.det(matrix[:2, :2])) > 1e-12)


# ------------------------------------------------------------------- which answer


def status_kind(status: str) -> str:
    """``ok``, ``uncertain`` or ``failed``: the word before the reason of a status."""
    return status.split(":")[0].strip()


def first_usable(statuses: Mapping[str, str], order: Sequence[str]) -> str | None:
    """The first name of ``order`` whose status is ``ok``, else the first ``uncertain``.

    Parameters
    ----------
    statuses : mapping
        Name -> status of the answers that have a transform.
    order : sequence of str
        Names in order of preference (names absent from ``statuses`` are skipped).

    Returns
    -------
    str or None
        None when no answer is ``ok`` or ``uncertain``.
    """
    for wanted in ("ok", "uncertain"):
        for name in order:
            if name in statuses and status_kind(statuses[name]) == wanted:
                return name
    return None


@dataclass
class ExportChoice:
    """The answer a case exports.

    Attributes
    ----------
    status : str
        ``ok``, ``uncertain: <reason>`` or ``failed: <reason>``.
    matrix_um : ndarray or None
        The answer between the working frames (EM um -> working LM um); None when failed.
    route : str or None
        The answer's name (``source/measure`` or a fiducial method); None when failed.
    requested : str
        What the config asked for (``consensus``, ``raw/mi``, ``auto``, ``robust``...).
    how : str
        Why this answer (or why none).
    answers : dict
        Every answer of the case and its status, for the record.
    """

    status: str
    matrix_um: np.ndarray | None
    route: str | None
    requested: str
    how: str
    answers: dict[str, str] = field(default_factory=dict)

    def record(self) -> dict:
        """``transform.json``'s ``route``: requested, chosen, why, and every answer."""
        return {
            "requested": self.requested,
            "chosen": self.route,
            "how": self.how,
            "answers": dict(self.answers),
        }


def _failed(reason: str, requested: str, answers: Mapping[str, str]) -> ExportChoice:
    return ExportChoice(f"failed: {reason}", None, None, requested, reason, dict(answers))


def _why_unusable(status: str) -> str:
    """A failed status as it is; any other status of an answer without a transform says so."""
    return status if status_kind(status) == "failed" else f"has no transform ({status})"


def _kinds(statuses: Mapping[str, str]) -> str:
    """``a failed, b uncertain`` for a reason."""
    return ", ".join(f"{name} {status_kind(s)}" for name, s in statuses.items()) or "none"


def analogy_answers(results: Mapping[str, Mapping]) -> dict[str, tuple[str, np.ndarray | None]]:
    """Every answer of an analogy case: ``source/measure`` -> (status, matrix or None).

    Parameters
    ----------
    results : mapping
        Source -> that source's registration record (``registration/{case}/{source}.json``:
        ``{"measures": {measure: {"status", "matrix", ...}}}``).
    """
    return {
        f"{source}/{measure}": (
            str(r["status"]),
            np.asarray(r["matrix"], float) if r.get("matrix") is not None else None,
        )
        for source, record in results.items()
        for measure, r in record["measures"].items()
    }


def _pick_consensus(
    usable: Mapping[str, np.ndarray], agreed: tuple[str, np.ndarray] | None, statuses: Mapping
) -> tuple[str | None, str]:
    """The consensus answer, or with fewer than three usable answers the first ok one."""
    if agreed is not None:
        how = (
            f"consensus: of the {len(usable)} answers that did not fail, the one with the "
            "smallest median distance to the others over the TEM grid"
        )
        return agreed[0], how
    if not usable:
        return None, f"no registration of this case is usable ({_kinds(statuses)})"
    name = first_usable({n: statuses[n] for n in usable}, list(usable))
    how = (
        f"only {len(usable)} answer(s) did not fail, a consensus needs 3: the first ok (else "
        "uncertain) one in route order"
    )
    return name, how


def _pick_named(route: str, answers: Mapping[str, tuple]) -> tuple[str | None, str]:
    """The named route when it has a usable answer, else None and why not."""
    if route not in answers:
        return None, f"route {route} is not a registration of this case ({', '.join(answers)})"
    status, matrix = answers[route]
    if matrix is None or status_kind(status) == "failed":
        return None, f"the requested route {route} {_why_unusable(status)}"
    return route, f"the route named by export.route ({route})"


def choose_analogy_answer(
    results: Mapping[str, Mapping],
    route: str,
    em_shape: Sequence[int],
    em_px_per_um: float,
    limits: Mapping | None = None,
) -> ExportChoice:
    """The answer an analogy case exports (``export.route``); never raises on bad answers.

    Parameters
    ----------
    results : mapping
        Source -> registration record (see :func:`analogy_answers`).
    route : str
        ``consensus`` or ``source/measure``.
    em_shape : (int, int)
        (rows, cols) of the preprocessed TEM (the grid distances are measured on).
    em_px_per_um : float
        Its sampling, px/um.
    limits : mapping, optional
        ``registration.confidence`` (:class:`clemalign.confidence.ConfidenceLimits`): a
        named route farther than ``agree_um`` from the consensus becomes uncertain, as in
        Table 2.

    Returns
    -------
    ExportChoice
        With the matrix between the working frames (TEM um -> crop um).
    """
    from .confidence import ConfidenceLimits, consensus, with_consensus
    from .routes import case_answers

    answers = analogy_answers(results)
    statuses = {name: status for name, (status, _) in answers.items()}
    usable = case_answers(results)
    shape = (int(em_shape[0]), int(em_shape[1]))
    agreed = consensus(usable, shape, em_px_per_um)
    if route == CONSENSUS:
        name, how = _pick_consensus(usable, agreed, statuses)
    else:
        name, how = _pick_named(route, answers)
    if name is None:
        return _failed(how, route, statuses)
    matrix = answers[name][1]
    checks = ConfidenceLimits.from_config(limits)
    status = with_consensus(statuses[name], matrix, agreed, shape, em_px_per_um, checks)
    return ExportChoice(status, matrix, name, route, how, statuses)


def fiducial_status(record: Mapping) -> str:
    """Status of a fiducial method's transform record (a matrix without one is ``ok``)."""
    if "status" in record:
        return str(record["status"])
    return "ok" if record.get("matrix") is not None else "failed: no transform"


def choose_fiducial_answer(records: Mapping[str, Mapping], method: str = AUTO) -> ExportChoice:
    """The answer a fiducial case exports (``export.fiducial_method``); never raises.

    Parameters
    ----------
    records : mapping
        Method -> its ``fiducials/{case}/{method}_transform.json`` (``matrix`` raw SEM um ->
        raw LM um, or null, and ``status``).
    method : str
        ``auto`` (the first ``ok`` of :data:`FIDUCIAL_EXPORT_ORDER`, else the first
        ``uncertain``) or a method name.

    Returns
    -------
    ExportChoice
    """
    statuses = {m: fiducial_status(r) for m, r in records.items()}
    usable = {
        m: s
        for m, s in statuses.items()
        if records[m].get("matrix") is not None and status_kind(s) != "failed"
    }
    if method == AUTO:
        order = [*FIDUCIAL_EXPORT_ORDER, *(m for m in records if m not in FIDUCIAL_EXPORT_ORDER)]
        name = first_usable(usable, order)
        how = f"the first ok (else uncertain) of {', '.join(order)}"
        if name is None:
            return _failed(f"no fiducial method is usable ({_kinds(statuses)})", method, statuses)
    elif method not in records:
        reason = f"fiducial method {method} is not among this case's ({', '.join(records)})"
        return _failed(reason, method, statuses)
    elif method not in usable:
        reason = f"the requested fiducial method {method} {_why_unusable(statuses[method])}"
        return _failed(reason, method, statuses)
    else:
        name, how = method, f"the method named by export.fiducial_method ({method})"
    matrix = np.asarray(records[name]["matrix"], dtype=float)
    return ExportChoice(statuses[name], matrix, name, method, how, statuses)


def choose_answer(
    track: str,
    results: Mapping[str, Mapping],
    frame: Mapping,
    settings: Mapping,
    limits: Mapping | None = None,
) -> ExportChoice:
    """:func:`choose_analogy_answer` or :func:`choose_fiducial_answer` by track.

    Parameters
    ----------
    track : {"analogy", "fiducial"}
    results : mapping
        Analogy: source -> registration record; fiducial: method -> transform record.
    frame : mapping
        The case's ``frame.json`` (``em_shape``, ``em_px_per_um`` of the working TEM).
    settings : mapping
        The ``export`` config section (``route``, ``fiducial_method``).
    limits : mapping, optional
        ``registration.confidence``.
    """
    if track == "analogy":
        route = settings.get("route", CONSENSUS)
        return choose_analogy_answer(
            results, route, frame["em_shape"], frame["em_px_per_um"], limits
        )
    return choose_fiducial_answer(results, settings.get("fiducial_method", AUTO))


# ---------------------------------------------------------------------- raw images


@dataclass
class RawPair:
    """A case's raw images as the export uses them.

    Attributes
    ----------
    em : ndarray of float32
        EM luminance in [0, 1], raw grid.
    em_px_per_um : float
    lm : ndarray of float32
        The LM's analysis channel in [0, 1] (a z-stack as the case's ``lm_z`` says), raw grid.
    lm_px_per_um : float
    em_path, lm_path : str
        The files.
    landmarks : DataFrame
        The case's landmark pairs in the raw frames, um (may be empty).
    channel : str or int
        The LM channel.
    """

    em: np.ndarray
    em_px_per_um: float
    lm: np.ndarray
    lm_px_per_um: float
    em_path: str
    lm_path: str
    landmarks: pd.DataFrame
    channel: str | int = "green"

    @property
    def em_shape(self) -> tuple[int, int]:
        """(rows, cols) of the EM."""
        return int(self.em.shape[0]), int(self.em.shape[1])

    @property
    def lm_shape(self) -> tuple[int, int]:
        """(rows, cols) of the LM."""
        return int(self.lm.shape[0]), int(self.lm.shape[1])


def raw_pair(case: Mapping) -> RawPair:
    """Read a case's raw images and landmarks as preprocessing reads them.

    :func:`clemalign.preprocess.load_case_inputs` (the sheet's pixel sizes over the
    file's, z projection, the input checks), then the EM's luminance and the LM's
    ``channel``, as float32 in [0, 1].

    Parameters
    ----------
    case : mapping
        A :class:`clemalign.cases.Case` as dict.
    """
    from .preprocess import load_case_inputs, select_channel, to_unit_float

    raw = load_case_inputs(dict(case))
    channel = case.get("channel", "green")
    em = np.asarray(to_unit_float(select_channel(raw.em, "gray")), dtype=np.float32)
    lm = np.asarray(to_unit_float(select_channel(raw.lm, channel)), dtype=np.float32)
    return RawPair(
        em,
        raw.em_px_per_um,
        lm,
        raw.lm_px_per_um,
        str(case["em"]),
        str(case["lm"]),
        raw.landmarks,
        channel,
    )


# --------------------------------------------------------------------------- records


def grid_record(
    moving_px_per_um: float,
    fixed_px_per_um: float,
    moving_shape: Sequence[int],
    fixed_shape: Sequence[int],
) -> dict:
    """Pixel sizes (px/um) and shapes (rows, cols) of the two images, as
    ``transform.json``'s ``extra`` keeps them (``clemalign export`` reads them back)."""
    return {
        "moving_px_per_um": float(moving_px_per_um),
        "fixed_px_per_um": float(fixed_px_per_um),
        "moving_shape": [int(n) for n in moving_shape],
        "fixed_shape": [int(n) for n in fixed_shape],
    }


def frames_record(pair: RawPair, lm_crop_origin_um: Sequence[float], track: str) -> dict:
    """What the frames of ``transform.json`` are, in words and numbers."""
    corner = "um from the outer corner of pixel (0, 0), x along columns, y along rows"
    working = (
        "the registration ran between the preprocessed TEM (the raw TEM resampled whole, "
        "origin kept: the raw TEM frame) and the confocal crop whose corner is at "
        "lm_crop_origin_um of the raw LM frame"
        if track == "analogy"
        else "the fiducial track registers the raw images at their own sampling, uncropped"
    )
    return {
        "em": f"raw EM {pair.em_path}: {corner}; {pair.em_px_per_um:g} px/um, "
        f"{pair.em_shape[0]} x {pair.em_shape[1]} px (rows x cols)",
        "lm": f"raw LM {pair.lm_path} (channel {pair.channel}): {corner}; "
        f"{pair.lm_px_per_um:g} px/um, {pair.lm_shape[0]} x {pair.lm_shape[1]} px",
        "working": working,
        "lm_crop_origin_um": [float(v) for v in lm_crop_origin_um],
    }


def export_record(
    case: str,
    track: str,
    choice: ExportChoice,
    lm_crop_origin_um: Sequence[float],
    pair: RawPair,
) -> dict:
    """``transform.json`` of an export: the raw-frame transform (a clemalign transform
    file, so ``clemalign warp``/``export``/``evaluate`` read it), its inverse, the
    working-frame answer it was composed from, the frames, the status and the route."""
    raw = (
        None if choice.matrix_um is None else raw_frame_matrix(choice.matrix_um, lm_crop_origin_um)
    )
    grid = grid_record(pair.em_px_per_um, pair.lm_px_per_um, pair.em_shape, pair.lm_shape)
    method = f"{track} track: {choice.route or 'no answer'} ({choice.how})"
    record = {
        "case": case,
        "track": track,
        "status": choice.status,
        "route": choice.record(),
        **transform_record(choice.status, raw, pair.em_path, pair.lm_path, method, grid),
    }
    record["frames"] = frames_record(pair, lm_crop_origin_um, track)
    if raw is not None:
        record["summary"] = describe(raw)
        record["lm_to_em"] = {
            "matrix": np.linalg.inv(raw).tolist(),
            "direction": "fixed_to_moving",
            "convention": "x_em = M @ [x_lm, y_lm, 1], um of the raw frames",
        }
    record["working_frames"] = {
        "matrix": None if choice.matrix_um is None else np.asarray(choice.matrix_um).tolist(),
        "moving": "EM working frame (analogy: preprocessed TEM = raw TEM frame)",
        "fixed": "LM working frame (analogy: confocal crop; fiducial: raw LM)",
        "lm_crop_origin_um": [float(v) for v in lm_crop_origin_um],
        "to_raw": "matrix = translation(lm_crop_origin_um) @ working_frames.matrix",
    }
    return record


# --------------------------------------------------------------------- exchange files


def bigwarp_grid(
    matrix_um: np.ndarray, moving_px_per_um: float, moving_shape: Sequence[int]
) -> pd.DataFrame:
    """The affine as 3 x 3 corresponding points over the moving field (BigWarp's thin-plate
    spline and affine fits reproduce an affine exactly from such points)."""
    rows, cols = moving_shape[:2]
    xs_um = np.array([0.1, 0.5, 0.9]) * cols / moving_px_per_um
    ys_um = np.array([0.1, 0.5, 0.9]) * rows / moving_px_per_um
    em = np.array([(x, y) for y in ys_um for x in xs_um])
    lm = apply(matrix_um, em)
    return grid_points(em, lm)


def grid_points(em_xy_um: np.ndarray, lm_xy_um: np.ndarray) -> pd.DataFrame:
    """Corresponding points ``grid1, grid2...`` as a landmark table (um)."""
    return pd.DataFrame(
        {
            "name": [f"grid{i + 1}" for i in range(len(em_xy_um))],
            "em_x_um": em_xy_um[:, 0],
            "em_y_um": em_xy_um[:, 1],
            "lm_x_um": lm_xy_um[:, 0],
            "lm_y_um": lm_xy_um[:, 1],
        },
        columns=LANDMARK_COLUMNS,
    )


def write_exchange_files(
    out: str | Path, matrix_um: np.ndarray, grid: Mapping, landmarks: pd.DataFrame | None
) -> list[Path]:
    """``transform.tfm`` (ITK), ``ecclem.xml`` (ec-CLEM) and, with landmarks,
    ``bigwarp_landmarks.csv`` (BigWarp), in the conventions of :mod:`clemalign.formats`.

    Parameters
    ----------
    out : str or Path
        Folder.
    matrix_um : ndarray, shape (3, 3)
        EM (moving) um -> LM (fixed) um.
    grid : mapping
        :func:`grid_record` of the two images.
    landmarks : DataFrame or None
        Landmark pairs (um) to write for BigWarp; None: no BigWarp file.
    """
    out = Path(out)
    mppu, fppu = grid["moving_px_per_um"], grid["fixed_px_per_um"]
    write_itk_transform(out / "transform.tfm", matrix_um, mppu, fppu)
    mshape, fshape = tuple(grid["moving_shape"]), tuple(grid["fixed_shape"])
    write_ecclem_transform(out / "ecclem.xml", matrix_um, mppu, fppu, mshape, fshape)
    written = [out / "transform.tfm", out / "ecclem.xml"]
    if landmarks is not None:
        write_bigwarp_landmarks(out / "bigwarp_landmarks.csv", landmarks, mppu, fppu)
        written.append(out / "bigwarp_landmarks.csv")
    return written


def warp_to_grid(
    image: np.ndarray,
    image_px_per_um: float,
    matrix_um: np.ndarray,
    grid_shape: Sequence[int],
    grid_px_per_um: float,
    order: int = 1,
    max_pixels: int = STRIP_PIXELS,
) -> np.ndarray:
    """:func:`clemalign.transforms.warp_image` onto a grid, in strips of rows when large.

    A strip starting at row ``r0`` is the warp through ``translation(0, -r0 / p) @
    matrix_um`` (its rows are the grid's rows from ``r0``), so the result equals one
    warp of the whole grid; a grid of at most ``max_pixels`` is warped at once.

    Parameters
    ----------
    image : ndarray
        2D image at ``image_px_per_um``.
    matrix_um : ndarray, shape (3, 3)
        Image um -> grid um.
    grid_shape : (int, int)
        (rows, cols) of the output.
    grid_px_per_um : float
        Output sampling.
    order : int
        Interpolation order (0 nearest, 1 linear, 3 cubic).
    max_pixels : int
        Output pixels per strip at most.

    Returns
    -------
    ndarray of float32
        NaN outside the image.
    """
    rows, cols = int(grid_shape[0]), int(grid_shape[1])
    step = max(1, int(max_pixels) // max(cols, 1))
    if rows <= step:
        return warp_image(image, image_px_per_um, matrix_um, (rows, cols), grid_px_per_um, order)
    out = np.empty((rows, cols), dtype=np.float32)
    for r0 in range(0, rows, step):
        shift = translation_matrix(0.0, -r0 / grid_px_per_um) @ matrix_um
        n = min(step, rows - r0)
        out[r0 : r0 + n] = warp_image(
            image, image_px_per_um, shift, (n, cols), grid_px_per_um, order
        )
    return out


def write_warped(
    path: str | Path,
    image: np.ndarray,
    image_px_per_um: float,
    matrix_um: np.ndarray,
    grid_shape: Sequence[int],
    grid_px_per_um: float,
    order: int = 1,
    description: Mapping | None = None,
) -> Path:
    """An image resampled onto another image's grid (:func:`warp_to_grid`, NaN outside),
    written as an ImageJ TIFF with the grid's pixel size (:func:`clemalign.io.write_tiff`)."""
    warped = warp_to_grid(image, image_px_per_um, matrix_um, grid_shape, grid_px_per_um, order)
    write_tiff(path, warped, grid_px_per_um, dict(description or {}))
    return Path(path)


# ------------------------------------------------------------------------- residuals


def loo_affine_residuals_um(em_xy_um: np.ndarray, lm_xy_um: np.ndarray) -> np.ndarray:
    """Leave-one-out residual of each landmark under the affine of the others, um.

    For landmark ``i`` the least-squares affine of the other landmarks
    (:func:`clemalign.transforms.fit_affine`) maps its EM point; the residual is the
    distance to its LM point. It measures how well the other landmarks predict this one,
    whatever the registration: a large value points to a misplaced landmark or to a
    distortion no affine explains. NaN when the others cannot fix an affine (fewer than
    three, or collinear).

    Parameters
    ----------
    em_xy_um, lm_xy_um : ndarray, shape (N, 2)
        Corresponding points, um.

    Returns
    -------
    ndarray, shape (N,)
    """
    em = np.asarray(em_xy_um, dtype=float).reshape(-1, 2)
    lm = np.asarray(lm_xy_um, dtype=float).reshape(-1, 2)
    out = np.full(len(em), np.nan)
    for i in range(len(em)):
        keep = np.arange(len(em)) != i
        try:
            affine = fit_affine(em[keep], lm[keep])
        except ValueError:  # fewer than three others, or collinear
            continue
        out[i] = float(np.hypot(*(apply(affine, em[i])[0] - lm[i])))
    return out


def residual_table(landmarks: pd.DataFrame, matrix_um: np.ndarray) -> pd.DataFrame:
    """``residuals.csv``: per landmark, the columns of :data:`RESIDUAL_COLUMNS`.

    Parameters
    ----------
    landmarks : DataFrame
        Landmark pairs in the frames of ``matrix_um`` (the raw frames), um.
    matrix_um : ndarray, shape (3, 3)
        EM um -> LM um.
    """
    em_xy, lm_xy = landmark_points(landmarks)
    mapped = apply(matrix_um, em_xy)
    table = landmarks[LANDMARK_COLUMNS].copy()
    table["mapped_lm_x_um"], table["mapped_lm_y_um"] = mapped[:, 0], mapped[:, 1]
    table["residual_um"] = np.hypot(*(mapped - lm_xy).T)
    table["loo_affine_residual_um"] = loo_affine_residuals_um(em_xy, lm_xy)
    return table[RESIDUAL_COLUMNS]


# ---------------------------------------------------------------------------- export


def remove_stale(out: Path) -> None:
    """Delete the exchange files an earlier export left in ``out`` (only those names)."""
    for name in EXCHANGE_FILES + NONRIGID_FILES:
        (out / name).unlink(missing_ok=True)


def write_images(out: Path, raw_um: np.ndarray, pair: RawPair, order: int, case: str) -> list[Path]:
    """``em_on_lm.tif`` (LM grid and pixel size) and ``lm_on_em.tif`` (EM grid and pixel
    size), each image resampled through the raw-frame transform, NaN outside."""
    em_on_lm = write_warped(
        out / "em_on_lm.tif",
        pair.em,
        pair.em_px_per_um,
        raw_um,
        pair.lm_shape,
        pair.lm_px_per_um,
        order,
        {"case": case, "image": pair.em_path, "grid": f"raw LM {pair.lm_path}"},
    )
    lm_on_em = write_warped(
        out / "lm_on_em.tif",
        pair.lm,
        pair.lm_px_per_um,
        np.linalg.inv(raw_um),
        pair.em_shape,
        pair.em_px_per_um,
        order,
        {"case": case, "image": pair.lm_path, "grid": f"raw EM {pair.em_path}"},
    )
    return [em_on_lm, lm_on_em]


def _unusable(choice: ExportChoice, lm_crop_origin_um: Sequence[float]) -> ExportChoice:
    """``choice`` failed when its raw-frame matrix is not an invertible affine."""
    if choice.matrix_um is None:
        return choice
    if invertible(raw_frame_matrix(choice.matrix_um, lm_crop_origin_um)):
        return choice
    reason = f"the answer of {choice.route} is not an invertible affine"
    return _failed(reason, choice.requested, choice.answers)


def export_case(
    out: str | Path,
    case: str,
    track: str,
    choice: ExportChoice,
    lm_crop_origin_um: Sequence[float],
    pair: RawPair,
    order: int = 1,
    images: bool = True,
    nonrigid: tuple[DeformationField | None, str] | None = None,
) -> dict:
    """Write a case's export into ``out``; returns ``transform.json``'s record.

    ``transform.json`` always; with a usable answer also ``transform.tfm``,
    ``ecclem.xml``, ``bigwarp_landmarks.csv`` (the case's landmarks; a 3 x 3 grid of the
    transform when it has none), ``residuals.csv`` (with landmarks) and, with
    ``images``, ``em_on_lm.tif`` and ``lm_on_em.tif``. A failed choice writes
    ``transform.json`` only (and removes exchange files of an earlier export).

    Parameters
    ----------
    out : str or Path
        Folder (``results/export/{case}``).
    case, track : str
        Case name and track.
    choice : ExportChoice
        :func:`choose_answer`'s answer, between the working frames.
    lm_crop_origin_um : (float, float)
        Corner of the LM working frame in the raw LM frame, um ((0, 0) for the fiducial
        track).
    pair : RawPair
        :func:`raw_pair` of the case.
    order : int
        Interpolation order of the two images.
    images : bool
        Write ``em_on_lm.tif`` and ``lm_on_em.tif``.
    nonrigid : (DeformationField or None, str), optional
        The chosen route's non-rigid refinement between the working frames and its
        status: unless failed, its files are written too (:func:`write_nonrigid_files`);
        ``transform.json``'s ``nonrigid`` says which and why.

    Returns
    -------
    dict
        The record written as ``transform.json`` (``files``: what was written and what
        each file holds).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    choice = _unusable(choice, lm_crop_origin_um)
    record = export_record(case, track, choice, lm_crop_origin_um, pair)
    written: list[Path] = []
    if choice.matrix_um is not None:
        written = write_usable(out, record, pair, order, images)
        if nonrigid is not None:
            record["nonrigid"], more = _write_nonrigid(
                out, nonrigid, lm_crop_origin_um, pair, order, images
            )
            written += more
    record["files"] = {p.name: FILE_NOTES[p.name] for p in written}
    write_json(out / "transform.json", record)
    return record


def _write_nonrigid(
    out: Path,
    nonrigid: tuple[DeformationField | None, str],
    lm_crop_origin_um: Sequence[float],
    pair: RawPair,
    order: int,
    images: bool,
) -> tuple[dict, list[Path]]:
    """The refinement's files unless it failed, and ``transform.json``'s ``nonrigid``."""
    field_um, status = nonrigid
    if field_um is None or status_kind(status) == "failed":
        return {"status": status, "written": False}, []
    try:
        written = write_nonrigid_files(out, field_um, lm_crop_origin_um, pair, order, images)
    except ValueError as err:
        return {"status": f"failed: {err}", "written": False}, []
    note = "the affine in transform.json is the route's affine answer, before the B-spline step"
    return {"status": status, "written": True, "note": note}, written


def write_usable(
    out: Path, record: dict, pair: RawPair, order: int = 1, images: bool = True
) -> list[Path]:
    """The files of a usable answer (``record``: :func:`export_record`'s, whose matrix is
    raw EM um -> raw LM um): exchange files, residuals, images. Notes in ``record`` which
    points BigWarp gets."""
    raw_um = np.asarray(record["matrix"], dtype=float)
    landmarks = pair.landmarks if len(pair.landmarks) else None
    points = landmarks
    if points is None:
        points = bigwarp_grid(raw_um, pair.em_px_per_um, pair.em_shape)
    written = write_exchange_files(out, raw_um, record["extra"], points)
    record["bigwarp_points"] = "3 x 3 grid of the transform" if landmarks is None else "landmarks"
    if landmarks is not None:
        table = residual_table(landmarks, raw_um)
        table.to_csv(out / "residuals.csv", index=False, float_format="%.6f")
        written.append(out / "residuals.csv")
    if images:
        written += write_images(out, raw_um, pair, order, record["case"])
    return written


# ------------------------------------------------------------------- non-rigid export


def raw_frame_field(
    field_um: DeformationField, lm_crop_origin_um: Sequence[float]
) -> DeformationField:
    """A working-frame EM -> LM field between the raw frames (EM crop origin (0, 0)):
    ``field_um.then(translation(lm_crop_origin_um))``, as :func:`raw_frame_matrix`."""
    return field_um.then(translation_matrix(*map(float, lm_crop_origin_um)))


def pull_back(
    field_um: DeformationField,
    points_xy_um: np.ndarray,
    tol_um: float = INVERSE_TOL_UM,
    max_iter: int = INVERSE_MAX_ITER,
) -> tuple[np.ndarray, np.ndarray]:
    """Moving points ``x`` with ``phi(x) = y`` for fixed points ``y``.

    ``phi(x) = A x + r(x)`` is inverted by the fixed-point iteration
    ``x <- A⁻¹ (y - r(x))`` of :func:`clemalign.nonrigid.warp_with_field`, started at
    ``A⁻¹ y``, until ``|phi(x) - y| < tol_um``. Beyond its grid the field's residual is
    that of the nearest grid position (:meth:`DeformationField.residual`), so the inverse
    continues the field continuously over any fixed region, however far from the EM.

    Parameters
    ----------
    field_um : DeformationField
        Moving um -> fixed um.
    points_xy_um : ndarray, shape (N, 2)
        Fixed points, um.
    tol_um : float
        Largest ``|phi(x) - y|`` accepted, um.
    max_iter : int
        Iterations at most.

    Returns
    -------
    points : ndarray, shape (N, 2)
        Moving points, um.
    failed : ndarray of bool, shape (N,)
        Points whose iteration did not converge (their ``points`` are the last iterate);
        none for any registration-sized deformation.
    """
    y = np.asarray(points_xy_um, dtype=float).reshape(-1, 2)
    affine = np.asarray(field_um.affine, dtype=float)
    inv = np.linalg.inv(affine)
    x = apply(inv, y)
    converged = np.zeros(len(y), dtype=bool)
    active = np.arange(len(y))
    for _ in range(max_iter + 1):
        if not active.size:
            break
        residual = field_um.residual(x[active])
        mismatch = apply(affine, x[active]) + residual - y[active]
        done = np.hypot(mismatch[:, 0], mismatch[:, 1]) < tol_um
        converged[active[done]] = True
        active, residual = active[~done], residual[~done]
        x[active] = apply(inv, y[active] - residual)
    return x, ~converged


def _pixel_centres(rows: slice, cols: int, px_per_um: float) -> np.ndarray:
    """(x, y) um of the pixel centres of rows ``rows`` of a grid ``cols`` wide, row-major."""
    r, c = np.mgrid[rows, 0:cols]
    return px_to_um(np.stack([c.ravel(), r.ravel()], axis=1).astype(float), px_per_um)


def _strips(rows: int, cols: int, max_pixels: int = STRIP_PIXELS) -> list[slice]:
    """Row ranges of at most ``max_pixels`` pixels (at least one row each)."""
    step = max(1, int(max_pixels) // max(cols, 1))
    return [slice(r0, min(r0 + step, rows)) for r0 in range(0, rows, step)]


def lm_positions_um(
    field_um: DeformationField, em_shape: Sequence[int], em_px_per_um: float
) -> np.ndarray:
    """Where each EM pixel centre lands: ``field_um.apply`` of ``((c + 0.5) / p,
    (r + 0.5) / p)`` for pixel (r, c).

    Returns
    -------
    ndarray of float32, shape (2, rows, cols)
        Channel 0 = x, 1 = y, um of the field's fixed frame.
    """
    rows, cols = int(em_shape[0]), int(em_shape[1])
    out = np.empty((2, rows, cols), dtype=np.float32)
    for strip in _strips(rows, cols):
        mapped = field_um.apply(_pixel_centres(strip, cols, em_px_per_um))
        out[:, strip] = mapped.T.reshape(2, strip.stop - strip.start, cols)
    return out


def itk_node_spacing_um(lm_px_per_um: float, largest_um: float = ITK_FIELD_SPACING_UM) -> float:
    """Node spacing of ``displacement_itk.mha``: every k-th LM pixel centre (the largest k
    whose spacing is at most ``largest_um``), or the LM pixel cut in the fewest equal parts
    not above ``largest_um`` when the pixel is larger: either every k-th LM pixel centre is
    a node, or every LM pixel centre is one."""
    pixel_um = 1.0 / float(lm_px_per_um)
    if pixel_um > largest_um:
        return pixel_um / math.ceil(pixel_um / largest_um - 1e-9)
    return pixel_um * max(1, math.floor(largest_um / pixel_um + 1e-9))


@dataclass
class ItkField:
    """An ITK displacement field on a regular grid (what ``displacement_itk.mha`` holds).

    Attributes
    ----------
    displacement_um : ndarray, shape (rows, cols, 2)
        (dx, dy) at node (row, col): ITK moving point minus ITK fixed point, um.
    offset_um : (float, float)
        ITK physical (x, y) of node (0, 0), um.
    spacing_um : float
        Node spacing, um.
    failed : int
        Nodes whose pull-back did not converge.
    """

    displacement_um: np.ndarray
    offset_um: tuple[float, float]
    spacing_um: float
    failed: int = 0

    def record(self) -> dict:
        """The grid, for ``deformation.json``."""
        rows, cols = self.displacement_um.shape[:2]
        return {
            "size": [int(cols), int(rows)],
            "offset_um": [float(v) for v in self.offset_um],
            "spacing_um": float(self.spacing_um),
            "unconverged_nodes": int(self.failed),
        }


def itk_displacement_field(
    raw_field: DeformationField, pair: RawPair, spacing_um: float | None = None
) -> ItkField:
    """A raw EM -> raw LM field as ITK's displacement field (LM -> EM), over the raw LM image.

    ITK reads an image with origin 0 and spacing ``1 / p``: the centre of pixel ``i`` is at
    ``i / p``, our ``(i + 0.5) / p`` less half a pixel (``h = 0.5 / p`` of each image), as
    in ``transform.tfm`` (:func:`clemalign.formats.write_itk_transform`). A node at ITK LM
    point ``u`` holds ``d(u) = phi⁻¹(u + h_lm) - h_em - u`` (:func:`pull_back`, the affine
    inverse where the solution falls outside the EM field plus the field's margin), so
    ITK's ``u + d(u)`` is the ITK EM point. The nodes lie on the LM pixel-centre lattice
    (:func:`itk_node_spacing_um`, node (0, 0) on or beyond the image's outer corner) and
    reach to or past the outer edges of the whole raw LM image, so resampling the EM onto
    the LM grid through the file is right at every LM pixel (ITK's
    DisplacementFieldTransform is the identity outside its grid).

    Parameters
    ----------
    raw_field : DeformationField
        Raw EM um -> raw LM um.
    pair : RawPair
        The raw images (shapes, pixel sizes).
    spacing_um : float, optional
        Node spacing; default :func:`itk_node_spacing_um` of the LM.

    Returns
    -------
    ItkField
    """
    lm_ppu, em_ppu = float(pair.lm_px_per_um), float(pair.em_px_per_um)
    step = itk_node_spacing_um(lm_ppu) if spacing_um is None else float(spacing_um)
    h_lm, h_em = 0.5 / lm_ppu, 0.5 / em_ppu
    before = math.ceil(h_lm / step - 1e-9)
    counts = []
    for size in (pair.lm_shape[1], pair.lm_shape[0]):  # x (cols), y (rows)
        last_um = (size - 0.5) / lm_ppu  # the image's far edge, ITK um
        counts.append(before + math.ceil(last_um / step - 1e-9) + 1)
    nx, ny = counts
    offset = -before * step
    gx, gy = np.meshgrid(offset + step * np.arange(nx), offset + step * np.arange(ny))
    itk_lm = np.stack([gx.ravel(), gy.ravel()], axis=1)
    em_um, failed = pull_back(raw_field, itk_lm + h_lm)
    displacement = (em_um - h_em - itk_lm).reshape(ny, nx, 2)
    return ItkField(displacement, (offset, offset), step, int(failed.sum()))


def write_metaimage_vectors(
    path: str | Path,
    vectors: np.ndarray,
    spacing_um: float,
    offset_um: Sequence[float],
    comment: str = "",
) -> Path:
    """A 2D image of 2-vectors as a MetaImage (``.mha``, header and data in one file).

    Text header (``ObjectType = Image``, ``NDims = 2``, little-endian binary doubles,
    identity ``TransformMatrix``, ``Offset`` = physical point of pixel (0, 0),
    ``ElementSpacing``, ``DimSize`` = cols rows, ``ElementNumberOfChannels = 2``,
    ``ElementType = MET_DOUBLE``, ``ElementDataFile = LOCAL`` last), then the values with x
    fastest and the two components of a pixel together, as ITK's MetaImageIO writes them
    (SimpleITK reads it as a ``sitkVectorFloat64`` image).

    Parameters
    ----------
    path : str or Path
        Output file (``.mha``).
    vectors : ndarray, shape (rows, cols, 2)
    spacing_um : float
        Pixel spacing along x and y.
    offset_um : (float, float)
        (x, y) of pixel (0, 0).
    comment : str
        One line kept in the header (``Comment``; MetaIO keeps at most 255 characters).
    """
    data = np.ascontiguousarray(np.asarray(vectors, dtype="<f8"))
    if data.ndim != 3 or data.shape[2] != 2:
        raise ValueError(f"expected (rows, cols, 2) vectors, got shape {data.shape}")
    text = " ".join(comment.split())[:250]
    step = repr(float(spacing_um))
    header = [
        "ObjectType = Image",
        "NDims = 2",
        *([f"Comment = {text}"] if text else []),
        "BinaryData = True",
        "BinaryDataByteOrderMSB = False",
        "CompressedData = False",
        "TransformMatrix = 1 0 0 1",
        "Offset = " + " ".join(repr(float(v)) for v in offset_um),
        "CenterOfRotation = 0 0",
        f"ElementSpacing = {step} {step}",
        f"DimSize = {data.shape[1]} {data.shape[0]}",
        "ElementNumberOfChannels = 2",
        "ElementType = MET_DOUBLE",
        "ElementDataFile = LOCAL",
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join(header) + "\n").encode("ascii") + data.tobytes())
    return path


def _tps_error_um(em_nodes: np.ndarray, lm_nodes: np.ndarray, em_check, lm_check) -> float:
    """Largest error of the thin-plate splines through the nodes, both directions, um."""
    from scipy.interpolate import RBFInterpolator

    forward = RBFInterpolator(em_nodes, lm_nodes, kernel="thin_plate_spline", degree=1)
    backward = RBFInterpolator(lm_nodes, em_nodes, kernel="thin_plate_spline", degree=1)
    errors = np.concatenate([forward(em_check) - lm_check, backward(lm_check) - em_check])
    return float(np.max(np.hypot(errors[:, 0], errors[:, 1])))


def bigwarp_field_grid(
    raw_field: DeformationField,
    em_px_per_um: float,
    em_shape: Sequence[int],
    nodes: Sequence[int] = BIGWARP_GRID_NODES,
    tol_um: float = BIGWARP_TPS_TOL_UM,
) -> tuple[pd.DataFrame, int, float]:
    """A regular grid of EM points and their images through the field, for BigWarp.

    An n x n grid from the first to the last EM pixel centre, n the first of ``nodes``
    whose thin-plate splines (EM -> LM and LM -> EM, BigWarp's kernel ``r² log r`` with an
    affine part) reproduce the field within ``tol_um`` at 40 x 40 points over the EM field
    (else the last).

    Returns
    -------
    table : DataFrame
        Columns of :data:`clemalign.io.LANDMARK_COLUMNS`, um (``grid1`` ... row-major).
    n : int
        Nodes per axis.
    error_um : float
        Largest thin-plate-spline error at the check points, um.
    """
    rows, cols = int(em_shape[0]), int(em_shape[1])
    cx = px_to_um(np.linspace(0, cols - 1, 40), em_px_per_um)
    cy = px_to_um(np.linspace(0, rows - 1, 40), em_px_per_um)
    em_check = np.stack([a.ravel() for a in np.meshgrid(cx, cy)], axis=1)
    lm_check = raw_field.apply(em_check)
    for n in nodes:
        xs = px_to_um(np.linspace(0, cols - 1, n), em_px_per_um)
        ys = px_to_um(np.linspace(0, rows - 1, n), em_px_per_um)
        em = np.stack([a.ravel() for a in np.meshgrid(xs, ys)], axis=1)
        lm = raw_field.apply(em)
        error = _tps_error_um(em, lm, em_check, lm_check)
        if error <= tol_um:
            break
    table = grid_points(em, lm)
    return table, int(n), error


def warp_through_field(
    image: np.ndarray,
    image_px_per_um: float,
    field_um: DeformationField,
    grid_shape: Sequence[int],
    grid_px_per_um: float,
    order: int = 1,
    max_pixels: int = STRIP_PIXELS,
) -> np.ndarray:
    """An image resampled onto a grid through an image -> grid field, NaN outside.

    Each grid pixel centre the image can reach is pulled back (:func:`pull_back`) and
    the image, low-passed first as
    :func:`clemalign.transforms.warp_image` does when it is finer than the grid, is
    interpolated there; pixels whose pull-back did not converge are NaN (as
    :func:`clemalign.nonrigid.warp_with_field`, which does not low-pass). The grid goes in
    strips of ``max_pixels``, and only pixels the image can reach are iterated.

    Returns
    -------
    ndarray of float32, shape ``grid_shape``
    """
    from scipy import ndimage

    img = np.asarray(image, dtype=np.float32)
    inv = np.linalg.inv(np.asarray(field_um.affine, dtype=float))
    factor = image_px_per_um * np.sqrt(abs(np.linalg.det(inv[:2, :2]))) / grid_px_per_um
    if factor > 1.0:
        img = ndimage.gaussian_filter(img, (factor - 1.0) / 2.0)
    # a pixel can land on the image only if its affine pull-back is within the residual's
    # reach of it: |A⁻¹| |r|, |r| at most sqrt(2) x the largest node value, doubled for
    # the spline's overshoot, plus a node spacing
    largest = float(np.max(np.abs(field_um.residual_um), initial=0.0))
    reach = np.linalg.norm(inv[:2, :2], 2) * largest * 2.0 * np.sqrt(2.0) + field_um.spacing_um
    extent = np.array([img.shape[1], img.shape[0]], dtype=float) / image_px_per_um
    rows, cols = int(grid_shape[0]), int(grid_shape[1])
    out = np.full((rows, cols), np.nan, dtype=np.float32)
    for strip in _strips(rows, cols, max_pixels):
        centres = _pixel_centres(strip, cols, grid_px_per_um)
        affine_src = apply(inv, centres)
        near = np.all((affine_src >= -reach) & (affine_src <= extent + reach), axis=1)
        src, failed = pull_back(field_um, centres[near])
        rc = xy_um_to_rc_px(src, image_px_per_um).T
        values = np.full(len(centres), np.nan, dtype=np.float32)
        values[near] = ndimage.map_coordinates(img, rc, order=order, mode="constant", cval=np.nan)
        values[np.flatnonzero(near)[failed]] = np.nan
        out[strip] = values.reshape(strip.stop - strip.start, cols)
    return out


def write_vector_tiff(
    path: str | Path, channels: np.ndarray, px_per_um: float, labels: Sequence[str]
) -> Path:
    """A float32 (channels, rows, cols) ImageJ hyperstack in um with its pixel size (the
    resolution tags, as :func:`clemalign.io.write_tiff`) and one label per channel."""
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(
        path,
        np.asarray(channels, dtype=np.float32),
        imagej=True,
        resolution=(float(px_per_um), float(px_per_um)),
        metadata={"unit": "um", "axes": "CYX", "Labels": list(labels)},
        photometric="minisblack",
    )
    return path


def write_nonrigid_files(
    out: Path,
    field: DeformationField,
    lm_crop_origin_um: Sequence[float],
    pair: RawPair,
    order: int = 1,
    images: bool = True,
) -> list[Path]:
    """Export a non-rigid EM -> LM registration between the raw frames.

    The raw mapping is ``phi = field.then(translation(lm_crop_origin_um))`` (the EM working
    frame is the raw EM frame), um from the outer corner of pixel (0, 0), EM pixel (r, c)
    centred at ``((c + 0.5) / p, (r + 0.5) / p)``. Files (earlier ones of these names are
    removed first):

    * ``deformation.json``: ``phi.to_dict()`` (:class:`~clemalign.transforms.DeformationField`,
      read back by ``DeformationField.from_dict``), ``frames``, ``lm_crop_origin_um``, and
      ``itk`` and ``bigwarp``: the grids of the two files below.
    * ``lm_position_um.tif``: float32 ImageJ stack (2, EM rows, EM cols) on the raw EM grid,
      EM pixel size: x (channel 0) and y (1), raw LM um, of each EM pixel centre.
    * ``displacement_itk.mha``: ITK displacement field, LM -> EM (ITK's fixed -> moving, as
      ``transform.tfm``), same half-pixel convention (ITK origin 0, spacing 1/p um);
      nodes every k-th LM pixel centre, at most :data:`ITK_FIELD_SPACING_UM` apart
      (:func:`itk_node_spacing_um`), to or past the edges of the whole raw LM image (see
      :func:`itk_displacement_field`). LM points whose inverse falls outside the EM field
      plus the field's margin get the inverse of ``phi.affine`` (:func:`pull_back`;
      continuous only where the field's residual vanishes at that edge).
    * ``bigwarp_nonrigid_landmarks.csv``: BigWarp CSV (as ``bigwarp_landmarks.csv``) of an
      n x n grid of EM points and their images (:func:`bigwarp_field_grid`); BigWarp's
      thin-plate spline through them approximates ``phi`` (error in ``deformation.json``).
    * with ``images``, ``em_on_lm_nonrigid.tif``: the raw EM resampled through ``phi`` onto
      the raw LM grid (:func:`warp_through_field`), LM pixel size, NaN outside the EM.

    Parameters
    ----------
    out : Path
        Folder (created).
    field : DeformationField
        Working EM um -> working LM um, as the affine ``matrix_um`` of the export.
    lm_crop_origin_um : (float, float)
        Corner of the LM working frame in the raw LM frame, um.
    pair : RawPair
        :func:`raw_pair` of the case.
    order : int
        Interpolation order of the EM image.
    images : bool
        Write ``em_on_lm_nonrigid.tif``.

    Returns
    -------
    list of Path
        The files written, in the order above.

    Raises
    ------
    ValueError
        When the field's affine is not invertible.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in NONRIGID_FILES:
        (out / name).unlink(missing_ok=True)
    raw = raw_frame_field(field, lm_crop_origin_um)
    if not invertible(raw.affine):
        raise ValueError("the field's affine is not an invertible affine")
    em_ppu, lm_ppu = float(pair.em_px_per_um), float(pair.lm_px_per_um)

    positions = lm_positions_um(raw, pair.em_shape, em_ppu)
    tif = write_vector_tiff(out / "lm_position_um.tif", positions, em_ppu, ("x_um", "y_um"))

    itk = itk_displacement_field(raw, pair)
    comment = (
        "clemalign: maps LM (fixed) points to EM (moving) points in um, images read with ITK "
        f"origin 0 and spacing {1 / em_ppu!r} um (EM), {1 / lm_ppu!r} um (LM)"
    )
    mha = write_metaimage_vectors(
        out / "displacement_itk.mha", itk.displacement_um, itk.spacing_um, itk.offset_um, comment
    )

    table, nodes, tps_error_um = bigwarp_field_grid(raw, em_ppu, pair.em_shape)
    csv = out / "bigwarp_nonrigid_landmarks.csv"
    write_bigwarp_landmarks(csv, table, em_ppu, lm_ppu)

    record = {
        **raw.to_dict(),
        "frames": "raw EM um -> raw LM um, um from the outer corner of pixel (0, 0), x along "
        f"columns, y along rows; EM {pair.em_path}, LM {pair.lm_path}",
        "lm_crop_origin_um": [float(v) for v in lm_crop_origin_um],
        "itk": {
            **itk.record(),
            "grid": "displacement_itk.mha: ITK LM um (pixel i centred at i / px_per_um) of "
            "node (col, row) = offset_um + (col, row) * spacing_um; every k-th LM pixel "
            "centre (or finer) reaching to or past the edges of the whole raw LM image",
        },
        "bigwarp": {
            "nodes": f"{nodes} x {nodes} grid from the first to the last EM pixel centre",
            "tps_max_error_um": tps_error_um,
        },
    }
    json_path = out / "deformation.json"
    write_json(json_path, record)
    written = [json_path, tif, mha, csv]
    if images:
        warped = warp_through_field(pair.em, em_ppu, raw, pair.lm_shape, lm_ppu, order)
        description = {
            "image": pair.em_path,
            "grid": f"raw LM {pair.lm_path}",
            "field": "non-rigid",
        }
        write_tiff(out / "em_on_lm_nonrigid.tif", warped, lm_ppu, description)
        written.append(out / "em_on_lm_nonrigid.tif")
    return written
