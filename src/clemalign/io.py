"""Images, landmarks and JSON in and out, always with physical units.

TIFF files are written as ImageJ hyperstacks whose resolution tags hold pixels per
micrometre and whose unit is ``um``, so Fiji (and napari through tifffile) show the
right scale. Reading takes the pixel size from OME-XML, FEI/Thermo Fisher or Zeiss SEM
metadata when present, else from ImageJ files in um/nm/mm and plain TIFFs whose
resolution unit is the centimetre or the inch (see :func:`read_pixel_size`).
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from .errors import CaseError, ClemalignError

#: Columns of a landmark CSV: ``em_*`` in the electron micrograph (moving) frame,
#: ``lm_*`` in the light micrograph (fixed) frame, all in um, x along columns.
LANDMARK_COLUMNS = ["name", "em_x_um", "em_y_um", "lm_x_um", "lm_y_um"]

_UNIT_TO_UM = {
    "um": 1.0,
    "µm": 1.0,
    "\\u00B5m": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "mm": 1e3,
}

#: Micrometres per unit of the length units found in OME-XML and SEM metadata
#: (case-sensitive: OME's ``Mm`` is not ``mm``).
_LENGTH_UNIT_TO_UM = {
    "m": 1e6,
    "mm": 1e3,
    "um": 1.0,
    "\u00b5m": 1.0,  # micro sign, OME's spelling
    "\u03bcm": 1.0,  # Greek small mu
    "nm": 1e-3,
    "\u00c5": 1e-4,  # Latin capital A with ring, OME's spelling
    "\u212b": 1e-4,  # angstrom sign
    "pm": 1e-6,
}

#: Errors a present but malformed metadata block may raise while being read.
_METADATA_ERRORS = (ValueError, TypeError, KeyError, AttributeError, IndexError, ET.ParseError)


def write_tiff(
    path: str | Path,
    image: np.ndarray,
    px_per_um: float,
    description: dict | None = None,
) -> None:
    """Write a 2D (Y, X) or RGB (Y, X, 3) image with its pixel size.

    Parameters
    ----------
    path : str or Path
        Output file; parent folders are created.
    image : ndarray
        ``uint8``, ``uint16`` or ``float32`` data, shape (rows, cols) or
        (rows, cols, 3) for RGB.
    px_per_um : float
        Sampling in pixels per micrometre, same along rows and columns.
    description : dict, optional
        Extra key/value pairs stored in the ImageJ description (strings or numbers).
    """
    if not np.isfinite(px_per_um) or px_per_um <= 0:
        raise ValueError(f"px_per_um must be a positive number, got {px_per_um!r}")
    image = np.asarray(image)
    if image.dtype == np.float64:
        image = image.astype(np.float32)
    rgb = image.ndim == 3 and image.shape[-1] == 3
    if image.ndim != 2 and not rgb:
        raise ValueError(f"expected a (Y, X) or (Y, X, 3) image, got shape {image.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"unit": "um", "axes": "YXS" if rgb else "YX"}
    if description:
        metadata.update({str(k): v for k, v in description.items()})
    tifffile.imwrite(
        path,
        image,
        imagej=True,
        resolution=(float(px_per_um), float(px_per_um)),
        metadata=metadata,
        photometric="rgb" if rgb else "minisblack",
    )


def read_pixel_size(path: str | Path) -> float | None:
    """Pixels per micrometre stored in a TIFF, or None when the file has none.

    The first of these sources that yields a finite positive size wins:

    1. OME-XML: ``PhysicalSizeX`` of the first Image's ``Pixels``, in
       ``PhysicalSizeXUnit`` (default ``µm``; ``m``, ``mm``, ``um``/``µm``, ``nm``,
       ``Å`` and ``pm`` are understood).
    2. FEI/Thermo Fisher SEM tags (FEI_SFEG 34680 / FEI_HELIOS 34682):
       ``[Scan] PixelWidth``, else ``[EScan] PixelWidth``, in metres.
    3. Zeiss SEM tag (CZ_SEM 34118): ``AP_IMAGE_PIXEL_SIZE``, else ``AP_PIXEL_SIZE``,
       with its own unit (``pm``, ``nm``, ``µm``/``um``, ``mm``).
    4. The ``XResolution`` tag (pixels per unit) with the ImageJ ``unit``
       (um/nm/mm), else the TIFF ``ResolutionUnit`` (centimetre, or inch unless the
       value is a common screen dpi).

    A metadata block that is present but cannot be parsed is skipped.
    :func:`pixel_size_source` also tells which source gave the value.

    Parameters
    ----------
    path : str or Path
        A TIFF file.

    Returns
    -------
    float or None
        px/um along x (columns). None when the file carries no physical unit.
    """
    return pixel_size_source(path)[0]


def pixel_size_source(path: str | Path) -> tuple[float | None, str]:
    """Pixels per micrometre of a TIFF (as :func:`read_pixel_size`) and its source.

    Parameters
    ----------
    path : str or Path
        A TIFF file.

    Returns
    -------
    px_per_um : float or None
        px/um along x (columns), None when the file carries no physical unit.
    source : str
        ``"OME-XML PhysicalSizeX"``, ``"FEI Scan/PixelWidth"``,
        ``"FEI EScan/PixelWidth"``, ``"Zeiss SEM ap_image_pixel_size"``,
        ``"Zeiss SEM ap_pixel_size"``, ``"ImageJ/resolution tags"`` or ``"none"``.
    """
    with tifffile.TiffFile(path) as tif:
        sources = [
            ("OME-XML PhysicalSizeX", lambda: _ome_px_per_um(tif.ome_metadata)),
            ("FEI Scan/PixelWidth", lambda: _fei_px_per_um(tif.fei_metadata, "Scan")),
            ("FEI EScan/PixelWidth", lambda: _fei_px_per_um(tif.fei_metadata, "EScan")),
            (
                "Zeiss SEM ap_image_pixel_size",
                lambda: _zeiss_px_per_um(tif.sem_metadata, "ap_image_pixel_size"),
            ),
            (
                "Zeiss SEM ap_pixel_size",
                lambda: _zeiss_px_per_um(tif.sem_metadata, "ap_pixel_size"),
            ),
            ("ImageJ/resolution tags", lambda: _tags_px_per_um(tif)),
        ]
        for source, read in sources:
            try:
                value = read()
            except _METADATA_ERRORS:
                value = None
            if value is not None:
                return value, source
    return None, "none"


def _px_per_um(size: object, unit: object) -> float | None:
    """px/um of a pixel ``size`` in length ``unit``, None unless finite and positive."""
    factor = _LENGTH_UNIT_TO_UM.get(str(unit).strip())
    try:
        size_um = float(size) * factor
    except (TypeError, ValueError):  # unknown unit or not a number
        return None
    if not math.isfinite(size_um) or size_um <= 0:
        return None
    return 1.0 / size_um


def _ome_px_per_um(xml: str | None) -> float | None:
    """px/um from ``PhysicalSizeX`` of the first OME ``Pixels`` element."""
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for element in root.iter():
        if isinstance(element.tag, str) and element.tag.rsplit("}", 1)[-1] == "Pixels":
            size = element.get("PhysicalSizeX")
            if size is None:
                return None
            return _px_per_um(size, element.get("PhysicalSizeXUnit", "µm"))
    return None


def _fei_px_per_um(metadata: dict | None, section: str = "Scan") -> float | None:
    """px/um from ``[section] PixelWidth`` (metres) of tifffile's ``fei_metadata``."""
    if not isinstance(metadata, dict) or not isinstance(metadata.get(section), dict):
        return None
    width = metadata[section].get("PixelWidth")
    return None if width is None else _px_per_um(width, "m")


