"""The ``clemalign`` command line: one step of the workflow on the files you give it.

For a microscopist with a folder of images and no workflow. Every subcommand calls the
library functions the Snakemake rules call (``scripts/``), with the workflow's defaults
(``config.yaml``); nothing is implemented twice.

``clemalign register FIXED MOVING -o OUT/``
    Intensity-based affine registration of an electron micrograph (moving) to a light
    micrograph (fixed), from a transform file, from landmarks, or from a global search,
    with the workflow's status checks; optionally a B-spline (non-rigid) refinement.
``clemalign fiducials FIXED MOVING --bead-nm 100 -o OUT/``
    The fiducial (bead) track on one SEM/confocal pair: Algorithm 1, the Gaussian-fit
    baseline and the robust mode.
``clemalign warp T.json MOVING FIXED -o OUT.tif``
    Resample the moving image onto the fixed image's pixel grid.
``clemalign export T.json --to itk|bigwarp|ecclem -o FILE``
    Write a transform for ITK/SimpleITK/elastix, BigWarp (Fiji) or ec-CLEM (Icy).
``clemalign evaluate T.json LANDMARKS``
    Landmark errors of a transform, as a table or JSON.

Exit codes: 0 the step ran and its result is ``ok``; 1 it ran but the result is
``failed`` or ``uncertain`` (the reason is printed); 2 bad input (a missing or
unreadable file, a missing pixel size...: the message names the file and the problem).

Run ``clemalign COMMAND --help`` for the options; ``python -m clemalign.cli`` works too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import __version__
from .errors import ClemalignError

if TYPE_CHECKING:  # the heavy modules are imported by the command that needs them
    import pandas as pd

    from .fiducials import FiducialCase, MethodOutcome
    from .nonrigid import NonrigidResult
    from .sparse_analogy import ConfocalPrediction, JointDictionary
    from .transforms import DeformationField

    Subparsers = argparse._SubParsersAction

#: Exit codes (130: interrupted by Ctrl-C, as shells report SIGINT).
EXIT_OK, EXIT_NOT_OK, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

#: Defaults of config.yaml that the command line uses (tests/test_cli.py checks them).
WORKING_PX_PER_UM = 14.52  # preprocess.px_per_um (paper sec. 5.3)
LEVELS, BINS = 3, 32  # registration.levels, registration.bins
SSD_CONTRAST_UM = 1.0  # registration.ssd_contrast_um: SSD on locally normalised images
SEED = 2012  # seed: the chance surrogates of the status checks are drawn from it
#: Fiducial methods in the order the one written as ``transform.json`` is picked: the
#: paper's Algorithm 1, the robust mode, the baseline of reference [5].
FIDUCIAL_PREFERENCE = ("algorithm1", "robust", "gaussian_baseline")
#: Fewest landmark pairs for a start: two fit a mirrored similarity as well as the true one.
MIN_LANDMARKS = 3
#: Confocal margin around the TEM footprint of a training pair, um (preprocess.margin_um).
MARGIN_UM = 3.0
#: A start found by the global search is doubted when another placement correlates
#: within this of it (registration.global_search.min_gap).
GLOBAL_MIN_GAP = 0.05
CHANNELS = ("red", "green", "blue", "gray")
#: The two images, as the messages name them.
ROLES = {"fixed": "fixed (LM)", "moving": "moving (EM)"}

UNITS = """\
units: positions and transforms in micrometres (um), x along image columns, y along
rows, origin at the outer corner of the first pixel; pixel sizes in pixels per
micrometre (px/um: 100 nm pixels = 10 px/um); bead diameters in nanometres (nm). A
transform maps EM (moving) um to LM (fixed) um. Pixel sizes are read from the TIFF
files (ImageJ/Fiji calibration or resolution tags); give them with --fixed-px-per-um /
--moving-px-per-um when a file has none.

exit codes: 0 ok; 1 the step ran but its result is failed or uncertain (the reason is
printed); 2 bad input (the message names the file and the problem)."""


class InputError(ClemalignError):
    """Bad input to a command: the message names the file and what is wrong.

    Parameters
    ----------
    path : str or Path
        The file involved.
    message : str
        What is wrong, in words a microscopist understands.
    """

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = str(path)
        super().__init__(f"{path}: {message}")


class RegistrationFailed(Exception):
    """The registration ran and found no transform (the message says why)."""


# ---------------------------------------------------------------------------- progress


class Progress:
    """Progress lines on stderr (``--quiet`` keeps only notes and errors)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        """Say what a long step does before it starts, and how long it took."""
        t0 = time.perf_counter()
        if not self.quiet:
            print(f"{what} ...", file=sys.stderr, flush=True)
        yield
        if not self.quiet:
            print(f"  done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

    @staticmethod
    def note(message: str) -> None:
        """A note the user should read (a repaired input, a weak result)."""
        print(f"note: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ images


@dataclass
class Plane:
    """One image as the registration uses it.

    Attributes
    ----------
    path : Path
        The file.
    data : ndarray
        2D float32 in [0, 1]: the chosen channel, a z-stack as its maximum projection.
    px_per_um : float
        Sampling, px/um.
    """

    path: Path
    data: np.ndarray
    px_per_um: float

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols)."""
        return int(self.data.shape[0]), int(self.data.shape[1])

    @property
    def field_um(self) -> tuple[float, float]:
        """(width, height) in um."""
        return self.shape[1] / self.px_per_um, self.shape[0] / self.px_per_um


def _pixel_size(path: Path, from_file: float | None, given: float | None, flag: str) -> float:
    """The pixel size to use: the one given on the command line, else the file's."""
    ppu = given if given is not None else from_file
    if ppu is None:
        raise InputError(
            path,
            f"the file carries no pixel size; give it with {flag} (pixels per um, e.g. 10 "
            "for 100 nm pixels)",
        )
    if not (np.isfinite(ppu) and ppu > 0):
        raise InputError(path, f"the pixel size {ppu!r} px/um is not a positive number")
    return float(ppu)


def _read_raw(path: Path, role: str) -> tuple[np.ndarray, float | None]:
    """The image as stored (a z-stack reduced to its maximum projection) and the file's
    pixel size; any read failure names the file."""
    from .io import read_image, tiff_axes
    from .preprocess import project_z

    if not path.is_file():
        raise InputError(path, f"the {role} image file does not exist")
    try:
        image, from_file = read_image(path)
        return project_z(image, tiff_axes(path), "max"), from_file
    except Exception as error:  # noqa: BLE001 - any read failure names the file
        raise InputError(path, f"cannot read the {role} image: {error}") from error


def read_plane(path: str | Path, px_per_um: float | None, channel: str | int, role: str) -> Plane:
    """Read one image as the workflow's preprocessing does (scripts/preprocess.py).

    The checks of :func:`clemalign.preprocess.load_case_inputs` (:mod:`clemalign.checks`:
    a few NaN/inf pixels filled, a constant image refused, the values brought to [0, 1]),
    then :func:`clemalign.preprocess.select_channel` and
    :func:`~clemalign.preprocess.to_unit_float`.

    Parameters
    ----------
    path : str or Path
        The image file (TIFF, PNG...).
    px_per_um : float or None
        Pixel size given on the command line (None: the file's).
    channel : str or int
        ``red``, ``green``, ``blue``, ``gray`` or a channel index.
    role : {"fixed", "moving"}
        Which image it is (for the messages; ``--<role>-px-per-um`` gives its pixel size).

    Raises
    ------
    InputError
        Missing or unreadable file, no pixel size, a constant image or channel, too
        many NaN pixels, a channel the image does not have.
    """
    from .checks import finite_pixels, not_constant, unit_range
    from .errors import CaseError
    from .preprocess import select_channel, to_unit_float

    path, what = Path(path), ROLES[role]
    raw, from_file = _read_raw(path, what)
    ppu = _pixel_size(path, from_file, px_per_um, f"--{role}-px-per-um")
    try:
        repaired, invalid, note1 = finite_pixels(raw, path.name, str(path), what)
        plane = select_channel(repaired, channel)
        named = channel if repaired.ndim == 3 else None  # as load_case_inputs names it
        not_constant(plane, path.name, str(path), what, named, invalid)
        scaled, note2 = unit_range(repaired, path.name, str(path), what)
        plane = to_unit_float(select_channel(scaled, channel))
    except CaseError as error:
        raise InputError(path, error.detail) from error
    except ValueError as error:  # a channel the image does not have
        raise InputError(path, str(error)) from error
    for message in (note1, note2):
        if message:  # worded for a case sheet: "case '<name>': ... (file: <path>)"
            Progress.note(message.removeprefix(f"case {path.name!r}: "))
    return Plane(path, np.asarray(plane, dtype=np.float32), ppu)


def read_grid(path: str | Path, px_per_um: float | None, role: str) -> Plane:
    """An image whose pixel grid only is needed (the fixed image of ``warp``, the images
    of ``export``); ``role`` as in :func:`read_plane`."""
    path = Path(path)
    raw, from_file = _read_raw(path, ROLES[role])
    ppu = _pixel_size(path, from_file, px_per_um, f"--{role}-px-per-um")
    from .checks import pixel_shape

    empty = np.broadcast_to(np.float32(0.0), pixel_shape(raw))  # the shape, no memory
    return Plane(path, empty, ppu)


def working_image(plane: Plane, px_per_um: float) -> np.ndarray:
    """The image at the working sampling (:func:`clemalign.preprocess.resample`, frame kept)."""
    from .preprocess import resample

    return resample(plane.data, plane.px_per_um, px_per_um)


def no_finer_than(plane: Plane, px_per_um: float) -> Plane:
    """``plane`` low-passed and resampled to ``px_per_um`` when it is finer (before a
    resampling that does not anti-alias), else ``plane`` itself."""
    if plane.px_per_um <= px_per_um:
        return plane
    return Plane(plane.path, working_image(plane, px_per_um), px_per_um)


# -------------------------------------------------------------------------- transforms


def load_transform(
    path: str | Path, moving_px_per_um: float | None = None, fixed_px_per_um: float | None = None
) -> tuple[np.ndarray | DeformationField, dict]:
    """Read a transform file: clemalign JSON (affine or deformation field), ITK, ec-CLEM.

    Parameters
    ----------
    path : str or Path
        ``transform.json`` (:meth:`clemalign.transforms.Transform.to_dict`, with or
        without ``status``; a fiducial method's transform file), ``deformation.json``
        (:meth:`clemalign.transforms.DeformationField.to_dict`), an ITK ``.tfm``/``.txt``
        or an ec-CLEM ``.xml``.
    moving_px_per_um, fixed_px_per_um : float, optional
        Pixel sizes of the images, needed for ITK files only.

    Returns
    -------
    transform : ndarray (3, 3) or DeformationField
        Moving (EM) um -> fixed (LM) um.
    record : dict
        The JSON as read (empty for ITK and ec-CLEM files).

    Raises
    ------
    InputError
        A missing file, a failed result (``matrix: null``), or an unknown format.
    """
    from .formats import read_ecclem_transform, read_itk_transform
    from .io import read_json
    from .transforms import DeformationField, Transform

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "the transform file does not exist")
    suffix = path.suffix.lower()
    if suffix in (".tfm", ".txt"):
        if moving_px_per_um is None or fixed_px_per_um is None:
            raise InputError(
                path,
                "reading an ITK transform needs both pixel sizes: give --moving and "
                "--fixed images or --moving-px-per-um and --fixed-px-per-um",
            )
        return read_itk_transform(path, moving_px_per_um, fixed_px_per_um), {}
    if suffix == ".xml":
        return read_ecclem_transform(path), {}
    try:
        record = read_json(path)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(path, f"not a JSON transform file ({error})") from error
    if record.get("kind") == "deformation_field":
        return DeformationField.from_dict(record), record
    if "measures" in record and "matrix" not in record:
        raise InputError(
            path,
            "a workflow registration record holds one transform per measure "
            f"({', '.join(record['measures'])}); give a single transform (clemalign "
            "register's transform.json)",
        )
    if record.get("matrix", "absent") is None:
        raise InputError(path, f"holds no transform: its status is {record.get('status')!r}")
    if "matrix" not in record:
        raise InputError(path, "no 'matrix' in this JSON file: not a clemalign transform")
    return Transform.from_dict(record).matrix, record


