"""Training pairs of the image-analogy methods (paper sec. 5.3).

Both the sparse method and the original image analogies learn from other cases: each
training case's confocal is brought onto its TEM grid (by the landmark affine, optionally
refined by registration), the TEM is put into the intensity the dictionaries see, and
random paired patches are drawn from the result.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from .dictionary import lasso_lars, learn_dictionary
from .io import landmark_points, read_image, read_landmarks
from .register import register_affine
from .sparse_analogy import JointDictionary, em_for_coding, extract_patches
from .transforms import fit_affine, warp_image

#: How a training pair's confocal is brought onto its TEM grid.
TRAINING_ALIGNMENTS = ("landmarks", "registered")


def align_training_pair(
    em: np.ndarray,
    lm: np.ndarray,
    px_per_um: float,
    landmarks: pd.DataFrame,
    alignment: str = "landmarks",
) -> tuple[np.ndarray, np.ndarray]:
    """The confocal of a training case on its TEM grid, and the TEM -> crop affine used.

    Parameters
    ----------
    em, lm : ndarray
        Preprocessed TEM and confocal crop, both at ``px_per_um``.
    landmarks : DataFrame
        ``em_x_um, em_y_um`` (TEM frame) and ``lm_x_um, lm_y_um`` (crop frame), um.
    alignment : {"landmarks", "registered"}
        ``"landmarks"``: the affine least-squares fit to the landmarks (what the paper's
        training pairs rest on). ``"registered"``: that fit refined by mutual-information
        registration of the TEM to the confocal (:func:`clemalign.register.register_affine`).
        Landmark fits carry the annotators' error (on the default data 0.04-0.09 um over
        the field), which the learned mapping inherits as a bias of every prediction;
        the refinement uses only the training case itself, never the test case.

    Returns
    -------
    confocal : ndarray
        The confocal resampled onto the TEM grid (linear interpolation), NaN where it has
        no data.
    matrix : ndarray, shape (3, 3)
        TEM um -> crop um.
    """
    if alignment not in TRAINING_ALIGNMENTS:
        raise ValueError(f"unknown training alignment {alignment!r}; use {TRAINING_ALIGNMENTS}")
    matrix = fit_affine(*landmark_points(landmarks))
    if alignment == "registered":
        matrix = register_affine(
            em, lm, matrix, moving_px_per_um=px_per_um, fixed_px_per_um=px_per_um, measure="mi"
        ).matrix
    confocal = warp_image(lm, px_per_um, np.linalg.inv(matrix), em.shape, px_per_um, order=1)
    return confocal, matrix


def training_pair(
    em: np.ndarray,
    lm: np.ndarray,
    px_per_um: float,
    landmarks: pd.DataFrame,
    em_intensity: str = "inverted",
    alignment: str = "landmarks",
) -> tuple[np.ndarray, np.ndarray]:
    """One preprocessed training case as (TEM as coded, confocal on the TEM grid).

    The TEM through :func:`clemalign.sparse_analogy.em_for_coding` (``em_intensity``),
    the confocal brought onto the TEM grid by :func:`align_training_pair`
    (``alignment``); NaN marks confocal pixels without data.
    """
    confocal, _ = align_training_pair(em, lm, px_per_um, landmarks, alignment)
    return em_for_coding(em, em_intensity), confocal


def load_training_pairs(
    em_paths: list[str],
    lm_paths: list[str],
    landmark_paths: list[str],
    em_intensity: str,
    alignment: str,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`training_pair` of preprocessed training cases read from files.

    Both image-analogy methods learn from these.
    """
    pairs = []
    for em_path, lm_path, lmk_path in zip(em_paths, lm_paths, landmark_paths, strict=True):
        em, ppu = read_image(em_path)
        lm, _ = read_image(lm_path)
        pairs.append(training_pair(em, lm, ppu, read_landmarks(lmk_path), em_intensity, alignment))
    return pairs


