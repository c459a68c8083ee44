"""How each registration of the analogy track is scored (paper sec. 5.3, Table 2).

The routes (moving image, fixed image, measures) are :mod:`clemalign.routes`; the
``landmark`` row is no registration: the affine least-squares fit to the manual
landmarks (measure ``fit``), the best the transformation model can do against them.

Scores: the landmark MAE and STD (um) of the transform, and for synthetic cases the mean
distance (um) to the ground truth over the TEM grid (the true deformation field of the
realistic phantom, whose non-affine part no affine can remove).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from .io import landmark_points
from .metrics import mae_std
from .phantom.realism import best_smoothed_inverted_tem
from .register import (
    grid_error_um,
    pixel_centres_um,
)
from .training import confocal_in_em_frame
from .transforms import (
    DeformationField,
    Transform,
    apply,
    fit_affine,
    warp_image,
    xy_um_to_rc_px,
)

#: Columns of the long Table 2.
LONG_COLUMNS = ["case", "source", "measure", "mae_um", "std_um", "status", "gt_mean_um"]


def frame_ground_truth(frame: dict) -> np.ndarray | DeformationField | None:
    """The true TEM um -> crop um mapping of a ``frame.json`` (synthetic data), else None.

    The deformation field when the phantom had a non-rigid distortion (realistic model),
    otherwise the affine matrix.
    """
    if "ground_truth_field" in frame:
        return DeformationField.from_dict(frame["ground_truth_field"])
    if "ground_truth" not in frame:
        return None
    return Transform.from_dict(frame["ground_truth"]).matrix


def map_points(mapping: np.ndarray | DeformationField, points_xy: np.ndarray) -> np.ndarray:
    """Points (N, 2) um mapped by an affine matrix (3, 3) or a :class:`DeformationField`."""
    if isinstance(mapping, DeformationField):
        return mapping.apply(points_xy)
    return apply(np.asarray(mapping, float), points_xy)


def truth_error_um(
    mapping: np.ndarray | DeformationField,
    truth: np.ndarray | DeformationField,
    shape: tuple[int, int],
    px_per_um: float,
) -> float:
    """Mean distance (um) over the TEM pixel grid between a registration and the truth.

    Parameters
    ----------
    mapping : ndarray, shape (3, 3), or DeformationField
        TEM um -> crop um: an affine, or the field of a non-rigid refinement.
    truth : ndarray or DeformationField
        The true mapping (an affine, or the non-rigid field of the realistic phantom;
        then even the best affine keeps the field's non-affine part as error).
    shape, px_per_um
        TEM grid (rows, cols) and its sampling.
    """
    if not isinstance(truth, DeformationField) and not isinstance(mapping, DeformationField):
        return grid_error_um(mapping, truth, shape, px_per_um)
    xy = pixel_centres_um(tuple(shape), px_per_um)
    diff = map_points(mapping, xy) - map_points(truth, xy)
    return float(np.mean(np.hypot(diff[:, 0], diff[:, 1])))


def confocal_on_tem_grid(
    tem: np.ndarray, confocal: np.ndarray, px_per_um: float, frame: dict, landmarks: pd.DataFrame
) -> tuple[np.ndarray, str]:
    """The confocal crop resampled onto the TEM grid, and what brought it there.

    By the ground-truth TEM -> crop mapping when ``frame`` (``frame.json``) has one
    (synthetic data; the deformation field where there is one), otherwise by the
    affine fitted to the landmarks. NaN where the confocal has no data.

    Returns
    -------
    image : ndarray
    reference : {"ground truth", "landmark affine"}
    """
    gt = frame_ground_truth(frame)
    if isinstance(gt, DeformationField):
        xy = pixel_centres_um(tem.shape, px_per_um)
        rc = xy_um_to_rc_px(gt.apply(xy), px_per_um).T
        image = ndimage.map_coordinates(
            np.asarray(confocal, np.float32), rc, order=1, mode="constant", cval=np.nan
        )
        return image.reshape(tem.shape), "ground truth"
    if gt is not None:
        image = warp_image(confocal, px_per_um, np.linalg.inv(gt), tem.shape, px_per_um)
        return image, "ground truth"
    return confocal_in_em_frame(tem, confocal, px_per_um, landmarks), "landmark affine"


def landmark_fit(landmarks: pd.DataFrame) -> np.ndarray:
    """The affine least-squares fit to the landmarks (TEM um -> crop um): Table 2's reference."""
    return fit_affine(*landmark_points(landmarks))


def score(
    mapping: np.ndarray | DeformationField,
    landmarks: pd.DataFrame,
    ground_truth: np.ndarray | DeformationField | None,
    shape: tuple[int, int],
    px_per_um: float,
) -> dict[str, float]:
    """Landmark MAE/STD (um) of a TEM->crop transform, and its ground-truth grid error.

    Parameters
    ----------
    mapping : ndarray, shape (3, 3), or DeformationField
        TEM um -> crop um: an affine, or the field of a non-rigid refinement.
    landmarks : DataFrame
        ``em_x_um, em_y_um`` (TEM frame) and ``lm_x_um, lm_y_um`` (crop frame).
    ground_truth : ndarray, DeformationField or None
        True TEM -> crop mapping (synthetic cases).
    shape : (int, int)
        TEM grid (rows, cols) over which the ground-truth error is averaged.
    px_per_um : float
        TEM grid sampling.

    Returns
    -------
    dict
        ``mae_um``, ``std_um`` (sample STD of the absolute errors) and ``gt_mean_um``
        (NaN without ground truth).
    """
    em_xy, lm_xy = landmark_points(landmarks)
    diff = map_points(mapping, em_xy) - lm_xy
    mae, std = mae_std(np.hypot(diff[:, 0], diff[:, 1]))
    gt = float("nan")
    if ground_truth is not None:
        gt = truth_error_um(mapping, ground_truth, shape, px_per_um)
    return {"mae_um": mae, "std_um": std, "gt_mean_um": gt}


#: Gaussian FWHM per sigma.
FWHM_PER_SIGMA = 2.3548


def inverted_tem_sigmas_um(
    tems: Sequence[np.ndarray],
    confocals: Sequence[np.ndarray],
    px_per_um: Sequence[float],
    psf_fwhm_um: float | None,
) -> tuple[list[float], list[float]]:
    """Blur (sigma, um) of each case's inverted-TEM baseline in the prediction-quality table.

    With a known lateral PSF (FWHM, um) every case gets its sigma. Without one, each case
    gets the median of the *other* cases' best blur
    (:func:`clemalign.phantom.realism.best_smoothed_inverted_tem`, TEM against its confocal
    on the TEM grid): leave-one-out, never fitted on the case it is scored on.

    Returns
    -------
    sigmas_um : list of float
        One per case.
    best_um : list of float
        Each case's own best blur (empty when the PSF was given).
    """
    if psf_fwhm_um is not None:
        return [psf_fwhm_um / FWHM_PER_SIGMA] * len(tems), []
    best = [
        best_smoothed_inverted_tem(t, c, p)[0]
        for t, c, p in zip(tems, confocals, px_per_um, strict=True)
    ]
    others = [best[:i] + best[i + 1 :] for i in range(len(best))]
    return [float(np.nanmedian(o)) if o else float("nan") for o in others], best