def load_affine(
    path: str | Path, moving_px_per_um: float | None = None, fixed_px_per_um: float | None = None
) -> tuple[np.ndarray, dict]:
    """:func:`load_transform`, refusing a deformation field (affine-only commands)."""
    transform, record = load_transform(path, moving_px_per_um, fixed_px_per_um)
    if not isinstance(transform, np.ndarray):
        raise InputError(path, "is a deformation field; this command needs an affine transform")
    note_status(path, record)
    return transform, record


def note_status(path: str | Path, record: dict) -> None:
    """A note when a transform file says its result is not ``ok``."""
    status = record.get("status", "ok")
    if status != "ok":
        Progress.note(f"{path}: this transform's status is {status!r}")


def _landmarks(path: str | Path, moving: Plane, fixed: Plane) -> pd.DataFrame:
    """Landmark pairs (um) from our CSV, a BigWarp CSV or an ec-CLEM XML."""
    from .formats import read_landmarks_any

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "the landmark file does not exist")
    try:
        return read_landmarks_any(path, moving.px_per_um, fixed.px_per_um)
    except (ValueError, KeyError) as error:
        raise InputError(path, f"cannot read the landmarks: {error}") from error


# ---------------------------------------------------------------------------- outputs


@dataclass
class Answer:
    """What a registration command writes.

    Attributes
    ----------
    status : str
        ``ok``, ``uncertain: <reason>`` or ``failed: <reason>``.
    matrix : ndarray or None
        Moving um -> fixed um; None when nothing may be used.
    method : str
        How it was found.
    extra : dict
        The record kept in ``transform.json`` (``extra``).
    rejected : ndarray or None
        A matrix the checks refused (kept for diagnosis only).
    """

    status: str
    matrix: np.ndarray | None
    method: str
    extra: dict = field(default_factory=dict)
    rejected: np.ndarray | None = None


def transform_record(answer: Answer, moving: Plane, fixed: Plane) -> dict:
    """``transform.json``: :func:`clemalign.transforms.transform_record` of the answer (a
    failed answer has ``matrix: null``, as a fiducial method's transform file)."""
    from .transforms import transform_record as record

    return record(
        answer.status,
        answer.matrix,
        str(moving.path),
        str(fixed.path),
        answer.method,
        answer.extra,
        answer.rejected,
    )


def image_record(moving: Plane, fixed: Plane) -> dict:
    """Pixel sizes and shapes of the two images (``export`` reads them back):
    :func:`clemalign.export.grid_record`."""
    from .export import grid_record

    return grid_record(moving.px_per_um, fixed.px_per_um, moving.shape, fixed.shape)


def write_answer(
    out: Path,
    answer: Answer,
    moving: Plane,
    fixed: Plane,
    landmarks: pd.DataFrame | None,
    progress: Progress,
) -> list[Path]:
    """Write ``transform.json`` and, when there is a transform, ``transform.tfm``,
    ``ecclem.xml``, ``registered.tif`` and (with landmarks) ``bigwarp_landmarks.csv``
    (:func:`clemalign.export.write_exchange_files`)."""
    from .export import write_exchange_files
    from .io import write_json

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "transform.json", transform_record(answer, moving, fixed))
    written = [out / "transform.json"]
    if answer.matrix is None:
        return written
    grid = image_record(moving, fixed)
    written += write_exchange_files(out, answer.matrix, grid, landmarks)
    with progress.step("resampling the moving image onto the fixed grid (registered.tif)"):
        written.append(write_registered(out / "registered.tif", answer.matrix, moving, fixed))
    return written