def confocal_in_em_frame(
    em: np.ndarray, lm: np.ndarray, px_per_um: float, landmarks: pd.DataFrame
) -> np.ndarray:
    """The confocal resampled onto the TEM grid through the affine fitted to the landmarks.

    Both images are in the preprocessed sampling ``px_per_um``; landmarks hold ``em_*``
    in the TEM frame and ``lm_*`` in the crop frame (um). Pixels the confocal does not
    cover are NaN. (:func:`align_training_pair` with ``"landmarks"``.)
    """
    return align_training_pair(em, lm, px_per_um, landmarks, "landmarks")[0]


def training_patches(
    pairs: list[tuple[np.ndarray, np.ndarray]], n_patches: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    """Random paired patches, TEM on top of confocal: columns of length 2 size².

    Parameters
    ----------
    pairs : list of (tem, confocal)
        Aligned images (same grid); NaN marks confocal pixels without data.
    n_patches : int
        Total number of patches, split evenly over the pairs.
    size : int
        Patch side, px.
    rng : numpy.random.Generator

    Returns
    -------
    ndarray, shape (2 size², n_patches)
    """
    out = []
    share = np.diff(np.linspace(0, n_patches, len(pairs) + 1).round().astype(int))
    for (tem, conf), n in zip(pairs, share, strict=True):
        valid = ~np.isnan(sliding_window_view(conf, (size, size))).any(axis=(2, 3))
        positions = np.flatnonzero(valid)
        if positions.size == 0:
            raise ValueError("a training pair has no patch where the confocal has data")
        pick = rng.choice(positions, n, replace=positions.size < n)
        top = extract_patches(tem, size)[:, pick]
        bottom = extract_patches(np.nan_to_num(conf), size)[:, pick]
        out.append(np.vstack([top, bottom]))
    return np.hstack(out)


def learn_joint_dictionary(
    pairs: list[tuple[np.ndarray, np.ndarray]],
    *,
    patch_size: int,
    n_patches: int,
    n_atoms: int,
    lam: float,
    rng: np.random.Generator,
    tol: float = 2e-4,
    max_iter: int = 40,
    training_cases: Sequence[str] = (),
    log: logging.Logger | None = None,
) -> JointDictionary:
    """Learn the joint TEM/confocal dictionary from training pairs (paper eq. 8).

    Draws ``n_patches`` random paired patches (:func:`training_patches`), learns
    ``n_atoms`` atoms (:func:`clemalign.dictionary.learn_dictionary`) and orders them by
    how many training patches use them (most used first, as the paper's Fig. 6 shows).

    Parameters
    ----------
    pairs : list of (tem, confocal)
        From :func:`load_training_pairs` (TEM as coded, confocal on the TEM grid).
    patch_size, n_patches, n_atoms : int
        Paper: 15, 10000, 900.
    lam : float
        λ of eq. 8 (paper: 1).
    rng : numpy.random.Generator
        Draws the patches, then initialises learning (seed it by the test case's name:
        :func:`clemalign.seeds.rng_for`).
    tol, max_iter
        Stopping of learning.
    training_cases : sequence of str
        Names recorded with the dictionary.
    """
    X = training_patches(pairs, n_patches, patch_size, rng)
    if log is not None:
        log.info("%d patch pairs of %dx%d px", X.shape[1], patch_size, patch_size)
    learned = learn_dictionary(X, n_atoms, lam, rng, tol, max_iter, log)
    usage = (lasso_lars(X, learned.D, lam) != 0).sum(axis=1)
    order = np.argsort(-usage, kind="stable")
    D = learned.D[:, order]
    m = patch_size * patch_size
    params = {"patch_size": patch_size, "n_patches": n_patches, "n_atoms": n_atoms}
    params.update({"lambda": lam, "tol": tol, "max_iter": max_iter})
    return JointDictionary(
        D[:m],
        D[m:],
        usage[order],
        list(training_cases),
        np.array(learned.history),
        learned.converged,
        params,
    )
