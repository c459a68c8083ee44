"""Affine geometry in micrometres: build, fit, apply, and store transforms.

All matrices are 3x3 homogeneous and act on column vectors ``[x, y, 1]`` with ``x``
along image columns, in um. A :class:`Transform` maps moving to fixed points. Nothing
here assumes a positive determinant or an isotropic scale: mirrored and anisotropic
transforms are first-class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import read_json, write_json


def affine_matrix(
    rotation_deg: float = 0.0,
    scale: tuple[float, float] = (1.0, 1.0),
    shear: float = 0.0,
    translation_um: tuple[float, float] = (0.0, 0.0),
    mirror: bool = False,
    center_um: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Compose an affine from interpretable parameters.

    The linear part is ``R(rotation) @ Shear(shear) @ diag(scale) @ Mirror``, applied
    about ``center_um`` and followed by ``translation_um``:
    ``x' = L (x - c) + c + t``.

    Parameters
    ----------
    rotation_deg : float
        Counter-clockwise rotation in the (x, y) plane, degrees (with y pointing down
        in an image this appears clockwise on screen).
    scale : (float, float)
        Scale along x and y (unitless).
    shear : float
        Shear factor: x' = x + shear * y before rotation.
    translation_um : (float, float)
        Translation (tx, ty) in um.
    mirror : bool
        Flip x before everything else (determinant becomes negative).
    center_um : (float, float)
        Point (x, y) in um about which the linear part acts.

    Returns
    -------
    ndarray, shape (3, 3)
    """
    theta = np.deg2rad(rotation_deg)
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    shr = np.array([[1.0, shear], [0.0, 1.0]])
    scl = np.diag([float(scale[0]), float(scale[1])])
    mir = np.diag([-1.0, 1.0]) if mirror else np.eye(2)
    linear = rot @ shr @ scl @ mir
    center = np.asarray(center_um, dtype=float)
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = center - linear @ center + np.asarray(translation_um, dtype=float)
    return matrix


def translation_matrix(tx_um: float, ty_um: float) -> np.ndarray:
    """3x3 matrix that adds (tx, ty) um."""
    matrix = np.eye(3)
    matrix[:2, 2] = (tx_um, ty_um)
    return matrix


def apply(matrix: np.ndarray, points_xy: np.ndarray) -> np.ndarray:
    """Map points (N, 2) in (x, y) um through a 3x3 matrix; returns (N, 2) in um."""
    pts = np.asarray(points_xy, dtype=float).reshape(-1, 2)
    return pts @ matrix[:2, :2].T + matrix[:2, 2]