def write_registered(
    path: Path,
    transform: np.ndarray | DeformationField,
    moving: Plane,
    fixed: Plane,
    order: int = 1,
) -> Path:
    """The moving image on the fixed grid (NaN outside the moving image), written with the
    fixed pixel size: :func:`clemalign.export.write_warped` for an affine,
    :func:`clemalign.nonrigid.warp_with_field` for a deformation field."""
    from .io import write_tiff

    meta = {"moving": str(moving.path)}
    if isinstance(transform, np.ndarray):
        from .export import write_warped

        ppu = moving.px_per_um
        write_warped(path, moving.data, ppu, transform, fixed.shape, fixed.px_per_um, order, meta)
        return path
    # the field's warp does not low-pass: bring the moving image to the fixed sampling
    from .nonrigid import warp_with_field

    source = no_finer_than(moving, fixed.px_per_um)
    image = warp_with_field(
        source.data, source.px_per_um, transform, fixed.shape, fixed.px_per_um, order
    )
    write_tiff(path, image, fixed.px_per_um, meta)
    return path


def report(answer: Answer, written: Sequence[Path], landmark_mae: dict | None = None) -> int:
    """Print the result (stdout) and, when it is not ok, the reason (stderr); the exit code."""
    from .export import describe

    print(f"status: {answer.status}")
    if answer.matrix is not None:
        rows = np.asarray(answer.matrix)[:2]
        print("transform (moving um -> fixed um):")
        for row in rows:
            print("  " + "  ".join(f"{v:12.6f}" for v in row))
        print(f"  {describe(answer.matrix)}")
    for name, value in (landmark_mae or {}).items():
        print(f"landmark MAE ({name}): {value:.3f} um")
    for path in written:
        print(f"wrote {path}")
    if answer.status == "ok":
        return EXIT_OK
    print(f"clemalign: the result is not ok: {answer.status}", file=sys.stderr)
    return EXIT_NOT_OK


def downgrade(status: str, reason: str) -> str:
    """``status`` with one more reason to doubt it (``ok`` becomes ``uncertain``)."""
    return f"uncertain: {reason}" if status == "ok" else f"{status}; {reason}"


# ---------------------------------------------------------------------------- register


@dataclass
class WorkingPair:
    """Both images at the working sampling, as the registration sees them."""

    moving: np.ndarray
    fixed: np.ndarray
    px_per_um: float


@dataclass
class Start:
    """Where the affine registration starts: moving um -> fixed um, and how it was found."""

    matrix: np.ndarray
    how: str
    record: dict = field(default_factory=dict)


def working_pair(
    moving: Plane, fixed: Plane, px_per_um: float, invert: bool, progress: Progress
) -> WorkingPair:
    """Both images resampled to ``px_per_um`` (frames kept); the moving one inverted
    (``1 - moving``, as the workflow registers the raw TEM under SSD) with ``invert``."""
    with progress.step(f"resampling both images to {px_per_um:g} px/um"):
        moving_w = working_image(moving, px_per_um)
        fixed_w = working_image(fixed, px_per_um)
    if invert:
        moving_w = 1.0 - moving_w
    return WorkingPair(moving_w, fixed_w, float(px_per_um))


def landmark_start(landmarks: pd.DataFrame, path: str | Path) -> Start:
    """The workflow's rough start: the similarity fitted to the landmark pairs."""
    from .io import landmark_points
    from .transforms import fit_similarity

    if len(landmarks) < MIN_LANDMARKS:
        raise InputError(
            path,
            f"{len(landmarks)} landmark pairs; a start needs at least {MIN_LANDMARKS} (two "
            "fit a mirrored similarity as well as the true one)",
        )
    try:
        matrix = fit_similarity(*landmark_points(landmarks))
    except ValueError as error:
        raise InputError(path, f"no similarity fits these landmarks: {error}") from error
    record = {"landmarks": str(path), "n_landmarks": len(landmarks)}
    return Start(matrix, "similarity fitted to the landmarks", record)


def given_start(args: argparse.Namespace, landmarks: pd.DataFrame | None) -> Start | None:
    """The start from ``--start`` or ``--landmarks``; None: the global search decides."""
    if args.start:
        matrix, _ = load_affine(args.start)
        return Start(matrix, "transform file", {"file": str(args.start)})
    if landmarks is not None:
        return landmark_start(landmarks, args.landmarks)
    return None


def searched_start(pair: WorkingPair, args: argparse.Namespace, progress: Progress) -> Start:
    """A start without landmarks: :func:`clemalign.search.global_search` (rotation +-180
    deg, scale 0.85-1.15, mirror; the best candidates refined by the affine registration).

    Raises
    ------
    RegistrationFailed
        When no placement of the moving image inside the fixed one can be refined.
    """
    from .confidence import ConfidenceLimits
    from .search import SearchRange, global_search, global_status

    search = SearchRange()
    what = (
        f"global search over {len(search.linear_maps())} linear maps (rotation +-180 deg by "
        f"{search.rotation_step_deg:g}, {search.scale_steps} scales {search.scale[0]}-"
        f"{search.scale[1]}, mirrored or not), then affine refinement of the "
        f"{search.candidates} best placements"
    )
    with progress.step(what):
        try:
            found = global_search(
                pair.moving,
                pair.fixed,
                moving_px_per_um=pair.px_per_um,
                fixed_px_per_um=pair.px_per_um,
                search=search,
                measure=args.measure,
                options={"levels": args.levels, "bins": args.bins},
            )
        except (ValueError, np.linalg.LinAlgError) as error:
            raise RegistrationFailed(str(error)) from error
    best = found.candidates[0]
    record = {
        "similarity": found.similarity,
        "gap_to_runner_up": found.gap,
        "coarse": {k: best[k] for k in ("rotation_deg", "scale", "mirrored", "ncc")},
        "status": global_status(found, ConfidenceLimits(), GLOBAL_MIN_GAP),
    }
    return Start(found.matrix, "global search", record)


def registered(
    pair: WorkingPair, start: Start, args: argparse.Namespace, name: str, progress: Progress
) -> Answer:
    """:func:`clemalign.routes.register_measures` (the register rule's call): the affine
    registration and its status checks with the config's limits."""
    from .confidence import ConfidenceLimits
    from .routes import register_measures
    from .search import StartSearch
    from .seeds import rng_for

    limits = ConfidenceLimits()
    what = (
        f"affine registration ({args.measure}, {args.levels} levels) and its checks "
        f"({limits.chance_trials} chance surrogates registered too)"
    )
    with progress.step(what):
        entry = register_measures(
            lambda _measure: pair.moving,
            pair.fixed,
            start.matrix,
            [args.measure],
            pair.px_per_um,
            None,
            {"levels": args.levels, "bins": args.bins, "ssd_contrast_um": SSD_CONTRAST_UM},
            confidence=limits,
            rng=rng_for(args.seed, "confidence/cli", name),
            search=StartSearch() if args.search_start and start.how != "global search" else None,
        )[args.measure]
    extra = {
        "measure": args.measure,
        "working_px_per_um": pair.px_per_um,
        "inverted_moving": bool(args.invert_moving),
        "start": {"how": start.how, "matrix": start.matrix.tolist(), **start.record},
        **{k: entry[k] for k in ("value", "confidence", "info") if k in entry},
    }
    method = f"affine registration ({args.measure}) from {start.how}"
    matrix = np.asarray(entry["matrix"], float) if "matrix" in entry else None
    status = entry["status"]
    if status.startswith("failed"):
        return Answer(status, None, method, extra, rejected=matrix)
    doubt = start.record.get("status", "ok")  # the global search's own (gap, plausibility)
    if doubt != "ok":
        status = downgrade(status, doubt.split(": ", 1)[1])
    return Answer(status, matrix, method, extra)


def refine_nonrigid(
    pair: WorkingPair, answer: Answer, args: argparse.Namespace, progress: Progress
) -> NonrigidResult | None:
    """:func:`clemalign.nonrigid.register_bspline` on top of the affine answer; None (and
    the answer downgraded) when it fails or folds."""
    from .nonrigid import register_bspline

    with progress.step(f"B-spline (non-rigid) refinement ({args.measure})"):
        try:
            result = register_bspline(
                pair.moving,
                pair.fixed,
                answer.matrix,
                moving_px_per_um=pair.px_per_um,
                fixed_px_per_um=pair.px_per_um,
                measure=args.measure,
                levels=args.levels,
                bins=args.bins,
                ssd_contrast_um=SSD_CONTRAST_UM,
            )
        except (ValueError, np.linalg.LinAlgError) as error:
            answer.status = downgrade(answer.status, f"the non-rigid refinement failed: {error}")
            return None
    ratio = result.info["min_jacobian_ratio"]
    if ratio <= 0:
        answer.status = downgrade(
            answer.status, f"the non-rigid field folds (smallest area ratio {ratio:.2f})"
        )
    return result