def _zeiss_px_per_um(metadata: dict | None, key: str = "ap_image_pixel_size") -> float | None:
    """px/um from a ``(label, value, unit)`` entry of tifffile's ``sem_metadata``."""
    if not isinstance(metadata, dict):
        return None
    entry = metadata.get(key)
    if not isinstance(entry, tuple) or len(entry) != 3:
        return None
    return _px_per_um(entry[1], entry[2])


def _tags_px_per_um(tif: tifffile.TiffFile) -> float | None:
    """px/um from ``XResolution`` with the ImageJ unit or the TIFF ``ResolutionUnit``."""
    page = tif.pages[0]
    tag = page.tags.get("XResolution")
    if tag is None:
        return None
    num, den = tag.value
    if num == 0 or den == 0:
        return None
    per_unit = num / den
    ij = tif.imagej_metadata or {}
    unit = ij.get("unit")
    if unit is not None:
        factor = _UNIT_TO_UM.get(str(unit).strip().lower())
        if factor is None:
            return None
        return per_unit * factor  # px per unit -> px per um
    res_unit = page.tags.get("ResolutionUnit")
    code = int(res_unit.value) if res_unit is not None else 2
    if code == 3:  # centimetre
        return per_unit / 1e4
    if code == 2 and per_unit not in (72.0, 96.0, 300.0, 1.0):  # inch, not a screen dpi
        return per_unit / 25400.0
    return None


