"""Preprocessing: channel selection, cropping and anti-aliased resampling in um.

The analogy track brings a TEM image and a confocal image into a common sampling
(14.52 px/um in the paper, sec. 5.3): the TEM field is resampled whole; the confocal is
cropped to the region that the TEM field covers (found through a similarity fitted to
the manual landmarks, the paper's rough start) plus a margin, and resampled too. Each
image keeps its own physical frame: the TEM frame (um from its corner) and the crop
frame (um from the crop's corner); the rough start maps one onto the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from .checks import finite_pixels, min_size, not_constant, pixel_shape, unit_range
from .errors import CaseError
from .formats import read_landmarks_any
from .io import landmark_points, read_image, tiff_axes
from .transforms import (
    DeformationField,
    Transform,
    apply,
    fit_similarity,
    px_to_um,
    translation_matrix,
    um_to_px,
)

CHANNELS = {"red": 0, "green": 1, "blue": 2}

#: Fewest landmark pairs of an analogy case (rough start and evaluation).
MIN_ANALOGY_LANDMARKS = 3


def select_channel(image: np.ndarray, channel: str | int) -> np.ndarray:
    """Return one channel of a colour image as a 2D array.

    Parameters
    ----------
    image : ndarray
        (rows, cols), (rows, cols, C) with C <= 4, or (C, rows, cols) with C <= 4.
    channel : {'red', 'green', 'blue', 'gray'} or int
        Channel to keep. ``'gray'`` takes the luminance of a colour image (float32;
        integer channels are scaled to [0, 1] first) and passes a 2D image through. A
        2D image is returned as it is for any channel (a single channel file is taken to
        be the stain channel).

    Raises
    ------
    ValueError
        Unknown channel name, or an index the image does not have.
    """
    image = np.asarray(image)
    if isinstance(channel, str) and channel not in (*CHANNELS, "gray"):
        raise ValueError(f"unknown channel {channel!r}; use red, green, blue, gray or an index")
    if image.ndim == 2:
        return image
    if image.ndim != 3:
        raise ValueError(f"expected a 2D or colour image, got shape {image.shape}")
    channels_last = image.shape[-1] <= 4
    if not channels_last and image.shape[0] > 4:
        raise ValueError(f"cannot tell the channel axis of an image of shape {image.shape}")
    stack = image if channels_last else np.moveaxis(image, 0, -1)
    if channel == "gray":
        if stack.shape[-1] < 3:
            return stack[..., 0]
        weights = np.array([0.2125, 0.7154, 0.0721])  # of [0, 1] values: integers scaled first
        return (to_unit_float(stack[..., :3]) @ weights).astype(np.float32)
    idx = CHANNELS[channel] if isinstance(channel, str) else int(channel)
    if not 0 <= idx < stack.shape[-1]:
        raise ValueError(
            f"channel {channel!r} (index {idx}) not in an image with {stack.shape[-1]} channels"
        )
    return stack[..., idx]


#: Axis letters tifffile uses for planes of a stack that are not channels.
_STACK_AXES = "ZTQI"


def project_z(image: np.ndarray, axes: str | None, z: str | int = "max") -> np.ndarray:
    """Reduce a z-stack to one plane: maximum projection or one slice.

    Parameters
    ----------
    image : ndarray
        Image as read. Stack axes are found from ``axes``; without axis letters, a 3D
        image whose first axis is longer than 4 is taken as a stack of planes (ZYX).
    axes : str or None
        tifffile's axis letters of ``image`` (``"ZYX"``, ``"ZCYX"``, ``"YXS"``...).
    z : 'max' or int
        ``'max'``: maximum intensity projection over every stack axis (beads in focus in
        any plane, dtype kept, 16-bit included); an int: that plane (0-based) of the
        single stack axis.

    Returns
    -------
    ndarray
        The image without stack axes (rows, cols[, channels]).

    Raises
    ------
    ValueError
        A slice outside the stack, or a slice of a stack with several stack axes.
    """
    image = np.asarray(image)
    if axes is None or len(axes) != image.ndim:
        axes = "ZYX" if image.ndim == 3 and image.shape[0] > 4 and image.shape[-1] > 4 else ""
    stack = tuple(i for i, a in enumerate(axes) if a in _STACK_AXES)
    if not stack:
        return image
    if z == "max":
        return image.max(axis=stack)
    if len(stack) != 1 or not 0 <= int(z) < image.shape[stack[0]]:
        raise ValueError(
            f"z slice {z} is not in a stack of shape {image.shape} (axes {axes}); "
            f"use 'max' or 0..{image.shape[stack[0]] - 1}"
        )
    return np.take(image, int(z), axis=stack[0])


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """Scale an integer image by its dtype's maximum to float32 in [0, 1]; floats pass."""
    image = np.asarray(image)
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
    if image.dtype == np.bool_:
        return image.astype(np.float32)
    return image.astype(np.float32, copy=False)