def write_nonrigid(
    out: Path, result: NonrigidResult, moving: Plane, fixed: Plane, progress: Progress
) -> list[Path]:
    """``deformation.json`` (the field, :meth:`DeformationField.to_dict`, and the
    refinement's record) and ``registered_nonrigid.tif``."""
    from .io import write_json

    keys = (
        "displacement_rms_um",
        "min_jacobian_ratio",
        "bending",
        "bending_weight",
        "grid_spacing_um",
        "seconds",
    )
    record = result.field.to_dict() | {"nonrigid": {k: result.info[k] for k in keys}}
    write_json(out / "deformation.json", record)
    with progress.step("resampling the moving image through the field"):
        path = write_registered(out / "registered_nonrigid.tif", result.field, moving, fixed)
    return [out / "deformation.json", path]


def landmark_mae(landmarks: pd.DataFrame | None, start: Start | None, answer: Answer) -> dict:
    """Landmark MAE (um) of the start and of the answer (:mod:`clemalign.metrics`)."""
    from .io import landmark_points
    from .metrics import landmark_errors_um, mae_std

    if landmarks is None:
        return {}
    em_xy, lm_xy = landmark_points(landmarks)
    maes = {}
    start_matrix = start.matrix if start is not None else None
    for name, matrix in (("start", start_matrix), ("registered", answer.matrix)):
        if matrix is not None:
            maes[name] = mae_std(landmark_errors_um(matrix, em_xy, lm_xy))[0]
    return maes


def check_fields(moving: Plane, fixed: Plane) -> None:
    """A note when the moving field is larger than the fixed one (arguments swapped?)."""
    (mw, mh), (fw, fh) = moving.field_um, fixed.field_um
    if mw * mh > fw * fh:
        Progress.note(
            f"the moving image ({mw:.1f} x {mh:.1f} um) is larger than the fixed one ({fw:.1f} "
            f"x {fh:.1f} um); the order is FIXED (LM) then MOVING (EM), and the EM field "
            "should lie inside the LM field"
        )


def cmd_register(args: argparse.Namespace) -> int:
    """``clemalign register``: see :func:`build_parser`."""
    progress = Progress(args.quiet)
    fixed = read_plane(args.fixed, args.fixed_px_per_um, args.fixed_channel, "fixed")
    moving = read_plane(args.moving, args.moving_px_per_um, args.moving_channel, "moving")
    check_fields(moving, fixed)
    landmarks = _landmarks(args.landmarks, moving, fixed) if args.landmarks else None
    start = given_start(args, landmarks)
    pair = working_pair(moving, fixed, args.px_per_um, args.invert_moving, progress)
    try:
        start = start or searched_start(pair, args, progress)
        answer = registered(pair, start, args, moving.path.name, progress)
    except RegistrationFailed as error:
        answer = Answer(f"failed: {error}", None, f"affine registration ({args.measure})")
    answer.extra |= image_record(moving, fixed)
    nonrigid = None
    if args.nonrigid and answer.matrix is not None:
        nonrigid = refine_nonrigid(pair, answer, args, progress)
    out = Path(args.output)
    written = write_answer(out, answer, moving, fixed, landmarks, progress)
    if nonrigid is not None:
        written += write_nonrigid(out, nonrigid, moving, fixed, progress)
    return report(answer, written, landmark_mae(landmarks, start, answer))


# --------------------------------------------------------------------------- fiducials


def fiducial_settings(args: argparse.Namespace) -> dict:
    """Overrides of :data:`clemalign.fiducials.DEFAULT_FIDUCIAL_SETTINGS` (config
    ``fiducials``) from the command line."""
    return {
        "bead_diameter_nm": args.bead_nm,
        "lm_psf_fwhm_nm": args.fixed_psf_nm,
        "em_psf_fwhm_nm": args.moving_psf_nm,
        "tolerance_um": args.tolerance_um,
        "threshold": args.threshold,
    }


def _threshold(text: str) -> str | float:
    """A threshold method name or a number."""
    try:
        return float(text)
    except ValueError:
        return text


def fiducial_masks(args: argparse.Namespace, em: Plane, lm: Plane) -> dict:
    """``em_mask`` / ``lm_mask`` (nonzero = no beads there) of
    :func:`~clemalign.fiducials.register_fiducial_case`, read by
    :func:`clemalign.io.read_mask`."""
    from .errors import CaseError
    from .io import read_mask

    masks = {}
    for key, path, plane in (("em", args.moving_mask, em), ("lm", args.fixed_mask, lm)):
        if path is None:
            continue
        _read_raw(Path(path), f"{key} mask")  # names a missing or unreadable file
        try:
            masks[f"{key}_mask"] = read_mask(path, plane.shape, Path(path).name, key)
        except CaseError as error:
            raise InputError(path, error.detail) from error
    return masks


def fiducial_entry(
    outcome: MethodOutcome, em_xy: np.ndarray | None, lm_xy: np.ndarray | None
) -> dict:
    """One method's line of ``summary.json``: status, pairs, FRE (nm) and, with
    landmarks, its landmark errors (:meth:`MethodOutcome.summary`)."""
    if em_xy is not None:
        return outcome.summary(em_xy, lm_xy)
    entry: dict = {"status": outcome.status}
    if outcome.matrix is not None:
        entry |= {"n_matched": len(outcome.pairs_src_um), "fre_nm": outcome.fre_um * 1000.0}
        if outcome.check is not None:
            entry["significance"] = outcome.check.record()
    return entry


def fiducial_answer(result: FiducialCase, em: Plane, lm: Plane) -> Answer:
    """The transform written as ``transform.json``: the first ``ok`` method in
    :data:`FIDUCIAL_PREFERENCE`, else the first ``uncertain`` one, else none
    (:func:`clemalign.export.first_usable`)."""
    from .export import first_usable

    outcomes = result.outcomes
    statuses = {m: o.status for m, o in outcomes.items() if o.matrix is not None}
    method = first_usable(statuses, FIDUCIAL_PREFERENCE)
    if method is not None:
        out = outcomes[method]
        extra = {
            "fiducial_method": method,
            "fre_nm": out.fre_um * 1000.0,
            "n_matched": len(out.pairs_src_um),
            **image_record(em, lm),
        }
        return Answer(out.status, out.matrix, f"fiducials: {method}", extra)
    states = ", ".join(f"{m} {outcomes[m].status.split(':')[0]}" for m in FIDUCIAL_PREFERENCE)
    reason = f"no fiducial method is ok ({states}; the reasons are in summary.json)"
    return Answer(f"failed: {reason}", None, "fiducials")


def print_fiducial_table(summary: dict) -> None:
    """Per method: matched pairs, FRE and (with landmarks) MAE, nm, and the status."""
    beads = summary["beads"]
    print(f"beads found: {beads['em']} in the moving (EM) image, {beads['lm']} in the fixed (LM)")
    print(f"{'method':<18} {'pairs':>5} {'FRE (nm)':>9} {'MAE (nm)':>9}  status")
    for method, entry in summary["methods"].items():
        numbers = [entry.get("n_matched", "-")]
        numbers += [f"{entry[k]:.1f}" if k in entry else "-" for k in ("fre_nm", "mae_nm")]
        print(f"{method:<18} {numbers[0]:>5} {numbers[1]:>9} {numbers[2]:>9}  {entry['status']}")


def write_fiducial_case(
    out: Path, result: FiducialCase, args: argparse.Namespace, em_xy, lm_xy
) -> tuple[dict, list[Path]]:
    """Each method's ``<method>_transform.json`` (as the register_fiducials rule writes
    it), ``summary.json`` and ``pairs.csv``; the summary and the files written."""
    from .fiducials import METHODS
    from .io import write_json

    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "moving": str(args.moving),
        "fixed": str(args.fixed),
        "settings": fiducial_settings(args),
        "beads": {"em": len(result.em_beads.xy_um), "lm": len(result.lm_beads.xy_um)},
        "em_databar_rows": result.em_databar_rows,
        "methods": {},
    }
    written = []
    for method in METHODS:
        outcome = result.outcomes[method]
        write_json(out / f"{method}_transform.json", outcome.transform_record())
        written.append(out / f"{method}_transform.json")
        summary["methods"][method] = fiducial_entry(outcome, em_xy, lm_xy)
    write_json(out / "summary.json", summary)
    result.pairs_table().to_csv(out / "pairs.csv", index=False, float_format="%.6f")
    return summary, [*written, out / "summary.json", out / "pairs.csv"]


