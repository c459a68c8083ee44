"""Images, landmarks and JSON in and out, always with physical units.

TIFF files are written as ImageJ hyperstacks whose resolution tags hold pixels per
micrometre and whose unit is ``um``, so Fiji (and napari through tifffile) show the
right scale. Reading accepts ImageJ files in um/nm/mm and plain TIFFs whose resolution
unit is the centimetre or the inch.
"""

from __future__ import annotations

import json
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

    Parameters
    ----------
    path : str or Path
        A TIFF file.

    Returns
    -------
    float or None
        px/um along x (columns). None when the file carries no physical unit.
    """
    with tifffile.TiffFile(path) as tif:
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