def _check_pairs(src: np.ndarray, dst: np.ndarray, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    src = np.asarray(src, dtype=float).reshape(-1, 2)
    dst = np.asarray(dst, dtype=float).reshape(-1, 2)
    if src.shape != dst.shape:
        raise ValueError(f"point sets differ in size: {src.shape[0]} vs {dst.shape[0]}")
    if src.shape[0] < minimum:
        raise ValueError(f"need at least {minimum} point pairs, got {src.shape[0]}")
    return src, dst


def fit_affine(src_xy: np.ndarray, dst_xy: np.ndarray) -> np.ndarray:
    """Least-squares affine mapping ``src`` onto ``dst`` (both (N, 2) um, N >= 3).

    Raises
    ------
    ValueError
        With fewer than 3 pairs or collinear source points.
    """
    src, dst = _check_pairs(src_xy, dst_xy, 3)
    design = np.hstack([src, np.ones((src.shape[0], 1))])
    centred = src - src.mean(axis=0)
    sv = np.linalg.svd(centred, compute_uv=False)
    if sv[-1] <= 1e-9 * max(sv[0], 1e-12):
        raise ValueError("source points are collinear; an affine is not determined")
    params, *_ = np.linalg.lstsq(design, dst, rcond=None)
    matrix = np.eye(3)
    matrix[:2, :] = params.T
    return matrix


def fit_similarity(
    src_xy: np.ndarray, dst_xy: np.ndarray, allow_reflection: bool = True
) -> np.ndarray:
    """Least-squares similarity (rotation, isotropic scale, translation[, mirror]).

    Umeyama's closed form. With ``allow_reflection`` the better of the proper and the
    mirrored solution is returned, because EM and LM images often differ by a flip.

    Parameters
    ----------
    src_xy, dst_xy : ndarray, shape (N, 2)
        Corresponding points in um, N >= 2.
    allow_reflection : bool
        Consider a mirrored solution too.

    Returns
    -------
    ndarray, shape (3, 3)
    """
    src, dst = _check_pairs(src_xy, dst_xy, 2)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    var_s = (a**2).sum() / len(a)
    if var_s <= 0:
        raise ValueError("source points all coincide; a similarity is not determined")
    cov = b.T @ a / len(a)
    u, sv, vt = np.linalg.svd(cov)
    proper = 1.0 if np.linalg.det(u @ vt) >= 0 else -1.0  # makes u @ d @ vt a rotation
    best = None
    for last in (proper, -proper) if allow_reflection else (proper,):
        d = np.diag([1.0, last])
        rot = u @ d @ vt
        scale = np.trace(np.diag(sv) @ d) / var_s
        if scale <= 0:
            continue
        linear = scale * rot
        residual = ((a @ linear.T - b) ** 2).sum()
        if best is None or residual < best[0]:
            best = (residual, linear)
    if best is None:
        raise ValueError("no similarity with positive scale fits these points")
    linear = best[1]
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = mu_d - linear @ mu_s
    return matrix


def px_to_um(index: np.ndarray | float, px_per_um: float) -> np.ndarray | float:
    """Pixel index along one axis -> um of that pixel's centre: ``(i + 0.5) / p``.

    The one place of the pixel-centre convention (see :mod:`clemalign`), with
    :func:`um_to_px`.
    """
    return (index + 0.5) / px_per_um


def um_to_px(coord_um: np.ndarray | float, px_per_um: float) -> np.ndarray | float:
    """um along one axis -> fractional pixel index (centres at integers): ``x p - 0.5``."""
    return coord_um * px_per_um - 0.5


def rc_px_to_xy_um(rc_px: np.ndarray, px_per_um: float) -> np.ndarray:
    """Pixel indices (row, col) (N, 2) -> physical (x, y) um of the pixel centres."""
    rc = np.asarray(rc_px, dtype=float).reshape(-1, 2)
    return px_to_um(rc[:, ::-1], px_per_um)


def xy_um_to_rc_px(xy_um: np.ndarray, px_per_um: float) -> np.ndarray:
    """Physical (x, y) um (N, 2) -> fractional pixel indices (row, col)."""
    xy = np.asarray(xy_um, dtype=float).reshape(-1, 2)
    return um_to_px(xy[:, ::-1], px_per_um)


@dataclass
class Transform:
    """A 3x3 affine in um mapping points of the moving image onto the fixed image.

    Attributes
    ----------
    matrix : ndarray, shape (3, 3)
        Homogeneous matrix acting on [x, y, 1] in um, x along columns.
    moving, fixed : str
        Names of the moving and fixed images (file or role).
    method : str
        How the transform was obtained.
    extra : dict
        Anything else worth keeping (residuals, parameters).
    """

    matrix: np.ndarray
    moving: str
    fixed: str
    method: str
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.matrix = np.asarray(self.matrix, dtype=float)
        if self.matrix.shape != (3, 3) or not np.allclose(self.matrix[2], [0, 0, 1]):
            raise ValueError(f"a transform must be a 3x3 affine matrix, got {self.matrix!r}")

    def apply(self, points_xy: np.ndarray) -> np.ndarray:
        """Map moving points (N, 2) um to fixed points (N, 2) um."""
        return apply(self.matrix, points_xy)

    def to_dict(self) -> dict:
        """JSON-ready dict in the project convention (DESIGN.md)."""
        return {
            "matrix": self.matrix.tolist(),
            "units": "um",
            "direction": "moving_to_fixed",
            "convention": "x_fixed = M @ [x_moving, y_moving, 1]; x along columns, "
            "origin at the outer corner of pixel (0, 0)",
            "moving": self.moving,
            "fixed": self.fixed,
            "method": self.method,
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Transform:
        """Inverse of :meth:`to_dict`; checks units and direction."""
        if data.get("units", "um") != "um":
            raise ValueError(f"transform units must be 'um', got {data.get('units')!r}")
        if data.get("direction", "moving_to_fixed") != "moving_to_fixed":
            raise ValueError(
                f"transform direction must be moving_to_fixed: {data.get('direction')!r}"
            )
        return cls(
            matrix=np.asarray(data["matrix"], dtype=float),
            moving=data.get("moving", ""),
            fixed=data.get("fixed", ""),
            method=data.get("method", ""),
            extra=data.get("extra", {}),
        )

    def save(self, path: str | Path) -> None:
        """Write as JSON."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Transform:
        """Read a JSON written by :meth:`save`."""
        return cls.from_dict(read_json(path))


def warp_image(
    moving: np.ndarray,
    moving_px_per_um: float,
    matrix: np.ndarray,
    fixed_shape: tuple[int, int],
    fixed_px_per_um: float,
    order: int = 1,
    cval: float = np.nan,
) -> np.ndarray:
    """Resample a moving image onto the fixed image's grid through a moving->fixed affine.

    Each fixed pixel centre is mapped back (inverse of ``matrix``) into the moving
    image, which is low-passed first when it is finer than the fixed grid.

    Parameters
    ----------
    moving : ndarray
        2D moving image at ``moving_px_per_um``.
    matrix : ndarray, shape (3, 3)
        Moving um -> fixed um.
    fixed_shape : (int, int)
        Rows, cols of the output.
    fixed_px_per_um : float
        Output sampling.
    order : int
        Interpolation order.
    cval : float
        Value outside the moving image.

    Returns
    -------
    ndarray of float32
    """
    from scipy import ndimage

    img = np.asarray(moving, dtype=np.float32)
    inv = np.linalg.inv(matrix)
    linear = np.sqrt(abs(np.linalg.det(inv[:2, :2])))  # moving um per fixed um
    factor = moving_px_per_um * linear / fixed_px_per_um  # moving px per fixed px
    if factor > 1.0:
        img = ndimage.gaussian_filter(img, (factor - 1.0) / 2.0)
    rows, cols = np.indices(fixed_shape, dtype=float)
    xy = np.stack([(cols.ravel() + 0.5), (rows.ravel() + 0.5)], 1) / fixed_px_per_um
    src = apply(inv, xy)
    rc = xy_um_to_rc_px(src, moving_px_per_um).T
    out = ndimage.map_coordinates(img, rc, order=order, mode="constant", cval=cval)
    return out.reshape(fixed_shape).astype(np.float32)


@dataclass
class DeformationField:
    """A smooth, non-affine moving -> fixed mapping sampled on a regular grid (um).

    ``phi(x) = affine @ x + residual(x)``: ``affine`` is the least-squares affine of the
    mapping over the moving field (the best any affine method can do), ``residual`` is
    what no affine explains, sampled at grid nodes ``origin_um + (col, row) *
    spacing_um`` of the moving frame and interpolated by cubic splines in between
    (clamped to the nearest node outside the grid).

    Attributes
    ----------
    affine : ndarray, shape (3, 3)
        Best-fitting affine, moving um -> fixed um.
    origin_um : (float, float)
        (x, y) of grid node (0, 0) in the moving frame, um.
    spacing_um : float
        Grid spacing, um.
    residual_um : ndarray, shape (rows, cols, 2)
        ``phi - affine`` at the nodes, (dx, dy) in fixed um.
    field_um : (float, float)
        (width, height) of the moving field over which ``affine`` was fitted, um.
    """

    affine: np.ndarray
    origin_um: tuple[float, float]
    spacing_um: float
    residual_um: np.ndarray
    field_um: tuple[float, float]

    @classmethod
    def from_mapping(
        cls, mapping, field_um: tuple[float, float], spacing_um: float, margin_um: float
    ) -> DeformationField:
        """Sample a callable mapping (N, 2) -> (N, 2) um over a moving field (+ margin).

        The best affine is fitted to the nodes inside the field, so it is the
        least-squares affine of the mapping over the field.
        """
        w, h = field_um
        xs = np.arange(-margin_um, w + margin_um + spacing_um / 2, spacing_um)
        ys = np.arange(-margin_um, h + margin_um + spacing_um / 2, spacing_um)
        gx, gy = np.meshgrid(xs, ys)
        nodes = np.stack([gx.ravel(), gy.ravel()], 1)
        mapped = np.asarray(mapping(nodes), dtype=float)
        inside = (nodes[:, 0] >= 0) & (nodes[:, 0] <= w) & (nodes[:, 1] >= 0) & (nodes[:, 1] <= h)
        affine = fit_affine(nodes[inside], mapped[inside])
        residual = (mapped - apply(affine, nodes)).reshape(len(ys), len(xs), 2)
        return cls(affine, (float(xs[0]), float(ys[0])), float(spacing_um), residual, (w, h))

    def residual(self, points_xy: np.ndarray) -> np.ndarray:
        """The non-affine part (N, 2) um at moving points (N, 2) um."""
        from scipy import ndimage

        pts = np.asarray(points_xy, dtype=float).reshape(-1, 2)
        col = (pts[:, 0] - self.origin_um[0]) / self.spacing_um
        row = (pts[:, 1] - self.origin_um[1]) / self.spacing_um
        return np.stack(
            [
                ndimage.map_coordinates(
                    self.residual_um[..., k], [row, col], order=3, mode="nearest"
                )
                for k in range(2)
            ],
            axis=1,
        )

    def apply(self, points_xy: np.ndarray) -> np.ndarray:
        """Map moving points (N, 2) um to fixed points (N, 2) um."""
        return apply(self.affine, points_xy) + self.residual(points_xy)

    def then(self, matrix: np.ndarray) -> DeformationField:
        """The mapping followed by an affine ``matrix`` (fixed um -> another frame's um)."""
        matrix = np.asarray(matrix, dtype=float)
        residual = self.residual_um @ matrix[:2, :2].T
        return DeformationField(
            matrix @ self.affine, self.origin_um, self.spacing_um, residual, self.field_um
        )

    def floor_rms_um(self) -> float:
        """RMS (um) of the non-affine part over the moving field: no affine does better."""
        rows, cols = self.residual_um.shape[:2]
        x = self.origin_um[0] + np.arange(cols) * self.spacing_um
        y = self.origin_um[1] + np.arange(rows) * self.spacing_um
        inside = ((y >= 0) & (y <= self.field_um[1]))[:, None] & (
            (x >= 0) & (x <= self.field_um[0])
        )[None, :]
        return float(np.sqrt(np.mean(np.sum(self.residual_um[inside] ** 2, axis=-1))))

    def to_dict(self) -> dict:
        """JSON-ready dict (residuals rounded to 0.1 nm)."""
        return {
            "kind": "deformation_field",
            "units": "um",
            "direction": "moving_to_fixed",
            "convention": "x_fixed = affine @ [x, y, 1] + residual(x, y); residual "
            "(dx, dy) sampled at moving-frame nodes origin_um + (col, row) * spacing_um, "
            "cubic-spline interpolated",
            "affine": self.affine.tolist(),
            "origin_um": list(self.origin_um),
            "spacing_um": self.spacing_um,
            "field_um": list(self.field_um),
            "floor_rms_um": self.floor_rms_um(),
            "residual_um": np.round(self.residual_um, 4).tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> DeformationField:
        """Inverse of :meth:`to_dict`."""
        if data.get("units", "um") != "um" or data.get("direction") != "moving_to_fixed":
            raise ValueError("a deformation field must be in um, moving_to_fixed")
        return cls(
            np.asarray(data["affine"], dtype=float),
            tuple(float(v) for v in data["origin_um"]),
            float(data["spacing_um"]),
            np.asarray(data["residual_um"], dtype=float),
            tuple(float(v) for v in data["field_um"]),
        )


def transform_record(
    status: str,
    matrix_um: np.ndarray | None,
    moving: str,
    fixed: str,
    method: str,
    extra: Mapping | None = None,
    rejected_um: np.ndarray | None = None,
) -> dict:
    """A transform file: :meth:`clemalign.transforms.Transform.to_dict` plus ``status``;
    without a matrix ``matrix: null`` (as a fiducial method's transform file) and, when
    given, the matrix the checks rejected as ``rejected_matrix``."""
    extra = dict(extra or {})
    if matrix_um is not None:
        return {**Transform(matrix_um, moving, fixed, method, extra).to_dict(), "status": status}
    rejected = {} if rejected_um is None else {"rejected_matrix": np.asarray(rejected_um).tolist()}
    return {
        "matrix": None,
        "units": "um",
        "direction": "moving_to_fixed",
        "moving": moving,
        "fixed": fixed,
        "method": method,
        "status": status,
        **rejected,
        **({"extra": extra} if extra else {}),
    }