def cmd_fiducials(args: argparse.Namespace) -> int:
    """``clemalign fiducials``: see :func:`build_parser`."""
    from .fiducials import register_fiducial_case
    from .io import landmark_points

    progress = Progress(args.quiet)
    lm = read_plane(args.fixed, args.fixed_px_per_um, args.fixed_channel, "fixed")
    em = read_plane(args.moving, args.moving_px_per_um, args.moving_channel, "moving")
    landmarks = _landmarks(args.landmarks, em, lm) if args.landmarks else None
    em_xy, lm_xy = landmark_points(landmarks) if landmarks is not None else (None, None)
    masks = fiducial_masks(args, em, lm)
    settings = fiducial_settings(args)
    with progress.step("detecting beads, matching them (Algorithm 1, baseline, robust mode)"):
        result = register_fiducial_case(
            em.data, em.px_per_um, lm.data, lm.px_per_um, settings, em_xy, **masks
        )
    out = Path(args.output)
    summary, written = write_fiducial_case(out, result, args, em_xy, lm_xy)
    print_fiducial_table(summary)
    answer = fiducial_answer(result, em, lm)
    written += write_answer(out, answer, em, lm, landmarks, progress)
    return report(answer, written, landmark_mae(landmarks, None, answer))


# ------------------------------------------------------------------------------- warp


def cmd_warp(args: argparse.Namespace) -> int:
    """``clemalign warp``: see :func:`build_parser`."""
    progress = Progress(args.quiet)
    moving = read_plane(args.moving, args.moving_px_per_um, args.moving_channel, "moving")
    fixed = read_grid(args.fixed, args.fixed_px_per_um, "fixed")
    transform, record = load_transform(args.transform, moving.px_per_um, fixed.px_per_um)
    note_status(args.transform, record)
    output = Path(args.output)
    with progress.step(f"resampling {moving.path.name} onto the grid of {fixed.path.name}"):
        write_registered(output, transform, moving, fixed, args.order)
    print(
        f"wrote {output} ({fixed.shape[1]} x {fixed.shape[0]} px at {fixed.px_per_um:g} "
        "px/um; NaN outside the moving image)"
    )
    return EXIT_OK


# ----------------------------------------------------------------------------- export


def _image_grid(path: str | None, px_per_um: float | None, role: str) -> tuple:
    """(px/um, (rows, cols)) of an image given on the command line, else (option, None)."""
    if path is None:
        return px_per_um, None
    grid = read_grid(path, px_per_um, role)
    return grid.px_per_um, grid.shape


def export_grids(args: argparse.Namespace) -> dict:
    """Pixel sizes and shapes for ``export``: from the options, the images, or what
    ``clemalign register`` stored in the transform (read after it, see :func:`cmd_export`)."""
    mppu, mshape = _image_grid(args.moving, args.moving_px_per_um, "moving")
    fppu, fshape = _image_grid(args.fixed, args.fixed_px_per_um, "fixed")
    return {
        "moving_px_per_um": mppu,
        "fixed_px_per_um": fppu,
        "moving_shape": mshape,
        "fixed_shape": fshape,
    }


def _need(grids: dict, keys: Sequence[str], what: str, path: str) -> list:
    """The values of ``keys``, or an InputError saying which options give them."""
    missing = [k for k in keys if grids.get(k) is None]
    if missing:
        raise InputError(
            path,
            f"{what} needs {', '.join(missing)}: give --moving and --fixed images "
            "(or --moving-px-per-um / --fixed-px-per-um for pixel sizes)",
        )
    return [grids[k] for k in keys]


def cmd_export(args: argparse.Namespace) -> int:
    """``clemalign export``: see :func:`build_parser`."""
    from .export import bigwarp_grid
    from .formats import write_bigwarp_landmarks, write_ecclem_transform, write_itk_transform

    grids = export_grids(args)
    matrix, record = load_affine(
        args.transform, grids["moving_px_per_um"], grids["fixed_px_per_um"]
    )
    stored = record.get("extra", {})
    grids = {k: v if v is not None else stored.get(k) for k, v in grids.items()}
    path, src = Path(args.output), str(args.transform)
    if args.to == "itk":
        mppu, fppu = _need(grids, ("moving_px_per_um", "fixed_px_per_um"), "ITK", src)
        write_itk_transform(path, matrix, mppu, fppu)
    elif args.to == "ecclem":
        keys = ("moving_px_per_um", "fixed_px_per_um", "moving_shape", "fixed_shape")
        mppu, fppu, mshape, fshape = _need(grids, keys, "ec-CLEM", src)
        write_ecclem_transform(path, matrix, mppu, fppu, tuple(mshape), tuple(fshape))
    else:
        keys = ("moving_px_per_um", "fixed_px_per_um", "moving_shape")
        mppu, fppu, mshape = _need(grids, keys, "BigWarp", src)
        write_bigwarp_landmarks(path, bigwarp_grid(matrix, mppu, mshape), mppu, fppu)
    print(f"wrote {path}")
    return EXIT_OK


# --------------------------------------------------------------------------- evaluate


def landmark_table(matrix: np.ndarray, landmarks: pd.DataFrame) -> tuple[np.ndarray, dict]:
    """Per-landmark errors (um, :func:`clemalign.metrics.landmark_errors_um`) and their
    summary (:func:`clemalign.metrics.mae_std`, max, count)."""
    from .io import landmark_points
    from .metrics import landmark_errors_um, mae_std

    errors = landmark_errors_um(matrix, *landmark_points(landmarks))
    mae, std = mae_std(errors)
    top = float(errors.max()) if errors.size else float("nan")
    return errors, {"n": int(errors.size), "mae_um": mae, "std_um": std, "max_um": top}


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN."""
    return float(value) if np.isfinite(value) else None


def print_errors_json(
    args: argparse.Namespace, landmarks: pd.DataFrame, errors: np.ndarray, stats: dict
) -> None:
    """The landmark errors as JSON (NaN as null)."""
    rows = [
        {"name": n, "error_um": float(e)} for n, e in zip(landmarks["name"], errors, strict=True)
    ]
    stats = {k: v if k == "n" else _finite_or_none(v) for k, v in stats.items()}
    files = {"transform": str(args.transform), "landmarks": str(args.landmarks)}
    print(json.dumps({**files, **stats, "errors": rows}, indent=2))


def print_errors_table(landmarks: pd.DataFrame, errors: np.ndarray, stats: dict) -> None:
    """The landmark errors as a table, then MAE, STD and max (um)."""
    columns = ("em_x_um", "em_y_um", "lm_x_um", "lm_y_um")
    print(f"{'landmark':<12} {'EM x':>9} {'EM y':>9} {'LM x':>9} {'LM y':>9} {'error':>9}  (um)")
    for (_, row), error in zip(landmarks.iterrows(), errors, strict=True):
        coords = " ".join(f"{row[c]:9.3f}" for c in columns)
        print(f"{str(row['name']):<12} {coords} {error:9.3f}")
    print(
        f"{stats['n']} landmarks: MAE {stats['mae_um']:.3f} um, STD {stats['std_um']:.3f} um, "
        f"max {stats['max_um']:.3f} um"
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``clemalign evaluate``: see :func:`build_parser`."""
    from .formats import read_landmarks_any

    matrix, record = load_affine(args.transform, args.moving_px_per_um, args.fixed_px_per_um)
    stored = record.get("extra", {})
    mppu = args.moving_px_per_um or stored.get("moving_px_per_um")
    fppu = args.fixed_px_per_um or stored.get("fixed_px_per_um")
    if not Path(args.landmarks).is_file():
        raise InputError(args.landmarks, "the landmark file does not exist")
    landmarks = read_landmarks_any(args.landmarks, mppu, fppu)
    errors, stats = landmark_table(matrix, landmarks)
    if args.json:
        print_errors_json(args, landmarks, errors, stats)
    else:
        print_errors_table(landmarks, errors, stats)
    return EXIT_OK


