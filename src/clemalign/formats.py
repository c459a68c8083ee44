"""Transforms and landmarks to and from the tools microscopists use.

Every tool below places the pixel grid differently. In clemalign the origin is the
outer corner of pixel (0, 0), so the centre of pixel ``i`` is at ``(i + 0.5) / p`` um
(:func:`clemalign.transforms.px_to_um`). What each format does:

=====================  =================================  ===========================
format                 coordinates in the file            clemalign um = file value
=====================  =================================  ===========================
ITK text transform     um, pixel centre ``i`` at ``i/p``  ``+ 0.5 / p`` of that image
BigWarp landmarks CSV  um, pixel centre ``i`` at ``i/p``  ``+ 0.5 / p`` of that image
ec-CLEM XML            um, Icy pixel ``i`` spans          ``+ 0`` (same origin)
                       ``[i, i + 1)`` times pixel size
napari points CSV      pixel index, centre at ``i``       ``(i + 0.5) / p``
=====================  =================================  ===========================

The electron micrograph (EM) is always the moving image (BigWarp "moving", ec-CLEM
"source") and the light micrograph (LM) the fixed one (BigWarp "fixed", ec-CLEM
"target").
"""

from __future__ import annotations

import csv
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ClemalignError
from .io import LANDMARK_COLUMNS, read_landmarks
from .transforms import rc_px_to_xy_um, translation_matrix

#: ITK transform types whose 6 parameters are a row-major 2x2 matrix then a translation.
ITK_AFFINE_TYPES = (
    "AffineTransform_double_2_2",
    "AffineTransform_float_2_2",
    "MatrixOffsetTransformBase_double_2_2",
    "MatrixOffsetTransformBase_float_2_2",
)


class FormatError(ClemalignError):
    """A file in an exchange format is malformed; the message names the file.

    Parameters
    ----------
    path : str or Path
        The file.
    message : str
        What is wrong, in words a microscopist understands.
    """

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = str(path)
        self.detail = message
        super().__init__(f"{path}: {message}")


# ---------------------------------------------------------------------------- helpers


def _num(value: float) -> str:
    """Shortest text that reads back as exactly the same double."""
    return repr(float(value))


def _check_px_per_um(value: float | None, what: str) -> float:
    if value is None or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number of pixels per um, got {value!r}")
    return float(value)


def _half_px_um(px_per_um: float | None, what: str) -> float:
    """Half a pixel in um: clemalign um minus the um of a centre-at-integer tool."""
    return 0.5 / _check_px_per_um(px_per_um, what)


def _check_matrix(matrix_um: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix_um, dtype=float)
    if matrix.shape != (3, 3) or not np.allclose(matrix[2], [0, 0, 1]):
        raise ValueError(f"expected a 3x3 affine matrix in um, got {matrix!r}")
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix[:2, :2])) < 1e-300:
        raise ValueError(f"the affine matrix is not finite and invertible: {matrix!r}")
    return matrix


def _check_landmark_table(landmarks: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in LANDMARK_COLUMNS if c not in landmarks.columns]
    if missing:
        raise ValueError(f"landmark table lacks columns {missing}; expected {LANDMARK_COLUMNS}")
    if not np.all(np.isfinite(landmarks[LANDMARK_COLUMNS[1:]].to_numpy(float))):
        raise ValueError("landmark table has coordinates that are not finite numbers")
    return landmarks


def _landmark_frame(names: list[str], em_xy: np.ndarray, lm_xy: np.ndarray) -> pd.DataFrame:
    """A landmark table with the columns of :data:`clemalign.io.LANDMARK_COLUMNS`."""
    em_xy = np.asarray(em_xy, dtype=float).reshape(-1, 2)
    lm_xy = np.asarray(lm_xy, dtype=float).reshape(-1, 2)
    return pd.DataFrame(
        {
            "name": [str(n) for n in names],
            "em_x_um": em_xy[:, 0],
            "em_y_um": em_xy[:, 1],
            "lm_x_um": lm_xy[:, 0],
            "lm_y_um": lm_xy[:, 1],
        },
        columns=LANDMARK_COLUMNS,
    )