def read_image(path: str | Path) -> tuple[np.ndarray, float | None]:
    """Read an image and its pixel size.

    Parameters
    ----------
    path : str or Path
        TIFF (any tifffile reads) or PNG/JPEG (no pixel size).

    Returns
    -------
    image : ndarray
        The pixel data as stored.
    px_per_um : float or None
        Pixel size read from the file, None when the file has none.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.suffix.lower() in (".tif", ".tiff"):
        return tifffile.imread(path), read_pixel_size(path)
    from skimage import io as skio

    return skio.imread(path), None


def read_mask(path: str | Path, shape: tuple[int, ...], case: str, image: str) -> np.ndarray:
    """A bead mask (nonzero = no beads here) of the ``image`` (``em``/``lm``) of ``case``.

    Raises
    ------
    CaseError
        When the mask is not a 2D image of the image's size (rows, cols).
    """
    mask, _ = read_image(path)
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] in (3, 4):
        mask = mask[..., :3].max(axis=-1)
    if mask.shape != tuple(shape[:2]):
        raise CaseError(
            case,
            f"{image}_mask has shape {mask.shape}, the {image} image {tuple(shape[:2])} "
            "(rows, cols): a mask must be drawn on the raw image",
            str(path),
        )
    return mask != 0


def tiff_axes(path: str | Path) -> str | None:
    """Axis letters of a TIFF's first series as tifffile reads them (``"ZCYX"``,
    ``"YXS"``...), or None for other formats."""
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    with tifffile.TiffFile(path) as tif:
        return tif.series[0].axes


def landmark_points(landmarks: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(EM xy um, LM xy um) of a landmark table (:data:`LANDMARK_COLUMNS`), each (N, 2)."""
    return (
        landmarks[["em_x_um", "em_y_um"]].to_numpy(float),
        landmarks[["lm_x_um", "lm_y_um"]].to_numpy(float),
    )


def write_landmarks(path: str | Path, table: pd.DataFrame) -> None:
    """Write landmark pairs as CSV with the columns of :data:`LANDMARK_COLUMNS`."""
    missing = [c for c in LANDMARK_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"landmark table lacks columns {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False, float_format="%.6f")


def read_landmarks(path: str | Path) -> pd.DataFrame:
    """Read a landmark CSV (columns of :data:`LANDMARK_COLUMNS`, um, x along columns).

    Raises
    ------
    ClemalignError
        When a column is missing or a coordinate is not a finite number.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"landmark file not found: {path}")
    table = pd.read_csv(path)
    if "name" not in table.columns:
        table.insert(0, "name", [f"L{i + 1}" for i in range(len(table))])
    missing = [c for c in LANDMARK_COLUMNS if c not in table.columns]
    if missing:
        raise ClemalignError(
            f"landmark file {path} lacks columns {missing}; expected {LANDMARK_COLUMNS}"
        )
    coords = table[LANDMARK_COLUMNS[1:]].to_numpy(dtype=float)
    if not np.all(np.isfinite(coords)):
        bad = table.loc[~np.isfinite(coords).all(axis=1), "name"].tolist()
        raise ClemalignError(f"landmark file {path} has non-numeric coordinates in rows {bad}")
    table["name"] = table["name"].astype(str)
    return table


#: Columns of the per-case tables that hold names and statuses, never numbers.
TEXT_COLUMNS = ("case", "source", "measure", "status", "reference", "protocol", "route")


def read_case_table(path: str | Path) -> pd.DataFrame:
    """A per-case results table (CSV) with its name columns (:data:`TEXT_COLUMNS`) read as
    written: a case named ``NA``, ``nan`` or ``null`` stays that name, not a missing
    value. Empty cells of the other columns are NaN."""
    columns = pd.read_csv(path, nrows=0).columns
    text = [c for c in columns if c in TEXT_COLUMNS]
    missing = {c: ["", "nan", "NaN"] for c in columns if c not in TEXT_COLUMNS}
    return pd.read_csv(
        path, keep_default_na=False, na_values=missing, dtype=dict.fromkeys(text, str)
    )


def write_json(path: str | Path, data: dict) -> None:
    """Write a dict as indented JSON (numpy values converted)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def read_json(path: str | Path) -> dict:
    """Read a JSON file into a dict."""
    return json.loads(Path(path).read_text())


def _json_default(value: object) -> object:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
