"""Checks of an input image before it is used: big enough, finite, not constant, in [0, 1].

Each check passes a good image on untouched, repairs a repairable one and says so in a
*note* (one sentence worded like a :class:`clemalign.errors.CaseError`: it names the
case, the file, what was found and what was done), or refuses the image with a
:class:`~clemalign.errors.CaseError` naming the case, the file and the problem.
:func:`clemalign.preprocess.load_case_inputs` runs them on both images of every case in
the order :func:`min_size` -> :func:`finite_pixels` -> :func:`not_constant` ->
:func:`unit_range`.

Rules and thresholds
--------------------
Non-finite pixels (NaN, +inf, -inf; only float images can hold them)
    Up to :data:`MAX_NONFINITE_FRACTION` (5 %) of the pixels: each is set to the median of
    the finite pixels (per channel) and reported with its count and bounding box; the
    mask of those pixels is returned so that callers can leave them out. A NaN would
    otherwise spread: anti-aliased resampling (Gaussian low-pass, then a cubic spline
    whose prefilter runs along whole rows) turns one NaN into a NaN image. The median is
    a value the image already holds, so the filled area neither adds an edge nor moves
    the intensity range. More than 5 %: refused (a filled area that large is a
    featureless patch the registration would try to match).
Constant images
    Refused when the standard deviation of the finite pixels is below
    :data:`CONSTANT_STD_FRACTION` (1e-6) of the image's full scale: the dtype's maximum
    for integers of up to 16 bits, else the largest magnitude of the values (at least 1).
    That is far below one grey level of an 8-bit image (3.9e-3), and for a float image
    about the float32 rounding of its values: there is no structure to register.
Intensity range (the sparse coding and the similarity measures expect [0, 1])
    * ``bool``: 0/1.
    * Unsigned integers of 8 or 16 bits, and signed ones without negative values:
      divided by the dtype's maximum (as :func:`clemalign.preprocess.to_unit_float`).
    * Floats (and integers wider than 16 bits, or signed with negative values), by
      their values:

      - within [0, 1]: used as they are;
      - within :data:`UNIT_TOLERANCE` (0.01) of [0, 1]: clipped (interpolation
        overshoot of a [0, 1] image);
      - whole numbers within 0-255: 8-bit grey levels (Fiji keeps them when it converts
        an 8-bit image to 32-bit): divided by 255, which gives exactly what the 8-bit
        file would give;
      - whole numbers within 0-65535: 16-bit grey levels: divided by 65535 (as the
        16-bit file would be);
      - anything else (negative values, values above 65535, or fractional values whose
        scale is arbitrary, e.g. a deconvolved image from 0 to 3.7, which divided by 255
        would be nearly black): scaled linearly, minimum -> 0 and maximum -> 1.

      Every rescaling is reported with the range found and the rule applied.
Size
    :func:`min_size` refuses an image whose width or height (um) is below a minimum the
    caller states (one analogy patch, one bead window...).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import CaseError

#: Largest fraction of non-finite pixels that is repaired (above it: refused).
MAX_NONFINITE_FRACTION = 0.05
#: An image whose finite pixels have a standard deviation below this fraction of its
#: full scale is refused as constant.
CONSTANT_STD_FRACTION = 1e-6
#: Float values this close to [0, 1] are clipped into it rather than rescaled.
UNIT_TOLERANCE = 0.01
#: Largest grey level of 8-bit and 16-bit data.
EIGHT_BIT_MAX = 255
SIXTEEN_BIT_MAX = 65535

#: Values per block when the spread of a large image is summed up (bounds the memory).
_BLOCK_VALUES = 1 << 22


def note(case: str, message: str, path: str | None = None) -> str:
    """A repair note worded like :class:`~clemalign.errors.CaseError`.

    Returns
    -------
    str
        ``"case '<case>': <message> (file: <path>)"``.
    """
    return str(CaseError(case, message, path))


def pixel_shape(image: np.ndarray) -> tuple[int, int]:
    """(rows, cols) in px of a 2D, (rows, cols, C <= 4) or (C, rows, cols) image."""
    axes = _pixel_axes(np.asarray(image))
    return int(image.shape[axes[0]]), int(image.shape[axes[1]])


def min_size(
    shape_px: Sequence[int],
    px_per_um: float,
    minimum_um: float,
    case: str,
    path: str | None,
    role: str,
    what: str,
) -> None:
    """Refuse an image narrower or shorter than ``minimum_um``.

    Parameters
    ----------
    shape_px : (int, int)
        (rows, cols) of the image, px (:func:`pixel_shape`).
    px_per_um : float
        Sampling of the image, px/um.
    minimum_um : float
        Smallest width and height the caller can use, um.
    case, path, role : str
        Case name, image file and ``'em'``/``'lm'`` for the message.
    what : str
        What the minimum is, for the message: ``"one 15 x 15 px patch at 14.52 px/um"``.

    Raises
    ------
    CaseError
        "the em image is 0.90 x 0.90 um (13 x 13 px at 14.52 px/um), smaller than one
        15 x 15 px patch at 14.52 px/um (1.03 x 1.03 um); ..."
    """
    rows, cols = int(shape_px[0]), int(shape_px[1])
    width_um, height_um = cols / px_per_um, rows / px_per_um
    if min(width_um, height_um) >= minimum_um * (1.0 - 1e-9):
        return
    raise CaseError(
        case,
        f"the {role} image is {width_um:.2f} x {height_um:.2f} um ({cols} x {rows} px at "
        f"{px_per_um:.4g} px/um), smaller than {what} ({minimum_um:.2f} x {minimum_um:.2f} um); "
        f"use a larger field of view, or check the {role} pixel size",
        path,
    )


def finite_pixels(
    image: np.ndarray, case: str, path: str | None, role: str
) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    """Repair a few NaN/inf pixels without letting them spread; refuse many.

    Parameters
    ----------
    image : ndarray
        The image as read: (rows, cols), (rows, cols, C <= 4) or (C, rows, cols).
    case, path, role : str
        Case name, image file and ``'em'``/``'lm'`` for the messages.

    Returns
    -------
    image : ndarray
        ``image`` itself when every pixel is finite (integer images always are);
        otherwise a copy whose non-finite values are set to the median of the finite
        values of their channel.
    mask : ndarray of bool or None
        (rows, cols), True at the pixels that were not finite (in any channel); None
        when there were none.
    message : str or None
        The repair note (count, fraction, bounding box in px, fill value, file), or None.

    Raises
    ------
    CaseError
        More than :data:`MAX_NONFINITE_FRACTION` of the pixels are not finite.
    """
    image = np.asarray(image)
    if not np.issubdtype(image.dtype, np.floating):
        return image, None, None
    finite = np.isfinite(image)
    if finite.all():
        return image, None, None
    axes = _pixel_axes(image)
    other = tuple(i for i in range(image.ndim) if i not in axes)
    mask = np.any(~finite, axis=other) if other else ~finite
    n_bad = int(mask.sum())
    fraction = n_bad / mask.size
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    values = image[~finite]
    counts = {
        "NaN": int(np.isnan(values).sum()),
        "+inf": int(np.isposinf(values).sum()),
        "-inf": int(np.isneginf(values).sum()),
    }
    per = "" if image.ndim == 2 else " values"
    kinds = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n) + per
    found = (
        f"{n_bad} of {mask.size} pixels ({_percent(fraction)}) of the {role} image are not "
        f"finite ({kinds}), in rows {rows[0]}-{rows[-1]}, cols {cols[0]}-{cols[-1]} "
        "(px, 0-based)"
    )
    if fraction > MAX_NONFINITE_FRACTION:
        raise CaseError(
            case,
            f"{found}; more than {100 * MAX_NONFINITE_FRACTION:g} % cannot be repaired by "
            "filling: export the image without NaN/inf (Fiji: Process > Noise > Remove "
            "NaNs...) or crop it to its valid area",
            path,
        )
    repaired = image.copy()
    fills = []
    for index in np.ndindex(*(image.shape[axis] for axis in other)):  # one pass per channel
        select = [slice(None)] * image.ndim
        for axis, i in zip(other, index, strict=True):
            select[axis] = i
        plane, ok = repaired[tuple(select)], finite[tuple(select)]  # views
        fill = float(np.median(plane[ok], overwrite_input=True))
        plane[~ok] = fill
        fills.append(f"{fill:.4g}")
    value = fills[0] if len(fills) == 1 else "(" + ", ".join(fills) + ") per channel"
    message = (
        f"{found}; they were set to {value}, the median of the finite pixels, so that "
        "they do not spread when the image is resampled (that area carries no image "
        "information)"
    )
    return repaired, mask, note(case, message, path)


def not_constant(
    image: np.ndarray,
    case: str,
    path: str | None,
    role: str,
    channel: str | int | None = None,
    exclude: np.ndarray | None = None,
) -> None:
    """Refuse an image whose finite pixels have (nearly) no spread.

    Parameters
    ----------
    image : ndarray
        The image, or the plane of it that will be used (one channel, the luminance).
    case, path, role : str
        Case name, image file and ``'em'``/``'lm'`` for the message.
    channel : str or int, optional
        The channel ``image`` was taken from (named in the message); None for a plain
        grey image.
    exclude : ndarray of bool, optional
        (rows, cols) pixels to leave out (those :func:`finite_pixels` filled).

    Raises
    ------
    CaseError
        The standard deviation of the finite pixels is below
        :data:`CONSTANT_STD_FRACTION` of the full scale (the dtype's maximum for
        integers of up to 16 bits, else the largest magnitude of the values, at least 1).
    """
    image = np.asarray(image)
    if exclude is not None and image.ndim == 3:
        axes = _pixel_axes(image)
        channel_axis = next(i for i in range(3) if i not in axes)
        exclude = np.broadcast_to(np.expand_dims(exclude, channel_axis), image.shape)
    count, lo, hi, std = _spread(image, exclude)
    if count == 0:  # nothing finite: not constant, but certainly unusable
        raise CaseError(case, f"{_subject(role, channel)} has no finite pixel", path)
    scale = _full_scale(image.dtype, lo, hi)
    if std >= CONSTANT_STD_FRACTION * scale:
        return
    if channel is not None and channel != "gray":
        hint = "check the channel in the case sheet (column channel)"
    else:
        hint = "check that the file is the right one and not a blank export"
    if lo == hi:
        what = f"is constant: every pixel is {lo:.6g}"
    else:
        what = (
            f"is nearly constant: values {lo:.6g} to {hi:.6g}, standard deviation "
            f"{std:.3g}, below {CONSTANT_STD_FRACTION:g} of its full scale {scale:.6g}"
        )
    raise CaseError(
        case, f"{_subject(role, channel)} {what}; it holds nothing to register: {hint}", path
    )


def unit_range(
    image: np.ndarray, case: str, path: str | None, role: str
) -> tuple[np.ndarray, str | None]:
    """Bring an image to float32 in [0, 1] by a stated rule (see the module docstring).

    Parameters
    ----------
    image : ndarray
        Finite image (run :func:`finite_pixels` first), any channel layout.
    case, path, role : str
        Case name, image file and ``'em'``/``'lm'`` for the messages.

    Returns
    -------
    image : ndarray of float32
        Values in [0, 1]. Integers of up to 16 bits (unsigned, or signed without
        negatives) and bool give exactly :func:`clemalign.preprocess.to_unit_float`'s
        result, and floats within [0, 1] the same values, as float32.
    message : str or None
        Range found and rule applied when the values were rescaled or clipped (and for
        integers wider than 16 bits, whose scaling is not the dtype's maximum); None
        otherwise.

    Raises
    ------
    CaseError
        Pixels that are not finite, or a pixel type that is not a grey level (complex...).
    """
    image = np.asarray(image)
    dtype = image.dtype
    if dtype == np.bool_:
        return image.astype(np.float32), None
    integer = np.issubdtype(dtype, np.integer)
    if not (integer or np.issubdtype(dtype, np.floating)):
        raise CaseError(case, f"the {role} image has pixel type {dtype}, not grey levels", path)
    narrow = integer and dtype.itemsize <= 2
    if narrow and (np.issubdtype(dtype, np.unsignedinteger) or image.min() >= 0):
        return image.astype(np.float32) / np.float32(np.iinfo(dtype).max), None
    lo, hi = float(image.min()), float(image.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise CaseError(case, f"the {role} image has pixels that are not finite", path)
    found = f"the {role} image holds {_dtype_words(dtype)} values from {lo:.6g} to {hi:.6g}"
    if lo >= 0 and hi <= 1:
        if integer:
            return image.astype(np.float32), note(
                case, f"{found}, already in [0, 1]: used as they are", path
            )
        return image.astype(np.float32, copy=False), None
    if lo >= -UNIT_TOLERANCE and hi <= 1 + UNIT_TOLERANCE:
        out = np.clip(image.astype(np.float32), 0.0, 1.0)
        rule = (
            f"within {UNIT_TOLERANCE:g} of [0, 1] (interpolation overshoot), so they were "
            "clipped to [0, 1]"
        )
    elif lo >= 0 and hi <= EIGHT_BIT_MAX and _whole_numbers(image):
        out = image.astype(np.float32) / np.float32(EIGHT_BIT_MAX)
        rule = (
            f"whole numbers within 0-{EIGHT_BIT_MAX}: read as 8-bit grey levels (as Fiji "
            f"keeps them in a 32-bit image) and divided by {EIGHT_BIT_MAX}"
        )
    elif lo >= 0 and hi <= SIXTEEN_BIT_MAX and _whole_numbers(image):
        out = image.astype(np.float32) / np.float32(SIXTEEN_BIT_MAX)
        rule = (
            f"whole numbers within 0-{SIXTEEN_BIT_MAX}: read as 16-bit grey levels and "
            f"divided by {SIXTEEN_BIT_MAX}"
        )
    else:
        if lo < 0:
            why = "negative values"
        elif hi > SIXTEEN_BIT_MAX:
            why = f"values above {SIXTEEN_BIT_MAX}"
        else:
            why = "fractional values, so not 8-bit or 16-bit grey levels"
        span = np.float32(hi - lo) if hi > lo else np.float32(1.0)
        out = np.clip((image.astype(np.float32) - np.float32(lo)) / span, 0.0, 1.0)
        rule = f"{why}: scaled linearly to [0, 1] ({lo:.6g} -> 0, {hi:.6g} -> 1)"
    return out, note(case, f"{found}, {rule}", path)


def _pixel_axes(image: np.ndarray) -> tuple[int, int]:
    """Axes of rows and cols: a 3D image is (rows, cols, C) when its last axis is at most
    4 long, else (C, rows, cols), as :func:`clemalign.preprocess.select_channel` reads it."""
    if image.ndim < 2:
        raise ValueError(f"expected an image of 2 or more axes, got shape {image.shape}")
    if image.ndim == 2:
        return 0, 1
    if image.shape[-1] <= 4:
        return image.ndim - 3, image.ndim - 2
    return image.ndim - 2, image.ndim - 1


def _spread(image: np.ndarray, exclude: np.ndarray | None) -> tuple[int, float, float, float]:
    """Count, min, max and standard deviation of the finite values not excluded.

    Summed block by block along the first axis in float64 (pairwise merge of means and
    squared deviations), so a large image needs no full-size float64 copy.
    """
    if image.size == 0:
        return 0, np.nan, np.nan, np.nan
    step = max(1, _BLOCK_VALUES // max(1, image.size // image.shape[0]))
    count, mean, m2 = 0, 0.0, 0.0
    lo, hi = np.inf, -np.inf
    for start in range(0, image.shape[0], step):
        block = np.asarray(image[start : start + step], dtype=np.float64)
        keep = np.isfinite(block)
        if exclude is not None:
            keep &= ~exclude[start : start + step]
        values = block[keep]
        if values.size == 0:
            continue
        n, m = values.size, float(values.mean())
        block_m2 = float(np.square(values - m).sum())
        delta = m - mean
        total = count + n
        mean += delta * n / total
        m2 += block_m2 + delta * delta * count * n / total
        count = total
        lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
    if count == 0:
        return 0, np.nan, np.nan, np.nan
    return count, lo, hi, float(np.sqrt(m2 / count))


def _full_scale(dtype: np.dtype, lo: float, hi: float) -> float:
    """Full scale of an image for the constant check: the dtype's maximum for integers
    of up to 16 bits (bool: 1), else the largest magnitude of the values, at least 1."""
    if dtype == np.bool_:
        return 1.0
    if np.issubdtype(dtype, np.integer) and dtype.itemsize <= 2 and lo >= 0:
        return float(np.iinfo(dtype).max)
    return max(1.0, abs(lo), abs(hi))


def _whole_numbers(image: np.ndarray) -> bool:
    """Whether every value is a whole number (block by block, stopping at the first
    fractional one)."""
    if not np.issubdtype(image.dtype, np.floating):
        return True
    step = max(1, _BLOCK_VALUES // max(1, image.size // max(1, image.shape[0])))
    for start in range(0, image.shape[0], step):
        block = image[start : start + step]
        if not np.array_equal(block, np.round(block)):
            return False
    return True


def _dtype_words(dtype: np.dtype) -> str:
    """``'32-bit float'``, ``'16-bit unsigned integer'``..."""
    bits = 8 * dtype.itemsize
    if np.issubdtype(dtype, np.floating):
        return f"{bits}-bit float"
    if np.issubdtype(dtype, np.unsignedinteger):
        return f"{bits}-bit unsigned integer"
    return f"{bits}-bit signed integer"


def _subject(role: str, channel: str | int | None) -> str:
    """``'the lm image'``, ``'the green channel of the lm image'``..."""
    if channel is None:
        return f"the {role} image"
    if channel == "gray":
        return f"the {role} image (grey luminance of its channels)"
    if isinstance(channel, str):
        return f"the {channel} channel of the {role} image"
    return f"channel {channel} of the {role} image"


def _percent(fraction: float) -> str:
    """A fraction as a percentage with 3 significant digits: ``'0.25 %'``."""
    return f"{100 * fraction:.3g} %"