def _read_text(path: str | Path) -> str:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"file not found: {path}")
    return path.read_text(encoding="utf-8-sig", errors="replace")


def _floats(path: str | Path, values: list[str], what: str) -> np.ndarray:
    try:
        out = np.array([float(v) for v in values], dtype=float)
    except ValueError:
        raise FormatError(path, f"{what} must be numbers, got {values}") from None
    return out


# ------------------------------------------------------------------ ITK text transform


def _itk_from_ours(matrix: np.ndarray, moving_px_per_um: float, fixed_px_per_um: float):
    """ITK fixed -> moving matrix (ITK um, pixel centres at ``i / p``) from ours."""
    h_m = _half_px_um(moving_px_per_um, "moving_px_per_um")
    h_f = _half_px_um(fixed_px_per_um, "fixed_px_per_um")
    return translation_matrix(-h_m, -h_m) @ np.linalg.inv(matrix) @ translation_matrix(h_f, h_f)


def _ours_from_itk(itk: np.ndarray, moving_px_per_um: float, fixed_px_per_um: float):
    """Inverse of :func:`_itk_from_ours`."""
    h_m = _half_px_um(moving_px_per_um, "moving_px_per_um")
    h_f = _half_px_um(fixed_px_per_um, "fixed_px_per_um")
    return np.linalg.inv(translation_matrix(h_m, h_m) @ itk @ translation_matrix(-h_f, -h_f))