# ----------------------------------------------------------------------- learn, predict


def training_case(
    files: Sequence[str], args: argparse.Namespace, progress: Progress
) -> tuple[np.ndarray, np.ndarray]:
    """One training pair as the workflow makes it: :func:`prepare_analogy_pair` (channel,
    common sampling, confocal crop around the TEM), then :func:`training_pair`."""
    from .preprocess import prepare_analogy_pair
    from .training import training_pair

    tem_path, lm_path, landmark_path = files
    tem = read_plane(tem_path, args.moving_px_per_um, args.moving_channel, "moving")
    lm = read_plane(lm_path, args.fixed_px_per_um, args.fixed_channel, "fixed")
    landmarks = _landmarks(landmark_path, tem, lm)
    with progress.step(f"preparing the training pair {tem.path.name} / {lm.path.name}"):
        try:
            pair = prepare_analogy_pair(
                tem.data,
                tem.px_per_um,
                lm.data,
                lm.px_per_um,
                landmarks,
                args.fixed_channel,
                args.px_per_um,
                MARGIN_UM,
            )
        except ValueError as error:  # too few landmarks, a footprint off the confocal
            raise InputError(landmark_path, str(error)) from error
        return training_pair(
            pair.em, pair.lm, pair.px_per_um, pair.landmarks, args.em_intensity, args.alignment
        )