def resample(
    image: np.ndarray,
    px_per_um: float,
    out_px_per_um: float,
    origin_um: tuple[float, float] = (0.0, 0.0),
    size_um: tuple[float, float] | None = None,
    order: int = 3,
) -> np.ndarray:
    """Sample a 2D image on a new grid, with anti-aliasing when it shrinks.

    The output pixel ``(i, j)`` has its centre at
    ``x = origin_x + (j + 0.5) / out_px_per_um``, ``y = origin_y + (i + 0.5) / out_px_per_um``
    (um, in the input's frame), so physical positions are kept exactly.

    Downsampling by a factor ``f`` low-passes with a Gaussian of sigma ``(f - 1) / 2``
    input px (scikit-image's anti-aliasing), separably and decimating by ``f // 2``
    after each pass (8000 x 8000 TEM images need one float32 copy), then interpolates
    with a cubic spline.

    Parameters
    ----------
    image : ndarray
        2D input.
    px_per_um, out_px_per_um : float
        Input and output sampling, px/um.
    origin_um : (float, float)
        (x, y) of the output's outer corner in the input frame, um.
    size_um : (float, float), optional
        (width, height) of the output in um (default: the whole input from the origin).
        The output has ``round(size * out_px_per_um)`` pixels per axis.
    order : int
        Spline order of the final interpolation.

    Returns
    -------
    ndarray of float32
        Values outside the input take the nearest edge value.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"resample expects a 2D image, got shape {image.shape}")
    if px_per_um <= 0 or out_px_per_um <= 0:
        raise ValueError(f"pixel sizes must be positive: {px_per_um}, {out_px_per_um}")
    if size_um is None:
        size_um = (
            image.shape[1] / px_per_um - origin_um[0],
            image.shape[0] / px_per_um - origin_um[1],
        )
    n_cols = max(1, int(round(size_um[0] * out_px_per_um)))
    n_rows = max(1, int(round(size_um[1] * out_px_per_um)))

    factor = float(px_per_um) / out_px_per_um
    step = 1
    if factor > 1.0 + 1e-9:
        # Gaussian low-pass (sigma in input px), one axis at a time, keeping every
        # `step`-th row/column after each pass: the filtered signal has no content
        # above 1/factor cycles/px, so a step of factor/2 loses nothing, and an
        # 8000 x 8000 TEM never needs more than one float32 copy.
        sigma = (factor - 1.0) / 2.0
        step = max(1, int(factor // 2))
        work = ndimage.gaussian_filter1d(image, sigma, axis=0, output=np.float32, mode="reflect")
        work = ndimage.gaussian_filter1d(work[::step], sigma, axis=1, mode="reflect")
        work = np.ascontiguousarray(work[:, ::step])
    else:
        work = np.asarray(image, dtype=np.float32)

    x = origin_um[0] + px_to_um(np.arange(n_cols), out_px_per_um)
    y = origin_um[1] + px_to_um(np.arange(n_rows), out_px_per_um)
    # Input pixel index p = y * ppu - 0.5; after decimation by `step`, index p / step.
    rows = um_to_px(y, px_per_um) / step
    cols = um_to_px(x, px_per_um) / step
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    out = ndimage.map_coordinates(work, [rr, cc], order=order, mode="nearest")
    if order > 1:  # splines overshoot at edges; keep the input's range
        out = np.clip(out, work.min(), work.max())
    return out.astype(np.float32)


@dataclass
class PreparedPair:
    """A TEM/confocal pair in the common sampling, ready for the analogy track.

    Attributes
    ----------
    em, lm : ndarray of float32
        TEM (moving) and confocal channel (fixed) in [0, 1], at ``px_per_um``.
    px_per_um : float
        Common sampling.
    landmarks : pandas.DataFrame
        ``em_*`` in the TEM frame, ``lm_*`` in the crop frame (um).
    start : Transform
        Rough similarity, TEM frame -> crop frame (um).
    crop_origin_um : (float, float)
        (x, y) of the crop's corner in the original confocal frame (um).
    crop_size_um : (float, float)
        (width, height) of the crop, um.
    """

    em: np.ndarray
    lm: np.ndarray
    px_per_um: float
    landmarks: pd.DataFrame
    start: Transform
    crop_origin_um: tuple[float, float]
    crop_size_um: tuple[float, float]

    def lm_frame_from_confocal(self) -> np.ndarray:
        """3x3 matrix mapping original confocal um to crop-frame um."""
        return translation_matrix(-self.crop_origin_um[0], -self.crop_origin_um[1])

    def frame_record(self, ground_truth: dict | None = None) -> dict:
        """What ``frame.json`` says about this pair: sampling, shapes, the crop, and the
        ground truth (a synthetic case's ``ground_truth.json``) mapped into the crop frame.

        Parameters
        ----------
        ground_truth : dict, optional
            ``transform`` (raw TEM um -> raw confocal um) and, for the realistic phantom,
            ``deformation`` (:class:`clemalign.transforms.DeformationField` as dict).
        """
        record = {
            "em_px_per_um": self.px_per_um,
            "lm_px_per_um": self.px_per_um,
            "em_shape": self.em.shape,
            "lm_shape": self.lm.shape,
            "lm_crop_origin_um": self.crop_origin_um,
            "lm_crop_size_um": self.crop_size_um,
        }
        if ground_truth is None:
            return record
        to_crop = self.lm_frame_from_confocal()
        record["ground_truth"] = Transform(
            to_crop @ Transform.from_dict(ground_truth["transform"]).matrix,
            "em (TEM frame)",
            "lm (crop frame)",
            "ground truth mapped into the crop frame",
        ).to_dict()
        if "deformation" in ground_truth:
            field = DeformationField.from_dict(ground_truth["deformation"]).then(to_crop)
            record["ground_truth"]["method"] += " (least-squares affine of the field)"
            record["ground_truth_field"] = field.to_dict()
            record["nonrigid_floor_rms_um"] = field.floor_rms_um()
        return record


def crop_box_um(
    footprint_xy_um: np.ndarray,
    margin_um: float,
    field_um: tuple[float, float],
    px_per_um: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The crop around a footprint: its (x, y) corners ``lo`` and ``hi`` (um), the
    footprint's bounding box plus ``margin_um`` clipped to the image's ``field_um``
    (width, height), and the crop's ``size`` (um) snapped to a whole number of pixels at
    ``px_per_um``."""
    lo = np.maximum(np.min(footprint_xy_um, axis=0) - margin_um, 0.0)
    hi = np.minimum(np.max(footprint_xy_um, axis=0) + margin_um, np.asarray(field_um, float))
    return lo, hi, np.round((hi - lo) * px_per_um) / px_per_um


def prepare_analogy_pair(
    em: np.ndarray,
    em_px_per_um: float,
    lm: np.ndarray,
    lm_px_per_um: float,
    landmarks: pd.DataFrame,
    channel: str | int = "green",
    px_per_um: float = 14.52,
    margin_um: float = 3.0,
) -> PreparedPair:
    """Resample a TEM/confocal pair to a common sampling with the rough similarity start.

    Parameters
    ----------
    em : ndarray
        TEM image (2D; colour is reduced to luminance), ``em_px_per_um``.
    lm : ndarray
        Confocal image (2D or colour), ``lm_px_per_um``.
    landmarks : pandas.DataFrame
        Manual landmark pairs (``em_*`` TEM um, ``lm_*`` confocal um), at least 3.
    channel : str or int
        Confocal channel to keep (paper: green).
    px_per_um : float
        Common sampling (paper: 14.52 px/um).
    margin_um : float
        Margin around the TEM field's footprint in the confocal, um.

    Returns
    -------
    PreparedPair

    Raises
    ------
    ValueError
        Too few landmarks, or a TEM footprint that misses the confocal image.
    """
    if len(landmarks) < MIN_ANALOGY_LANDMARKS:
        raise ValueError(
            f"need at least {MIN_ANALOGY_LANDMARKS} landmark pairs, got {len(landmarks)}: two "
            "fit a mirrored similarity as well as the true one, and the evaluation fits an affine"
        )
    em_xy, lm_xy = landmark_points(landmarks)
    similarity = fit_similarity(em_xy, lm_xy)

    em2d = to_unit_float(select_channel(em, "gray"))
    lm2d = to_unit_float(select_channel(lm, channel))
    em_w, em_h = em2d.shape[1] / em_px_per_um, em2d.shape[0] / em_px_per_um
    lm_w, lm_h = lm2d.shape[1] / lm_px_per_um, lm2d.shape[0] / lm_px_per_um

    footprint = apply(similarity, np.array([[0, 0], [em_w, 0], [0, em_h], [em_w, em_h]]))
    lo, hi, size = crop_box_um(footprint, margin_um, (lm_w, lm_h), px_per_um)
    if np.any(hi - lo <= 1.0 / px_per_um):
        raise ValueError(
            f"the TEM field mapped by the landmark similarity ({footprint.min(0).round(2)} to "
            f"{footprint.max(0).round(2)} um) does not overlap the confocal image "
            f"(0..{lm_w:.2f} x 0..{lm_h:.2f} um); check the landmark file"
        )
    origin = (float(lo[0]), float(lo[1]))

    em_out = resample(em2d, em_px_per_um, px_per_um)
    lm_out = resample(lm2d, lm_px_per_um, px_per_um, origin_um=origin, size_um=tuple(size))

    to_crop = translation_matrix(-origin[0], -origin[1])
    lm_crop = apply(to_crop, lm_xy)
    table = landmarks.copy()
    table["lm_x_um"], table["lm_y_um"] = lm_crop[:, 0], lm_crop[:, 1]
    start = Transform(
        to_crop @ similarity,
        moving="em (TEM frame)",
        fixed="lm (crop frame)",
        method="similarity least-squares fit to the manual landmarks",
    )
    return PreparedPair(
        em_out, lm_out, float(px_per_um), table, start, origin, (float(size[0]), float(size[1]))
    )


@dataclass
class CaseInputs:
    """Raw images of a case with their pixel sizes (px/um) and landmark pairs (um).

    Attributes
    ----------
    em, lm : ndarray
        The images as read (a z-stack reduced to one plane), or, when
        :mod:`clemalign.checks` repaired or rescaled one, that image as float32 in [0, 1]
        (same shape and channels).
    em_px_per_um, lm_px_per_um : float
        Sampling, px/um.
    landmarks : pandas.DataFrame
        Landmark pairs, um.
    notes : list of str
        What the checks repaired or rescaled, one sentence each naming the case and the
        file; empty for clean inputs. Callers log them as warnings.
    em_invalid, lm_invalid : ndarray of bool or None
        (rows, cols) px that were NaN/inf in the file and now hold a neutral fill value
        (None: none were).
    """

    em: np.ndarray
    em_px_per_um: float
    lm: np.ndarray
    lm_px_per_um: float
    landmarks: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    em_invalid: np.ndarray | None = None
    lm_invalid: np.ndarray | None = None


def _image_with_size(
    case: str, path: str, override: float | None, role: str, z: str | int = "max"
) -> tuple[np.ndarray, float]:
    try:
        image, from_file = read_image(path)
        image = project_z(image, tiff_axes(path), z)
    except Exception as error:  # noqa: BLE001 - any read failure names the case and file
        raise CaseError(case, f"cannot read the {role} image: {error}", path) from error
    ppu = override if override is not None else from_file
    if ppu is None:
        raise CaseError(
            case,
            f"the {role} image has no pixel size in the file; give "
            f"{role}_px_per_um in the case sheet",
            path,
        )
    if not (np.isfinite(ppu) and ppu > 0):
        raise CaseError(case, f"the {role} pixel size {ppu!r} px/um is not positive", path)
    return image, float(ppu)


def _for_role(value: object, role: str) -> object:
    """``value[role]`` of a per-image mapping, else ``value`` itself."""
    return value.get(role) if isinstance(value, Mapping) else value


def _checked_image(
    name: str,
    path: str,
    image: np.ndarray,
    ppu: float,
    role: str,
    channel: str | int,
    minimum_um: float | None,
    minimum_what: str,
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """One image through :mod:`clemalign.checks`: size, finite, not constant, range.

    Returns the image itself when it needed nothing (so clean inputs stay bitwise what
    the file holds), else the repaired float32 image in [0, 1]; the mask of filled
    pixels; and the notes.
    """
    if minimum_um is not None:
        min_size(pixel_shape(image), ppu, float(minimum_um), name, path, role, minimum_what)
    repaired, invalid, finite_note = finite_pixels(image, name, path, role)
    try:  # the plane the analysis will use: a constant channel is what matters
        plane = select_channel(repaired, channel)
    except ValueError:  # a bad channel is reported where it is used
        plane = repaired
    not_constant(plane, name, path, role, channel if repaired.ndim == 3 else None, invalid)
    scaled, range_note = unit_range(repaired, name, path, role)
    notes = [n for n in (finite_note, range_note) if n is not None]
    return (scaled if notes else image), invalid, notes


def load_case_inputs(
    case: dict,
    min_size_um: float | Mapping[str, float] | None = None,
    min_size_what: str | Mapping[str, str] | None = None,
) -> CaseInputs:
    """Read a case's images and landmarks, checking the images and that they fit together.

    Landmarks may be our CSV, a BigWarp landmark CSV (EM = moving) or an ec-CLEM XML
    (EM = source), recognised from the content
    (:func:`clemalign.formats.read_landmarks_any`).

    Each image goes through :mod:`clemalign.checks`: :func:`~clemalign.checks.min_size`
    (when ``min_size_um`` is given), :func:`~clemalign.checks.finite_pixels` (a few
    NaN/inf pixels are filled with the median, more are refused),
    :func:`~clemalign.checks.not_constant` (on the plane the analysis uses: the EM's
    luminance, the LM's ``channel``) and :func:`~clemalign.checks.unit_range` (a float
    image outside [0, 1] is rescaled by the stated rule). Repairs are listed in
    :attr:`CaseInputs.notes`; clean images come back exactly as read.

    Parameters
    ----------
    case : dict
        A :class:`clemalign.cases.Case` as dict (``name, em, lm, landmarks,
        em_px_per_um, lm_px_per_um, lm_z, channel``...). Z-stacks become one plane
        (:func:`project_z`: the EM's by maximum projection, the LM's as ``lm_z`` says).
    min_size_um : float or mapping, optional
        Smallest width and height of an image, um, or ``{'em': ..., 'lm': ...}`` (a
        missing role is not checked). None: no size check.
    min_size_what : str or mapping, optional
        What that minimum is, for the message (``"one 15 x 15 px patch at 14.52 px/um"``),
        or one per role.

    Raises
    ------
    CaseError
        Unreadable file, missing pixel size, an image smaller than ``min_size_um``, more
        than 5 % NaN/inf pixels, a constant image (or channel), or landmarks outside their
        image (which usually means pixel coordinates where um were expected).
    """

    name = case["name"]
    em, em_ppu = _image_with_size(name, case["em"], case.get("em_px_per_um"), "em")
    lm, lm_ppu = _image_with_size(
        name, case["lm"], case.get("lm_px_per_um"), "lm", case.get("lm_z", "max")
    )
    try:
        landmarks = read_landmarks_any(case["landmarks"], em_ppu, lm_ppu)
    except Exception as error:  # noqa: BLE001
        raise CaseError(name, f"bad landmark file: {error}", case["landmarks"]) from error
    notes: list[str] = []
    invalid: dict[str, np.ndarray | None] = {}
    checked: dict[str, np.ndarray] = {}
    for role, image, ppu, channel in (
        ("em", em, em_ppu, "gray"),
        ("lm", lm, lm_ppu, case.get("channel", "green")),
    ):
        what = _for_role(min_size_what, role) or "the smallest image the registration can use"
        checked[role], invalid[role], found = _checked_image(
            name, case[role], image, ppu, role, channel, _for_role(min_size_um, role), what
        )
        notes.extend(found)
    for role, image, ppu in (("em", em, em_ppu), ("lm", lm, lm_ppu)):
        rows, cols = image.shape[:2] if image.ndim == 2 or image.shape[-1] <= 4 else image.shape[1:]
        extent = np.array([cols, rows]) / ppu
        xy = landmarks[[f"{role}_x_um", f"{role}_y_um"]].to_numpy(float)
        outside = np.any((xy < -0.05 * extent) | (xy > 1.05 * extent), axis=1)
        if outside.any():
            bad = landmarks.loc[outside, "name"].tolist()
            which = (
                f"all {len(bad)} landmarks" if len(bad) == len(landmarks) else f"landmarks {bad}"
            )
            raise CaseError(
                name,
                f"{which} lie outside the {role} image "
                f"({extent[0]:.2f} x {extent[1]:.2f} um at {ppu:.4g} px/um); "
                "landmark coordinates must be in um, not pixels",
                case["landmarks"],
            )
    em, lm = checked["em"], checked["lm"]
    return CaseInputs(em, em_ppu, lm, lm_ppu, landmarks, notes, invalid["em"], invalid["lm"])


def minimum_size_um(
    case: dict, patch_size: int, px_per_um: float, fiducials: Mapping[str, float]
) -> tuple[float | dict[str, float], str]:
    """The smallest image a case's track can use, um (per role for fiducial cases), and
    what that minimum is, for :func:`load_case_inputs`.

    Analogy cases need one ``patch_size`` patch at the working ``px_per_um``; fiducial
    cases one bead-fitting window (3 apparent bead diameters, from ``fiducials``:
    ``bead_diameter_nm``, ``em_psf_fwhm_nm``, ``lm_psf_fwhm_nm``).
    """
    if case["track"] == "analogy":
        return (
            patch_size / px_per_um,
            f"one {patch_size} x {patch_size} px patch at {px_per_um} px/um",
        )
    from .fiducials import apparent_diameter_um  # here only: the fiducial track's 2 s import

    bead = fiducials["bead_diameter_nm"] / 1000.0
    window = {
        role: 3.0 * apparent_diameter_um(bead, fiducials[f"{role}_psf_fwhm_nm"] / 1000.0)
        for role in ("em", "lm")
    }
    return window, "one bead-fitting window (3 apparent bead diameters)"


def case_check(
    case: dict,
    patch_size: int,
    preprocess: Mapping[str, float],
    fiducials: Mapping[str, float],
) -> dict:
    """Can a case be used? Everything preprocessing would refuse, found before any work.

    Reads the case's files and checks them as :func:`load_case_inputs` does (with the
    track's :func:`minimum_size_um`); an analogy case is also prepared
    (:func:`prepare_analogy_pair`: 3 landmarks, a TEM footprint on the confocal).

    Parameters
    ----------
    case : dict
        A :class:`clemalign.cases.Case` as dict.
    patch_size : int
        Analogy patch side, px.
    preprocess : mapping
        ``px_per_um`` (working sampling) and ``margin_um``.
    fiducials : mapping
        Bead size and PSFs (see :func:`minimum_size_um`).

    Returns
    -------
    dict
        ``case, track, status`` (``ok`` or ``failed: <what is wrong, naming the case and
        the file>``) and ``notes`` (what the checks repaired). Bad input never raises.
    """
    name = case["name"]
    record = {"case": name, "track": case["track"], "status": "ok", "notes": []}
    for role in ("em", "lm", "landmarks", "em_mask", "lm_mask", "ground_truth"):
        if case.get(role) and not Path(case[role]).is_file():
            record["status"] = (
                f"failed: {CaseError(name, f'the {role} file is missing', case[role])}"
            )
            return record
    try:
        minimum = minimum_size_um(case, patch_size, preprocess["px_per_um"], fiducials)
        raw = load_case_inputs(case, *minimum)
        record["notes"] = raw.notes
        if case["track"] == "analogy":
            try:
                prepare_analogy_pair(
                    raw.em,
                    raw.em_px_per_um,
                    raw.lm,
                    raw.lm_px_per_um,
                    raw.landmarks,
                    case["channel"],
                    preprocess["px_per_um"],
                    preprocess["margin_um"],
                )
            except ValueError as error:  # too few landmarks, or a footprint off the confocal
                raise CaseError(name, str(error), case["landmarks"]) from error
    except CaseError as error:
        record["status"] = f"failed: {error}"
    except (FileNotFoundError, ValueError, OSError) as error:
        record["status"] = f"failed: {CaseError(name, str(error))}"
    return record