def write_itk_transform(
    path: str | Path,
    matrix_um: np.ndarray,
    moving_px_per_um: float,
    fixed_px_per_um: float,
) -> None:
    """Write a moving -> fixed affine as an ITK text transform (SimpleITK, ANTs, ITK).

    ITK maps FIXED points to MOVING points, so the file holds the inverse of
    ``matrix_um``. It is meant for images that ITK reads with origin (0, 0) and spacing
    ``1 / px_per_um`` um (SimpleITK's default origin for a TIFF; set the spacing in um
    with ``image.SetSpacing``): there the centre of pixel ``i`` is at ``i / p`` um, half
    a pixel less than in clemalign, and these half-pixel shifts (each image's own pixel
    size) are composed into the written transform. ``FixedParameters`` (ITK's centre)
    are written as 0. Comment lines in the file repeat the convention.

    Parameters
    ----------
    path : str or Path
        Output file; ITK needs the suffix ``.tfm`` or ``.txt``.
    matrix_um : ndarray, shape (3, 3)
        Our affine, EM (moving) um -> LM (fixed) um.
    moving_px_per_um, fixed_px_per_um : float
        Pixel sizes of the EM and LM images, px/um.

    Raises
    ------
    ValueError
        With another suffix, a non-affine or singular matrix, or a bad pixel size.
    """
    path = Path(path)
    if path.suffix.lower() not in (".tfm", ".txt"):
        raise ValueError(f"ITK reads text transforms only from .tfm or .txt files, not {path}")
    itk = _itk_from_ours(_check_matrix(matrix_um), moving_px_per_um, fixed_px_per_um)
    params = [*itk[:2, :2].ravel(), *itk[:2, 2]]
    lines = [
        "#Insight Transform File V1.0",
        "# clemalign: maps FIXED (light micrograph) points to MOVING (electron micrograph)",
        "# points in um, for images read with ITK origin 0 (pixel i centred at i * spacing)",
        f"# and spacing {_num(1 / moving_px_per_um)} um (moving), "
        f"{_num(1 / fixed_px_per_um)} um (fixed).",
        "#Transform 0",
        f"Transform: {ITK_AFFINE_TYPES[0]}",
        "Parameters: " + " ".join(_num(v) for v in params),
        "FixedParameters: 0 0",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _itk_blocks(path: str | Path, text: str) -> list[dict[str, str]]:
    """``key: value`` lines of an ITK text transform, one dict per ``Transform:``."""
    blocks: list[dict[str, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise FormatError(path, f"line {number} is not 'Key: values': {raw!r}")
        if key.strip() == "Transform":
            blocks.append({})
        elif not blocks:
            raise FormatError(path, f"line {number} comes before any 'Transform:' line")
        blocks[-1][key.strip()] = value.strip()
    return blocks


def _itk_affine_block(path: str | Path, text: str) -> dict[str, str]:
    blocks = _itk_blocks(path, text)
    if blocks and blocks[0].get("Transform", "").startswith("CompositeTransform"):
        blocks = blocks[1:]
    if len(blocks) != 1:
        raise FormatError(
            path, f"expected one 2D affine ITK transform, found {len(blocks)} transforms"
        )
    kind = blocks[0].get("Transform", "")
    if kind not in ITK_AFFINE_TYPES:
        raise FormatError(
            path, f"transform type {kind!r} is not a 2D affine; expected one of {ITK_AFFINE_TYPES}"
        )
    return blocks[0]


def _itk_matrix(path: str | Path, block: dict[str, str]) -> np.ndarray:
    """ITK fixed -> moving 3x3 matrix from parameters ``A, t`` and centre ``c``."""
    if "Parameters" not in block:
        raise FormatError(path, "the transform has no 'Parameters:' line")
    params = _floats(path, block["Parameters"].split(), "Parameters")
    centre = _floats(path, block.get("FixedParameters", "0 0").split(), "FixedParameters")
    if params.size != 6 or centre.size != 2:
        raise FormatError(
            path,
            f"a 2D affine needs 6 Parameters and 2 FixedParameters, got {params.size} "
            f"and {centre.size}",
        )
    linear = params[:4].reshape(2, 2)
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = params[4:] + centre - linear @ centre  # y = A (x - c) + c + t
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(linear)) < 1e-300:
        raise FormatError(path, "the affine matrix is not finite and invertible")
    return matrix


def read_itk_transform(
    path: str | Path, moving_px_per_um: float, fixed_px_per_um: float
) -> np.ndarray:
    """Read a 2D affine ITK text transform as our moving -> fixed matrix in um.

    The inverse of :func:`write_itk_transform`, with the same half-pixel convention
    (ITK origin 0, pixel ``i`` centred at ``i / p`` um). Any centre (``FixedParameters``)
    is honoured; a composite transform is accepted when it holds exactly one affine.

    Parameters
    ----------
    path : str or Path
        An ``#Insight Transform File V1.0`` text file.
    moving_px_per_um, fixed_px_per_um : float
        Pixel sizes of the EM (moving) and LM (fixed) images, px/um.

    Returns
    -------
    ndarray, shape (3, 3)
        EM (moving) um -> LM (fixed) um.

    Raises
    ------
    FormatError
        When the file is not a single 2D affine or its numbers are malformed.
    """
    block = _itk_affine_block(path, _read_text(path))
    return _ours_from_itk(_itk_matrix(path, block), moving_px_per_um, fixed_px_per_um)


# ------------------------------------------------------------- BigWarp landmarks CSV


def write_bigwarp_landmarks(
    path: str | Path,
    landmarks: pd.DataFrame,
    moving_px_per_um: float,
    fixed_px_per_um: float,
) -> None:
    """Write landmark pairs as a BigWarp (Fiji) landmarks CSV.

    One row per landmark, no header, every field quoted, as BigWarp saves them:
    ``"name","true",em_x,em_y,lm_x,lm_y`` (moving = EM, fixed = LM). Coordinates are
    in um of each image as BigWarp sees it, with pixel ``i`` centred at ``i / p``: half
    a pixel of that image less than ours. Open the images calibrated in um (as
    :func:`clemalign.io.write_tiff` writes them).

    Parameters
    ----------
    path : str or Path
        Output CSV.
    landmarks : DataFrame
        Columns of :data:`clemalign.io.LANDMARK_COLUMNS`, um.
    moving_px_per_um, fixed_px_per_um : float
        Pixel sizes of the EM (moving) and LM (fixed) images, px/um.
    """
    table = _check_landmark_table(landmarks)
    h_m = _half_px_um(moving_px_per_um, "moving_px_per_um")
    h_f = _half_px_um(fixed_px_per_um, "fixed_px_per_um")
    em = table[["em_x_um", "em_y_um"]].to_numpy(float) - h_m
    lm = table[["lm_x_um", "lm_y_um"]].to_numpy(float) - h_f
    rows = [
        [str(name), "true", *(_num(v) for v in e), *(_num(v) for v in f)]
        for name, e, f in zip(table["name"], em, lm, strict=True)
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(rows)


def _bigwarp_rows(path: str | Path) -> list[list[str]]:
    """Non-blank rows of a BigWarp CSV, all with 6 (2D) or all with 8 (3D) fields."""
    rows = [r for r in csv.reader(_read_text(path).splitlines()) if any(f.strip() for f in r)]
    if not rows:
        raise FormatError(path, "the BigWarp landmark file is empty")
    width = len(rows[0])
    if width not in (6, 8):
        raise FormatError(
            path,
            f"row 1 has {width} fields; a BigWarp landmark row has 6 (2D: name, active, "
            "moving x y, fixed x y) or 8 (3D)",
        )
    for number, row in enumerate(rows, start=1):
        if len(row) != width:
            raise FormatError(path, f"row {number} has {len(row)} fields, row 1 has {width}")
    return rows


def _bigwarp_active(path: str | Path, rows: list[list[str]]) -> np.ndarray:
    flags = [r[1].strip().lower() for r in rows]
    bad = [i + 1 for i, f in enumerate(flags) if f not in ("true", "false")]
    if bad:
        raise FormatError(path, f"the 'active' field must be true or false (rows {bad})")
    return np.array([f == "true" for f in flags])


def _bigwarp_points(path: str | Path, rows: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Moving and fixed coordinates (N, ndim) of the active rows, finite."""
    ndim = (len(rows[0]) - 2) // 2
    coords = np.array([_floats(path, r[2:], f"coordinates of row {r[0]!r}") for r in rows])
    if not np.all(np.isfinite(coords)):
        bad = [r[0] for r, c in zip(rows, coords, strict=True) if not np.all(np.isfinite(c))]
        raise FormatError(path, f"active landmarks {bad} lack a moving or a fixed point")
    return coords[:, :ndim], coords[:, ndim:]


def _flat_z(path: str | Path, points: np.ndarray, image: str) -> np.ndarray:
    """x, y of 3D points whose z is one plane; refuses points on several planes."""
    if points.shape[1] == 3 and np.ptp(points[:, 2]) > 0:
        raise FormatError(
            path,
            f"the {image} points lie on several z planes ({np.unique(points[:, 2])}); "
            "clemalign registers 2D images, so all points of an image must share one z",
        )
    return points[:, :2]


def read_bigwarp_landmarks(
    path: str | Path, moving_px_per_um: float, fixed_px_per_um: float
) -> pd.DataFrame:
    """Read a BigWarp landmarks CSV as a landmark table (EM = moving, LM = fixed).

    Inverse of :func:`write_bigwarp_landmarks`: half a pixel of each image is added
    back. Inactive rows (``"false"``), which BigWarp ignores when it fits a transform,
    are dropped. 3D files (8 fields a row) are accepted when all moving points share
    one z and all fixed points share one z; z is then discarded.

    Parameters
    ----------
    path : str or Path
        BigWarp CSV (no header; name, active, moving coordinates, fixed coordinates).
    moving_px_per_um, fixed_px_per_um : float
        Pixel sizes of the EM (moving) and LM (fixed) images, px/um.

    Returns
    -------
    DataFrame
        Columns of :data:`clemalign.io.LANDMARK_COLUMNS`, um.

    Raises
    ------
    FormatError
        On a wrong number of fields, a bad active flag, a non-numeric or missing
        coordinate, points on several z planes, or no active landmark at all.
    """
    h_m = _half_px_um(moving_px_per_um, "moving_px_per_um")
    h_f = _half_px_um(fixed_px_per_um, "fixed_px_per_um")
    rows = _bigwarp_rows(path)
    rows = [r for r, on in zip(rows, _bigwarp_active(path, rows), strict=True) if on]
    if not rows:
        raise FormatError(path, "no active landmark (every row is marked false)")
    moving, fixed = _bigwarp_points(path, rows)
    em = _flat_z(path, moving, "moving (EM)") + h_m
    lm = _flat_z(path, fixed, "fixed (LM)") + h_f
    return _landmark_frame([r[0] for r in rows], em, lm)


# ------------------------------------------------------------------------ ec-CLEM XML


def _ecclem_size(parent: ET.Element, role: str, shape: tuple[int, ...], px_per_um: float):
    """``<sequenceSize>`` of one image: X = columns, Y = rows, Z = one plane of 1 um."""
    rows, cols = (int(n) for n in tuple(shape)[:2])
    if rows <= 0 or cols <= 0:
        raise ValueError(f"{role} image shape must be positive (rows, cols), got {shape!r}")
    um_per_px = _num(1.0 / _check_px_per_um(px_per_um, f"{role} px_per_um"))
    element = ET.SubElement(parent, "sequenceSize", {"dimension": "3", "type": role})
    for name, size, pixel in (("X", cols, um_per_px), ("Y", rows, um_per_px), ("Z", 1, "1.0")):
        dim = ET.SubElement(element, "dimensionSize", {"name": name, "pixelSize": pixel})
        dim.text = str(size)


def write_ecclem_transform(
    path: str | Path,
    matrix_um: np.ndarray,
    moving_px_per_um: float,
    fixed_px_per_um: float,
    moving_shape: tuple[int, int],
    fixed_shape: tuple[int, int],
) -> None:
    """Write a moving -> fixed affine as an ec-CLEM (Icy) transformation XML.

    As ec-CLEM 2 saves an affine: ``<root>`` holds ``<MatrixTransformation>`` whose
    attributes ``m00`` ... ``m33`` are a 4x4 homogeneous matrix on ``[x, y, z, 1]`` in
    um mapping the source image (EM, moving) onto the target (LM, fixed), z row and
    column identity; then ``<transformation type="AFFINE">`` with one
    ``<sequenceSize>`` per image (``dimensionSize`` X, Y, Z: size in pixels as text,
    ``pixelSize`` in um/px). ec-CLEM's um are Icy pixel coordinates (pixel ``i``
    spans ``[i, i + 1)``) times the pixel size, the same origin as ours, so no
    half-pixel shift is applied.

    Parameters
    ----------
    path : str or Path
        Output XML.
    matrix_um : ndarray, shape (3, 3)
        Our affine, EM (moving) um -> LM (fixed) um.
    moving_px_per_um, fixed_px_per_um : float
        Pixel sizes of the EM and LM images, px/um.
    moving_shape, fixed_shape : (int, int)
        (rows, cols) of the EM and LM images.
    """
    matrix = _check_matrix(matrix_um)
    full = np.eye(4)
    full[:2, :2] = matrix[:2, :2]
    full[:2, 3] = matrix[:2, 2]
    root = ET.Element("root")
    root.append(
        ET.Comment(
            " clemalign: source = electron micrograph (moving), target = light "
            "micrograph (fixed); um with pixel i spanning [i, i+1) * pixel size "
        )
    )
    attrs = {f"m{i}{j}": _num(full[i, j]) for i in range(4) for j in range(4)}
    ET.SubElement(root, "MatrixTransformation", attrs)
    info = ET.SubElement(root, "transformation", {"type": "AFFINE", "noiseModel": "ISOTROPIC"})
    _ecclem_size(info, "source", moving_shape, moving_px_per_um)
    _ecclem_size(info, "target", fixed_shape, fixed_px_per_um)
    tree = ET.ElementTree(root)
    ET.indent(tree)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tree.write(path, encoding="UTF-8", xml_declaration=True)


def _parse_xml(path: str | Path) -> ET.Element:
    text = _read_text(path)
    try:
        return ET.fromstring(text)
    except ET.ParseError as exc:
        raise FormatError(path, f"not a readable XML file ({exc})") from None


def _ecclem_matrix(path: str | Path, element: ET.Element) -> np.ndarray:
    """The 4x4 (or, for a 2D ec-CLEM dataset, 3x3) matrix of a MatrixTransformation."""
    size = 4 if "m33" in element.attrib or "m03" in element.attrib else 3
    names = [f"m{i}{j}" for i in range(size) for j in range(size)]
    missing = [n for n in names if n not in element.attrib]
    if missing:
        raise FormatError(path, f"<MatrixTransformation> lacks attributes {missing}")
    values = _floats(path, [element.attrib[n] for n in names], "matrix entries m00..")
    return values.reshape(size, size)


def _ecclem_to_2d(path: str | Path, full: np.ndarray) -> np.ndarray:
    """Our 3x3 from ec-CLEM's 3x3 or 4x4; refuses z mixing into x, y."""
    if full.shape == (4, 4):
        if np.any(full[:2, 2] != 0) or np.any(full[2, :2] != 0):
            raise FormatError(path, "the transformation mixes z with x and y (a 3D transform)")
        full = full[np.ix_([0, 1, 3], [0, 1, 3])]
    if not np.allclose(full[2], [0, 0, 1]):
        raise FormatError(path, f"the last matrix row must be (0, 0, 1), got {full[2]}")
    if not np.all(np.isfinite(full)) or abs(np.linalg.det(full[:2, :2])) < 1e-300:
        raise FormatError(path, "the affine matrix is not finite and invertible")
    matrix = np.eye(3)
    matrix[:2] = full[:2]
    return matrix


def read_ecclem_transform(path: str | Path) -> np.ndarray:
    """Read an ec-CLEM (Icy) affine transformation XML as our moving -> fixed matrix.

    Inverse of :func:`write_ecclem_transform` (exact round trip). The file must have
    one ``<MatrixTransformation>`` directly under the root (ec-CLEM 2), 4x4 or 3x3,
    whose x and y do not depend on z. Files of ec-CLEM 1, which nest several matrices
    in pixel units under a sequence element, are refused.

    Parameters
    ----------
    path : str or Path
        ec-CLEM transformation XML.

    Returns
    -------
    ndarray, shape (3, 3)
        Source (EM, moving) um -> target (LM, fixed) um.

    Raises
    ------
    FormatError
        When the file is not XML, holds no or several matrices, or a matrix is
        incomplete, non-numeric, 3D or singular.
    """
    root = _parse_xml(path)
    found = root.findall("MatrixTransformation")
    nested = len(root.findall(".//MatrixTransformation")) - len(found)
    if nested or len(found) > 1:
        raise FormatError(
            path,
            "holds several or nested <MatrixTransformation> elements (an ec-CLEM 1 file, "
            "in pixel units); save the transformation again with ec-CLEM 2",
        )
    if not found:
        raise FormatError(path, "no <MatrixTransformation> element: not an ec-CLEM transform")
    return _ecclem_to_2d(path, _ecclem_matrix(path, found[0]))


def _ecclem_dataset(path: str | Path, element: ET.Element) -> tuple[list[str], np.ndarray]:
    """Point ids and coordinates (N, dim) um of one ec-CLEM ``<dataset>``."""
    ids, points = [], []
    for point in element.findall("point"):
        coords = {c.get("dimension"): c.text for c in point.findall("coordinate")}
        if "0" not in coords or "1" not in coords:
            raise FormatError(path, f"point {point.get('id')} lacks an x or a y coordinate")
        keys = ["0", "1"] + (["2"] if "2" in coords else [])
        ids.append(point.get("id", str(len(ids))))
        points.append(_floats(path, [coords[k] or "" for k in keys], "coordinates"))
    if len({len(p) for p in points}) > 1:
        raise FormatError(path, "points of one dataset have different numbers of coordinates")
    return ids, np.array(points, dtype=float).reshape(len(points), -1)


def _ecclem_datasets(path: str | Path) -> dict[str, ET.Element]:
    root = _parse_xml(path)
    found = list(root.iter("dataset"))
    types = sorted(str(d.get("type")) for d in found)
    if not found and root.find(".//MatrixTransformation") is not None:
        raise FormatError(
            path, "is an ec-CLEM transform without fiducial points; use read_ecclem_transform"
        )
    if types != ["source", "target"]:
        raise FormatError(
            path,
            "an ec-CLEM landmark file needs one <dataset type='source'> and one "
            f"<dataset type='target'>; found types {types}",
        )
    return {d.get("type"): d for d in found}


def read_ecclem_landmarks(path: str | Path, em_is_source: bool = True) -> pd.DataFrame:
    """Read the fiducial point pairs of an ec-CLEM transformation schema XML.

    ec-CLEM saves the points it fitted as ``<dataset type="source|target">`` elements
    of ``<point id>`` with ``<coordinate dimension="0|1|2">`` in um (Icy pixel
    coordinates times the pixel size; same origin as ours, no shift). Points are
    paired by order. 3D points are accepted when each dataset lies on one z plane.

    Parameters
    ----------
    path : str or Path
        ec-CLEM XML with a source and a target dataset.
    em_is_source : bool
        True when the electron micrograph was ec-CLEM's source image (the one
        transformed), False when it was the target.

    Returns
    -------
    DataFrame
        Columns of :data:`clemalign.io.LANDMARK_COLUMNS`, um; names ``P<id>``.

    Raises
    ------
    FormatError
        When a dataset is missing, empty, malformed, or the two differ in size.
    """
    datasets = _ecclem_datasets(path)
    ids, source = _ecclem_dataset(path, datasets["source"])
    _, target = _ecclem_dataset(path, datasets["target"])
    if len(source) != len(target) or len(source) == 0:
        raise FormatError(
            path, f"source and target hold {len(source)} and {len(target)} points; need pairs"
        )
    source = _flat_z(path, source, "source")
    target = _flat_z(path, target, "target")
    em, lm = (source, target) if em_is_source else (target, source)
    return _landmark_frame([f"P{i}" for i in ids], em, lm)


# ------------------------------------------------------------------- napari points CSV


def _napari_axes(path: str | Path, columns: list[str]) -> list[str]:
    axes = sorted((c for c in columns if re.fullmatch(r"axis-\d+", c)), key=lambda c: int(c[5:]))
    if "index" not in columns or len(axes) < 2 or axes != [f"axis-{k}" for k in range(len(axes))]:
        raise FormatError(
            path,
            f"columns {columns} are not a napari points file (index, axis-0, axis-1[, ...])",
        )
    return axes


def _napari_table(path: str | Path, px_per_um: float) -> tuple[np.ndarray, np.ndarray]:
    """Point indices and (x, y) um of a napari points CSV, sorted by index."""
    _check_px_per_um(px_per_um, "px_per_um")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise FormatError(path, f"not a readable CSV file ({exc})") from None
    axes = _napari_axes(path, [str(c) for c in table.columns])
    numbers = table[["index", *axes]].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    if len(numbers) == 0 or not np.all(np.isfinite(numbers)):
        raise FormatError(path, "no points, or some indices or coordinates are not numbers")
    index, values = numbers[:, 0], numbers[:, 1:]
    if len(axes) > 2 and np.any(np.ptp(values[:, :-2], axis=0) > 0):
        raise FormatError(
            path, "points lie on several planes of the leading axes; need one 2D image"
        )
    order = np.argsort(index, kind="stable")
    return index[order], rc_px_to_xy_um(values[order][:, -2:], px_per_um)


def read_napari_points(path: str | Path, px_per_um: float) -> np.ndarray:
    """Read a napari points CSV (``layer.save('pts.csv')``) as (x, y) um.

    napari writes ``index,axis-0,axis-1`` (more axes for nD, then property columns)
    with rows and columns in pixels of the layer's data, pixel centres at integers.
    The last two axes are (row, col); leading axes must be constant. Points are
    returned in index order, ``x = (col + 0.5) / p``, ``y = (row + 0.5) / p``.

    Parameters
    ----------
    path : str or Path
        napari points CSV.
    px_per_um : float
        Pixel size of the image the points were placed on, px/um.

    Returns
    -------
    ndarray, shape (N, 2)
        (x, y) um.

    Raises
    ------
    FormatError
        On missing columns, non-numeric values or points on several planes.
    """
    return _napari_table(path, px_per_um)[1]


def read_napari_landmarks(
    em_csv: str | Path, lm_csv: str | Path, em_px_per_um: float, lm_px_per_um: float
) -> pd.DataFrame:
    """Pair the points of two napari CSVs (EM and LM) by index into a landmark table.

    Parameters
    ----------
    em_csv, lm_csv : str or Path
        napari points CSVs placed on the electron and the light micrograph.
    em_px_per_um, lm_px_per_um : float
        Pixel sizes of those images, px/um.

    Returns
    -------
    DataFrame
        Columns of :data:`clemalign.io.LANDMARK_COLUMNS`, um; names ``P<index>``.

    Raises
    ------
    FormatError
        When the files hold different numbers of points, or one is malformed.
    """
    em_index, em = _napari_table(em_csv, em_px_per_um)
    _, lm = _napari_table(lm_csv, lm_px_per_um)
    if len(em) != len(lm):
        raise FormatError(
            em_csv, f"holds {len(em)} points but {lm_csv} holds {len(lm)}; points pair by index"
        )
    return _landmark_frame([f"P{int(i)}" for i in em_index], em, lm)


# ------------------------------------------------------------------------- dispatcher


def _first_csv_row(text: str) -> list[str]:
    for row in csv.reader(text.splitlines()[:20]):
        if any(f.strip() for f in row):
            return [f.strip() for f in row]
    return []


def _is_bigwarp_row(row: list[str]) -> bool:
    if len(row) not in (6, 8) or row[1].lower() not in ("true", "false"):
        return False
    try:
        [float(v) for v in row[2:]]
    except ValueError:
        return False
    return True


def landmark_format(path: str | Path) -> str:
    """Name the landmark format of a file from its content.

    Returns
    -------
    str
        ``"clemalign"``, ``"bigwarp"``, ``"ecclem"``, ``"napari"`` or ``"unknown"``.

    Raises
    ------
    FormatError
        When the file is empty.
    """
    text = _read_text(path)
    if not text.strip():
        raise FormatError(path, "the file is empty")
    if text.lstrip().startswith("<"):
        return "ecclem"
    row = _first_csv_row(text)
    if set(LANDMARK_COLUMNS[1:]) <= set(row):
        return "clemalign"
    if _is_bigwarp_row(row):
        return "bigwarp"
    if row[:2] == ["index", "axis-0"]:
        return "napari"
    return "unknown"


def read_landmarks_any(
    path: str | Path,
    em_px_per_um: float | None = None,
    lm_px_per_um: float | None = None,
) -> pd.DataFrame:
    """Read landmark pairs from our CSV, a BigWarp CSV or an ec-CLEM XML.

    The format is recognised from the content (:func:`landmark_format`). BigWarp
    files need both pixel sizes (for the half-pixel shift); ours and ec-CLEM's do not.
    For ec-CLEM the electron micrograph is taken as the source image.

    Parameters
    ----------
    path : str or Path
        Landmark file.
    em_px_per_um, lm_px_per_um : float, optional
        Pixel sizes of the EM (moving) and LM (fixed) images, px/um.

    Returns
    -------
    DataFrame
        Columns of :data:`clemalign.io.LANDMARK_COLUMNS`, um.

    Raises
    ------
    FormatError
        When the format is unknown, is a single napari points file, or a needed
        pixel size is missing.
    """
    kind = landmark_format(path)
    if kind == "clemalign":
        return read_landmarks(path)
    if kind == "ecclem":
        return read_ecclem_landmarks(path)
    if kind == "bigwarp":
        if em_px_per_um is None or lm_px_per_um is None:
            raise FormatError(
                path,
                "is a BigWarp landmark file; reading it needs the pixel sizes (px/um) of "
                "both the EM and the LM image",
            )
        return read_bigwarp_landmarks(path, em_px_per_um, lm_px_per_um)
    if kind == "napari":
        raise FormatError(
            path,
            "is a napari points file, which holds the points of one image only; pair the "
            "EM and LM files with read_napari_landmarks",
        )
    raise FormatError(
        path,
        "unknown landmark format; expected a clemalign CSV (em_x_um, em_y_um, lm_x_um, "
        "lm_y_um), a BigWarp landmarks CSV or an ec-CLEM XML",
    )