def cmd_learn(args: argparse.Namespace) -> int:
    """``clemalign learn``: see :func:`build_parser`."""
    from .seeds import rng_for
    from .training import learn_joint_dictionary

    progress = Progress(args.quiet)
    pairs = [training_case(files, args, progress) for files in args.pair]
    name = "+".join(Path(files[0]).stem for files in args.pair)
    what = (
        f"learning {args.atoms} atoms from {args.patches} patch pairs of {args.patch_size} x "
        f"{args.patch_size} px (minutes at the paper's sizes)"
    )
    with progress.step(what):
        dictionary = learn_joint_dictionary(
            pairs,
            patch_size=args.patch_size,
            n_patches=args.patches,
            n_atoms=args.atoms,
            lam=args.lam,
            rng=rng_for(args.seed, "dictionary", name),
            tol=args.tol,
            max_iter=args.max_iter,
            training_cases=[str(files[0]) for files in args.pair],
        )
    dictionary.params |= {
        "px_per_um": args.px_per_um,
        "em_intensity": args.em_intensity,
        "training_alignment": args.alignment,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    dictionary.save(output)
    state = "converged" if dictionary.converged else f"stopped after {args.max_iter} passes"
    print(f"wrote {output} ({dictionary.D1.shape[1]} atoms, learning {state})")
    return EXIT_OK


def load_dictionary(path: str | Path) -> JointDictionary:
    """A dictionary written by ``clemalign learn`` or the workflow's learn_dictionary rule."""
    from .sparse_analogy import JointDictionary

    if not Path(path).is_file():
        raise InputError(path, "the dictionary file does not exist")
    try:
        return JointDictionary.load(path)
    except (OSError, ValueError, KeyError) as error:
        raise InputError(path, f"not a clemalign dictionary ({error})") from error


def write_prediction(
    out: Path, predicted: ConfocalPrediction, ppu: float, meta: dict, args: argparse.Namespace
) -> list[Path]:
    """``predicted.tif``, ``uncertainty.tif`` (TEM frame, ``ppu``) and ``prediction.json``."""
    from .io import write_json, write_tiff

    images = {"predicted": predicted.confocal, "uncertainty": predicted.uncertainty}
    for key, image in images.items():
        write_tiff(out / f"{key}.tif", image.astype(np.float32), ppu, meta)
    info = {k: v for k, v in predicted.joint.info.items() if k != "objective"}
    record = {**meta, "px_per_um": ppu, "lambda": args.lam, "gamma": args.gamma, "info": info}
    write_json(out / "prediction.json", record)
    return [out / "predicted.tif", out / "uncertainty.tif", out / "prediction.json"]


def cmd_predict(args: argparse.Namespace) -> int:
    """``clemalign predict``: see :func:`build_parser`."""
    from .sparse_analogy import predict_confocal

    progress = Progress(args.quiet)
    dictionary = load_dictionary(args.dictionary)
    ppu = args.px_per_um or dictionary.params.get("px_per_um", WORKING_PX_PER_UM)
    em_intensity = dictionary.params.get("em_intensity", "inverted")
    tem = read_plane(args.moving, args.moving_px_per_um, args.moving_channel, "moving")
    with progress.step(f"predicting the confocal from the TEM at {ppu:g} px/um (eq. 7)"):
        predicted = predict_confocal(
            working_image(tem, ppu),
            dictionary,
            em_intensity=em_intensity,
            lam=args.lam,
            gamma=args.gamma,
            tol=args.tol,
            max_iter=args.max_iter,
        )
    meta = {"tem": str(tem.path), "dictionary": str(args.dictionary)}
    for path in write_prediction(Path(args.output), predicted, ppu, meta, args):
        print(f"wrote {path}")
    predicted_tif = Path(args.output) / "predicted.tif"
    print(f"next: clemalign register CONFOCAL {predicted_tif} --measure ssd -o OUT/")
    return EXIT_OK


# ----------------------------------------------------------------------------- parser


def _positive(text: str) -> float:
    """A positive number (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (np.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _channel(text: str) -> str | int:
    """A channel name or index (argparse type)."""
    if text.isdigit():
        return int(text)
    if text not in CHANNELS:
        raise argparse.ArgumentTypeError(f"{text!r}: use {', '.join(CHANNELS)} or an index")
    return text


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=34, width=92)


def _add_pixel_sizes(p: argparse._ActionsContainer, fixed_help: str, moving_help: str) -> None:
    """``--fixed-px-per-um`` and ``--moving-px-per-um`` (px/um) on a parser or group."""
    for role, text in (("fixed", fixed_help), ("moving", moving_help)):
        p.add_argument(f"--{role}-px-per-um", type=_positive, metavar="PX_PER_UM", help=text)


def _add_images(p: argparse.ArgumentParser, fixed_channel: str, moving_channel: str) -> None:
    """Pixel-size and channel options of the two images."""
    g = p.add_argument_group("images")
    _add_pixel_sizes(
        g,
        "pixel size of the fixed (LM) image in px/um, when the file has none or a wrong one "
        "(100 nm pixels = 10 px/um)",
        "pixel size of the moving (EM) image in px/um, likewise",
    )
    g.add_argument(
        "--fixed-channel",
        type=_channel,
        default=fixed_channel,
        metavar="CHANNEL",
        help="channel of the fixed image: red, green, blue, gray (luminance) or an "
        f"index from 0 (default: {fixed_channel}; a one-channel image is used as it is)",
    )
    g.add_argument(
        "--moving-channel",
        type=_channel,
        default=moving_channel,
        metavar="CHANNEL",
        help=f"channel of the moving image (default: {moving_channel})",
    )


def _add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress lines on stderr (notes and errors are still printed)",
    )


def _add_register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "register",
        formatter_class=_formatter,
        help="intensity-based affine registration of an EM image to an LM image",
        description=(
            "Register the moving image (EM: TEM/SEM) to the fixed image (LM: confocal) by an\n"
            "affine transform, as the workflow does: both images at a common sampling\n"
            "(--px-per-um), an affine maximising mutual information (mi) or minimising the\n"
            "sum of squared differences (ssd), coarse to fine, from a start that is a\n"
            "transform file (--start), the similarity fitted to landmark pairs (--landmarks),\n"
            "or, with neither, a global search over rotation (+-180 deg), scale (0.85-1.15)\n"
            "and mirror. The answer is then checked: plausible against its start, better\n"
            "than chance (the same registration of 4 structureless surrogates of the moving\n"
            "image), converged; its status is ok, uncertain: <reason> or failed: <reason>.\n\n"
            "writes in OUT/: transform.json (the affine, its status and record),\n"
            "transform.tfm (ITK/SimpleITK/elastix), ecclem.xml (ec-CLEM), registered.tif\n"
            "(the moving image on the fixed image's grid and pixel size, NaN outside), and\n"
            "bigwarp_landmarks.csv (your landmarks for BigWarp; only with --landmarks);\n"
            "with --nonrigid also deformation.json and registered_nonrigid.tif. A failed\n"
            "registration writes transform.json only (matrix null, the rejected matrix kept\n"
            "for diagnosis)."
        ),
        epilog="example:\n  clemalign register confocal.tif tem.tif --landmarks clicks.csv "
        "-o result/\n\n" + UNITS,
    )
    p.add_argument("fixed", metavar="FIXED", help="the light micrograph (LM, fixed), e.g. confocal")
    p.add_argument("moving", metavar="MOVING", help="the electron micrograph (EM, moving)")
    p.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="output folder (created if needed)"
    )
    p.add_argument(
        "--measure",
        choices=("mi", "ssd"),
        default="mi",
        help="mi: mutual information, for any intensity relation (default); ssd: "
        "squared differences, when intensities rise together (use --invert-moving "
        "for a TEM against fluorescence)",
    )
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--start",
        metavar="T.json",
        help="start from this transform (clemalign JSON, e.g. an earlier transform.json)",
    )
    start.add_argument(
        "--landmarks",
        metavar="L.csv",
        help="start from the similarity fitted to these landmark pairs (>= 3): "
        "clemalign CSV (em_x_um, em_y_um, lm_x_um, lm_y_um), BigWarp CSV or "
        "ec-CLEM XML",
    )
    p.add_argument(
        "--invert-moving",
        action="store_true",
        help="register 1 - moving: TEM stains are dark where fluorescence is "
        "bright; needed for ssd and for the global search's correlation "
        "(registered.tif keeps the original intensities)",
    )
    p.add_argument(
        "--search-start",
        action="store_true",
        help="first search about the --start/--landmarks placement (+-18 deg, +-12 %% "
        "scale, 2.5 um: a rough manual placement; as the workflow's "
        "registration.start_search); its correlation needs --invert-moving for a TEM",
    )
    p.add_argument(
        "--nonrigid",
        action="store_true",
        help="add a smooth B-spline deformation (control points every 3.5 um) after the affine",
    )
    p.add_argument(
        "--px-per-um",
        type=_positive,
        default=WORKING_PX_PER_UM,
        metavar="PX_PER_UM",
        help=f"working sampling of the registration, px/um (default "
        f"{WORKING_PX_PER_UM}, the paper's; lower is faster)",
    )
    p.add_argument(
        "--levels",
        type=int,
        default=LEVELS,
        help=f"pyramid levels, coarse to fine (default {LEVELS})",
    )
    p.add_argument(
        "--bins", type=int, default=BINS, help=f"mutual-information histogram bins (default {BINS})"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=SEED,
        help=f"seed of the chance surrogates (default {SEED}); same seed, same result",
    )
    _add_images(p, "green", "gray")
    _add_quiet(p)
    p.set_defaults(handler=cmd_register)


def _add_fiducials(sub: Subparsers) -> None:
    p = sub.add_parser(
        "fiducials",
        formatter_class=_formatter,
        help="register an SEM image to a confocal image by their fiducial beads",
        description=(
            "Detect the beads (fiducials) in both images and register them by the paper's\n"
            "Algorithm 1, the Gaussian-fit baseline and the robust mode (crowds of bead-like\n"
            "spots, tilt, mirror). Every method's answer is checked against chance and for\n"
            "a plausible affine: ok, uncertain: <reason> or failed: <reason>.\n\n"
            "writes in OUT/: <method>_transform.json for algorithm1, gaussian_baseline and\n"
            "robust (matrix null when failed), summary.json (status, matched pairs, FRE,\n"
            "with --landmarks the errors), pairs.csv (matched beads), and for the first ok\n"
            "method of algorithm1, robust, gaussian_baseline: transform.json,\n"
            "transform.tfm, ecclem.xml, registered.tif (as `clemalign register`)."
        ),
        epilog="example:\n  clemalign fiducials confocal_beads.tif sem.tif --bead-nm 100 -o beads/"
        "\n\n" + UNITS,
    )
    p.add_argument("fixed", metavar="FIXED", help="the light micrograph with the beads (fixed)")
    p.add_argument("moving", metavar="MOVING", help="the SEM image with the beads (moving)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    p.add_argument(
        "--bead-nm",
        type=_positive,
        default=100.0,
        metavar="NM",
        help="bead diameter, nm (default 100)",
    )
    p.add_argument(
        "--fixed-psf-nm",
        type=float,
        default=250.0,
        metavar="NM",
        help="lateral resolution (PSF FWHM) of the light microscope, nm (default 250)",
    )
    p.add_argument(
        "--moving-psf-nm",
        type=float,
        default=0.0,
        metavar="NM",
        help="resolution of the SEM, nm (default 0: far below a bead)",
    )
    p.add_argument(
        "--tolerance-um",
        type=_positive,
        default=0.2,
        metavar="UM",
        help="beads correspond when closer than this after a hypothesis, um (default 0.2)",
    )
    p.add_argument(
        "--threshold",
        type=_threshold,
        default="yen",
        help="bead threshold: yen (default), otsu, li, triangle, isodata or a number",
    )
    p.add_argument(
        "--landmarks",
        metavar="L.csv",
        help="known corresponding points (e.g. bead centres) to score every method",
    )
    p.add_argument(
        "--fixed-mask",
        metavar="MASK",
        help="image of the fixed image's size, "
        "nonzero where there are no beads (burned-in markers)",
    )
    p.add_argument("--moving-mask", metavar="MASK", help="the same for the moving image")
    _add_images(p, "gray", "gray")
    _add_quiet(p)
    p.set_defaults(handler=cmd_fiducials)


def _add_warp(sub: Subparsers) -> None:
    p = sub.add_parser(
        "warp",
        formatter_class=_formatter,
        help="resample the moving image onto the fixed image's pixel grid",
        description=(
            "Resample MOVING onto the pixel grid of FIXED through a transform (clemalign\n"
            "transform.json or deformation.json, ITK .tfm, ec-CLEM .xml). The output has the\n"
            "fixed image's size and pixel size, float32, NaN outside the moving image; open\n"
            "it in Fiji together with the fixed image to check the overlay."
        ),
        epilog="example:\n  clemalign warp result/transform.json tem.tif confocal.tif "
        "-o tem_on_lm.tif"
        "\n\n" + UNITS,
    )
    p.add_argument("transform", metavar="T.json", help="the transform (moving um -> fixed um)")
    p.add_argument("moving", metavar="MOVING", help="the image to resample (EM)")
    p.add_argument("fixed", metavar="FIXED", help="the image whose grid to use (LM)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.tif", help="output TIFF")
    p.add_argument(
        "--order",
        type=int,
        default=1,
        choices=(0, 1, 3),
        help="interpolation: 0 nearest (labels), 1 linear (default), 3 cubic",
    )
    _add_images(p, "gray", "gray")
    _add_quiet(p)
    p.set_defaults(handler=cmd_warp)


def _add_export(sub: Subparsers) -> None:
    p = sub.add_parser(
        "export",
        formatter_class=_formatter,
        help="write a transform for ITK/elastix, BigWarp or ec-CLEM",
        description=(
            "Write an affine transform for another tool. Each tool places the pixel grid\n"
            "differently, so the pixel sizes (and for ec-CLEM and BigWarp the image sizes)\n"
            "are needed: from --moving/--fixed images, from --moving-px-per-um /\n"
            "--fixed-px-per-um, or from what `clemalign register` stored in transform.json.\n\n"
            "  itk     ITK text transform (.tfm/.txt) for SimpleITK, ITK, elastix, ANTs\n"
            "  ecclem  ec-CLEM (Icy) transformation XML\n"
            "  bigwarp BigWarp (Fiji) landmarks CSV: 9 corresponding points on a 3 x 3 grid\n"
            "          over the moving field, from which BigWarp reproduces the affine exactly"
        ),
        epilog="example:\n  clemalign export result/transform.json --to itk -o tem_to_lm.tfm\n\n"
        + UNITS,
    )
    p.add_argument("transform", metavar="T.json", help="the transform (moving um -> fixed um)")
    p.add_argument(
        "--to", required=True, choices=("itk", "bigwarp", "ecclem"), help="target format"
    )
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="output file")
    p.add_argument("--moving", metavar="MOVING", help="the moving (EM) image (size, pixel size)")
    p.add_argument("--fixed", metavar="FIXED", help="the fixed (LM) image (size, pixel size)")
    _add_pixel_sizes(
        p, "pixel size of the fixed image, px/um", "pixel size of the moving image, px/um"
    )
    p.set_defaults(handler=cmd_export)


def _add_evaluate(sub: Subparsers) -> None:
    p = sub.add_parser(
        "evaluate",
        formatter_class=_formatter,
        help="landmark errors of a transform",
        description=(
            "Map every moving landmark through the transform and measure its distance to its\n"
            "fixed partner (um): a table, then the mean absolute error (MAE), its standard\n"
            "deviation (STD) and the largest error, as the paper's tables report them. Use\n"
            "landmarks the registration did not see (a start fitted to the same landmarks\n"
            "is not an independent check)."
        ),
        epilog="example:\n  clemalign evaluate result/transform.json check_points.csv --json\n\n"
        + UNITS,
    )
    p.add_argument("transform", metavar="T.json", help="the transform (moving um -> fixed um)")
    p.add_argument(
        "landmarks",
        metavar="LANDMARKS",
        help="landmark pairs: clemalign CSV, BigWarp CSV (needs pixel sizes) or ec-CLEM XML",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_pixel_sizes(
        p,
        "pixel size of the fixed image, px/um",
        "pixel size of the moving image, px/um (BigWarp files, ITK transforms)",
    )
    p.set_defaults(handler=cmd_evaluate)


def _add_learn(sub: Subparsers) -> None:
    p = sub.add_parser(
        "learn",
        formatter_class=_formatter,
        help="learn a joint TEM/confocal dictionary from training pairs (sparse analogies)",
        description=(
            "Learn the joint TEM/confocal dictionary of the sparse image analogies (the\n"
            "paper's eq. 8) from training pairs: each pair is brought to the working\n"
            "sampling (--px-per-um), the confocal cropped around the TEM by the similarity\n"
            "fitted to its landmarks and aligned to the TEM (the landmark affine refined by\n"
            "mutual information, --alignment); paired patches are drawn and the atoms\n"
            "learned. The paper's sizes (900 atoms, 10000 patches of 15 x 15 px) take\n"
            "minutes. Use pairs other than the one you will predict.\n\n"
            "writes DICT.npz (with its settings; `clemalign predict` reads them)."
        ),
        epilog="example:\n  clemalign learn --pair tem1.tif confocal1.tif clicks1.csv \\\n"
        "                  --pair tem2.tif confocal2.tif clicks2.csv -o dictionary.npz\n\n" + UNITS,
    )
    p.add_argument(
        "--pair",
        nargs=3,
        action="append",
        required=True,
        metavar=("TEM", "CONFOCAL", "LANDMARKS"),
        help="one training pair and its landmark pairs (>= 3, um); repeat for more",
    )
    p.add_argument("-o", "--output", required=True, metavar="DICT.npz", help="output file")
    p.add_argument(
        "--px-per-um",
        type=_positive,
        default=WORKING_PX_PER_UM,
        metavar="PX_PER_UM",
        help=f"working sampling, px/um (default {WORKING_PX_PER_UM})",
    )
    p.add_argument("--patch-size", type=int, default=15, help="patch side, px (default 15)")
    p.add_argument("--patches", type=int, default=10000, help="patch pairs (default 10000)")
    p.add_argument("--atoms", type=int, default=900, help="dictionary atoms (default 900)")
    p.add_argument(
        "--lambda",
        dest="lam",
        type=_positive,
        default=1.0,
        help="sparsity weight of eq. 8 (default 1)",
    )
    p.add_argument(
        "--em-intensity",
        choices=("inverted", "raw"),
        default="inverted",
        help="code the TEM inverted (1 - TEM: dark stain, bright dye; default) or raw",
    )
    p.add_argument(
        "--alignment",
        choices=("registered", "landmarks"),
        default="registered",
        help="training pairs aligned by the landmark affine refined by MI "
        "(default) or by the landmark affine only (the paper)",
    )
    p.add_argument("--max-iter", type=int, default=40, help="learning passes at most (40)")
    p.add_argument(
        "--tol",
        type=_positive,
        default=2e-4,
        help="stop when a pass lowers the objective by less than this fraction",
    )
    p.add_argument("--seed", type=int, default=SEED, help=f"random seed (default {SEED})")
    _add_images(p, "green", "gray")
    _add_quiet(p)
    p.set_defaults(handler=cmd_learn)


def _add_predict(sub: Subparsers) -> None:
    p = sub.add_parser(
        "predict",
        formatter_class=_formatter,
        help="predict the confocal image from a TEM image with a learned dictionary",
        description=(
            "Predict the confocal image from a TEM image (the paper's eq. 7) with a\n"
            "dictionary from `clemalign learn`, at the dictionary's sampling. The prediction\n"
            "lives on the TEM's frame (um), so registering it to the real confocal\n"
            "(`clemalign register CONFOCAL OUT/predicted.tif --measure ssd`) gives the\n"
            "transform of the TEM itself.\n\n"
            "writes in OUT/: predicted.tif (float32 in [0, 1]), uncertainty.tif (spread of\n"
            "the overlapping patch predictions, [0, 1]) and prediction.json."
        ),
        epilog="example:\n  clemalign predict dictionary.npz tem3.tif -o predicted/\n\n" + UNITS,
    )
    p.add_argument("dictionary", metavar="DICT.npz", help="from `clemalign learn`")
    p.add_argument("moving", metavar="TEM", help="the TEM image")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    p.add_argument(
        "--px-per-um",
        type=_positive,
        metavar="PX_PER_UM",
        help=f"working sampling, px/um (default: the dictionary's, else {WORKING_PX_PER_UM})",
    )
    p.add_argument(
        "--lambda",
        dest="lam",
        type=_positive,
        default=1.0,
        help="sparsity weight of eq. 7 (default 1)",
    )
    p.add_argument("--gamma", type=_positive, default=0.01, help="gamma of eq. 7 (default 0.01)")
    p.add_argument("--max-iter", type=int, default=40, help="eq. 7 iterations at most (40)")
    p.add_argument(
        "--tol",
        type=_positive,
        default=1e-6,
        help="stop when the objective changes by less than this fraction",
    )
    p.add_argument(
        "--moving-px-per-um",
        type=_positive,
        metavar="PX_PER_UM",
        help="pixel size of the TEM in px/um, when the file has none",
    )
    p.add_argument(
        "--moving-channel",
        type=_channel,
        default="gray",
        metavar="CHANNEL",
        help="channel of the TEM image (default: gray)",
    )
    _add_quiet(p)
    p.set_defaults(handler=cmd_predict)


def build_parser() -> argparse.ArgumentParser:
    """The ``clemalign`` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="clemalign",
        formatter_class=_formatter,
        description=(
            "Register electron micrographs (EM: TEM/SEM, the moving image) to light\n"
            "micrographs (LM: confocal, the fixed image), one step at a time, with the\n"
            "clemalign workflow's methods and defaults. `clemalign COMMAND --help` for more."
        ),
        epilog=UNITS,
    )
    parser.add_argument("--version", action="version", version=f"clemalign {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = (_add_register, _add_fiducials, _add_warp, _add_export, _add_evaluate)
    for add in (*commands, _add_learn, _add_predict):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``clemalign`` command.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 ok; 1 the step ran but its result is failed or uncertain; 2 bad input (the
        message, on stderr, names the file and the problem).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, usage errors (argparse says why)
        return stop.code if isinstance(stop.code, int) else EXIT_BAD_INPUT
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"clemalign {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of stdout stopped early (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (ClemalignError, FileNotFoundError, ValueError, OSError) as error:
        print(f"clemalign {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
