"""Image analogies with a sparse representation (paper sec. 4.2-4.7).

Images are 2D float arrays in [0, 1] on a common sampling (the preprocessed frame,
14.52 px/um by default); patches are ``p x p`` windows flattened row by row into
columns. Patch ``i`` is the window whose top-left pixel is ``(row, col)`` in row-major
order over all valid positions.

* :func:`em_for_coding`: the TEM as the dictionaries see it (training pairs and patches:
  :mod:`clemalign.training`).
* :func:`predict_decoupled`: each TEM patch coded alone against the TEM half of the
  dictionary, the confocal halves of the codes averaged where patches overlap (what the
  authors' published code runs), and the spread of those overlapping predictions.
* :func:`reconstruct`: the joint problem of eq. 7 (``L = V = I``) — or eq. 5 when no
  second dictionary is given (consistent denoising, sec. 4.7) — solved to its optimum by
  block-coordinate descent: the images in closed form given the codes, the codes by an
  exact lasso given the images.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import sparse

from ._lasso_numba import decode_overlap, decode_rows, patches_into, residual_sq
from .dictionary import _lasso_codes, lasso_codes, lasso_codes_on_working_set

LOG = logging.getLogger(__name__)

#: Over-relaxation ω of the image step of :func:`reconstruct` (1 = plain block descent).
_OVERRELAX = 1.8
_WORKING_STEPS = 6
_N_NEAR = 16


def extract_patches(image: np.ndarray, size: int) -> np.ndarray:
    """All overlapping ``size x size`` patches of a 2D image as columns (size², n)."""
    win = sliding_window_view(np.asarray(image, dtype=np.float64), (size, size))
    return win.reshape(-1, size * size).T


def overlap_sum(
    patches: np.ndarray, shape: tuple[int, int], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Put patch columns back at their positions: per-pixel sum and count of patches."""
    rows, cols = shape[0] - size + 1, shape[1] - size + 1
    total = np.zeros(shape)
    count = np.zeros(shape)
    stack = np.asarray(patches).T.reshape(rows, cols, size, size)
    for dy in range(size):
        for dx in range(size):
            total[dy : dy + rows, dx : dx + cols] += stack[:, :, dy, dx]
            count[dy : dy + rows, dx : dx + cols] += 1.0
    return total, count


def overlap_spread(patches: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """Per-pixel standard deviation of the overlapping patch values."""
    total, count = overlap_sum(patches, shape, size)
    squares, _ = overlap_sum(np.asarray(patches) ** 2, shape, size)
    mean = total / count
    return np.sqrt(np.maximum(squares / count - mean**2, 0.0))


def scale_unit(image: np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """Scale a non-negative map to [0, 1] by its ``percentile`` (values above clip to 1)."""
    top = float(np.percentile(image, percentile))
    return np.clip(image / top, 0.0, 1.0) if top > 0 else np.zeros_like(image)


# ---------------------------------------------------------------------- training data

EM_INTENSITY = ("inverted", "raw")


def em_for_coding(tem: np.ndarray, mode: str) -> np.ndarray:
    """The TEM as the dictionaries see it.

    ``'inverted'`` (default): ``1 - tem``. Stained structures are dark in TEM and bright
    in fluorescence; with raw intensities a dark patch has a small norm, so its lasso
    code and hence its predicted confocal patch are small too, and the inversion cannot
    be learned (on a synthetic ``(1 - x)^2`` map the prediction correlates 0.85 raw vs
    0.975 inverted; on a saturating one 0.55 vs 0.89). ``'raw'``: the [0, 1] intensities.
    The same function undoes itself: apply it again to a reconstruction.
    """
    if mode == "inverted":
        return 1.0 - np.asarray(tem, dtype=np.float64)
    if mode == "raw":
        return np.asarray(tem, dtype=np.float64)
    raise ValueError(f"unknown em_intensity {mode!r}; use one of {EM_INTENSITY}")


# ------------------------------------------------------------------------ prediction


@dataclass
class Prediction:
    """Result of a sparse prediction or reconstruction.

    Attributes
    ----------
    u1 : ndarray
        Reconstruction of the given image (denoised TEM; the input itself for the
        decoupled variant).
    u2 : ndarray or None
        Predicted second image (confocal), None for pure denoising.
    spread : ndarray
        Per-pixel standard deviation of the overlapping patch predictions of u2 (of u1
        when u2 is None).
    codes : scipy.sparse.csc_matrix, shape (k, n)
        Patch codes (one column per patch, row-major patch order).
    info : dict
        Iterations, objective history, optimality violation, seconds.
    """

    u1: np.ndarray
    u2: np.ndarray | None
    spread: np.ndarray
    codes: sparse.csc_matrix
    info: dict


def predict_decoupled(
    f1: np.ndarray, D1: np.ndarray, D2: np.ndarray, lam: float, size: int
) -> Prediction:
    """Code every patch of ``f1`` alone against ``D1``; average the ``D2`` predictions.

    Parameters
    ----------
    f1 : ndarray
        TEM image in [0, 1].
    D1, D2 : ndarray, shape (size², k)
        TEM and confocal halves of the joint dictionary.
    lam : float
        λ.
    size : int
        Patch side, px.
    """
    start = time.perf_counter()
    codes = lasso_codes(extract_patches(f1, size), D1, lam)
    pred = _decode(D2, codes)
    total, count = overlap_sum(pred, f1.shape, size)
    spread = overlap_spread(pred, f1.shape, size)
    nnz = codes.nnz / codes.shape[1]
    return Prediction(
        np.asarray(f1, dtype=np.float64),
        total / count,
        spread,
        codes,
        {"seconds": time.perf_counter() - start, "nnz": nnz},
    )


def _decode(D: np.ndarray, codes: sparse.csc_matrix) -> np.ndarray:
    """Patches ``D @ codes`` (m, n; F order) from sparse codes (cost nnz x m, not k x n x m)."""
    Dt = np.ascontiguousarray(D.T, dtype=np.float64)
    return decode_rows(codes.indptr, codes.indices, codes.data, Dt).T


def eq7_objective(
    f1: np.ndarray,
    u1: np.ndarray,
    u2: np.ndarray | None,
    codes: np.ndarray | sparse.spmatrix,
    D1: np.ndarray,
    D2: np.ndarray | None,
    lam: float,
    gamma: float,
    size: int,
) -> float:
    """E(u1, u2, α) of eq. 7 (eq. 5 when ``u2``/``D2`` are None), L = V = I; ``codes``
    (k, n) dense or sparse."""
    n = codes.shape[1]
    r1 = extract_patches(u1, size) - D1 @ codes
    total = 0.5 * np.einsum("ij,ij->", r1, r1)
    if u2 is not None:
        r2 = extract_patches(u2, size) - D2 @ codes
        total += 0.5 * np.einsum("ij,ij->", r2, r2)
    total += lam * float(abs(codes).sum())
    return float(0.5 * gamma * np.sum((u1 - f1) ** 2) + total / n)


class _Eq7:
    """The problem of eq. 7 (eq. 5 without ``D2``) for one image: its dictionary, the
    closed-form images for given codes, the stacked patches and the objective."""

    def __init__(self, f1, D1, D2, lam, gamma, size):
        self.f1, self.lam, self.gamma, self.size = f1, lam, gamma, size
        self.shape = f1.shape
        self.D = np.ascontiguousarray(D1 if D2 is None else np.vstack([D1, D2]), dtype=np.float64)
        self.Dt = np.ascontiguousarray(self.D.T)
        self.gram = self.D.T @ self.D
        self.m1 = D1.shape[0]
        self.parts = 1 if D2 is None else 2
        self.n = (self.shape[0] - size + 1) * (self.shape[1] - size + 1)
        _, self.count = overlap_sum(np.zeros((self.m1, self.n)), self.shape, size)

    def images(self, codes: sparse.csc_matrix) -> tuple:
        """The optimal images for given codes (closed form)."""
        totals = np.zeros((self.parts, *self.shape))
        decode_overlap(codes.indptr, codes.indices, codes.data, self.Dt, self.size, totals)
        n, gamma = self.n, self.gamma
        new_u1 = (gamma * self.f1 + totals[0] / n) / (gamma + self.count / n)
        return new_u1, (totals[1] / self.count if self.parts == 2 else None)

    def stacked(self, u1: np.ndarray, u2: np.ndarray | None) -> np.ndarray:
        """Stacked patches (m, n), laid out patch by patch (F order) for the GEMM."""
        size = self.size
        out = np.empty((self.n, size * size * self.parts))
        for p, u in enumerate([u1, u2][: self.parts]):
            patches_into(np.ascontiguousarray(u), size, out, p * size * size)
        return out.T

    def objective(self, u1: np.ndarray, u2: np.ndarray | None, codes: sparse.csc_matrix) -> float:
        """E of eq. 7 (eq. 5), without storing the patches."""
        both = np.ascontiguousarray(np.stack([u1, u2][: self.parts]))
        fit = 0.5 * residual_sq(codes.indptr, codes.indices, codes.data, self.Dt, both, self.size)
        fit += self.lam * np.abs(codes.data).sum()
        return float(0.5 * self.gamma * np.sum((u1 - self.f1) ** 2) + fit / self.n)

    def spread(self, codes: sparse.csc_matrix) -> np.ndarray:
        """Per-pixel spread of the overlapping predictions of the last image."""
        Dt = np.ascontiguousarray(self.Dt[:, self.m1 :]) if self.parts == 2 else self.Dt
        pred = decode_rows(codes.indptr, codes.indices, codes.data, Dt)
        return overlap_spread(pred.T, self.shape, self.size)


def reconstruct(
    f1: np.ndarray,
    D1: np.ndarray,
    D2: np.ndarray | None,
    lam: float,
    gamma: float,
    size: int,
    tol: float = 1e-6,
    max_iter: int = 200,
    log: logging.Logger | None = None,
) -> Prediction:
    """Solve eq. 7 (or eq. 5 with ``D2=None``) to its optimum.

    E = γ/2 ||u1 - f1||² + 1/N Σ_i (½||R_i u1 - D1 α_i||² + ½||R_i u2 - D2 α_i||²
    + λ||α_i||₁). Block descent from the decoupled codes: given the codes, ``u2`` is the
    average of the overlapping ``D2 α_i`` and ``u1 = (γ f1 + 1/N Σ R_iᵀ D1 α_i) /
    (γ + count/N)`` (closed form); given the images, each code is a lasso of the stacked
    patch against the stacked dictionary, warm-started from the previous codes. E is
    convex, every step lowers it, and the iteration converges to the optimum.

    Code steps are of two kinds. A *full* step is the exact lasso of every patch
    (:func:`clemalign.dictionary.lasso_codes`: correlations with all k atoms by one
    GEMM, then the active-set kernel); it also records, per patch, the ``_N_NEAR``
    off-support atoms nearest to entering. A *working-set* step solves each patch's
    lasso exactly over its support plus those atoms only
    (:func:`clemalign.dictionary.lasso_codes_on_working_set`, about 25x cheaper); it
    cannot raise E, and it is exact unless an atom outside the set should enter. Up to
    ``_WORKING_STEPS`` working-set steps follow each full step.

    The image step is over-relaxed: ``u ← u + ω (u* - u)`` with ``u*`` the closed form
    and ω = 1.8. E is quadratic in the images with its minimum at ``u*``, so
    ``E(u + ω (u* - u)) - E(u*) = (1 - ω)² (E(u) - E(u*))``: any 0 < ω < 2 still lowers
    E; ω = 1.8 needs about two thirds of the iterations of plain block descent.

    Stopping: when an iteration lowers E by less than ``tol`` (relative), the images are
    set to the exact ``u*`` of the codes and a full code step is taken from there. If it
    lowers E by less than ``tol`` too, the iteration stops and returns the codes *before*
    that step with their exact images; the same correlations give the optimality
    violation of that point (``kkt``), so the returned solution is certified without a
    further GEMM. Otherwise the iteration goes on from the new codes.

    Parameters
    ----------
    f1 : ndarray
        Given image in [0, 1].
    D1 : ndarray, shape (size², k)
        Its dictionary.
    D2 : ndarray or None
        Dictionary of the image to predict (None: denoising only).
    lam, gamma : float
        λ and γ of eq. 7 for intensities in [0, 1] (paper: 1 and 0.01, on an intensity
        scale it does not state). λ = 1 on [0, 1] keeps about a fifth of the confocal's
        contrast; a smaller λ registers closer to the truth but codes slower
        (``benchmarks/eq7_lambda.py``).
    size : int
        Patch side, px.
    tol : float
        Relative decrease of E below which the iteration stops (see above).
    max_iter : int
        Cap on the code steps.
    log : logging.Logger, optional
        Progress is logged here.

    Returns
    -------
    Prediction
        The images are always the optimal ones for the returned codes. ``info`` holds
        the objective history (E after every iteration, the last entry that of the
        returned solution), ``converged`` (the tolerance was met before the cap),
        ``full_steps`` and ``kkt``, the largest violation of the codes' optimality
        conditions (relative to λ) at the returned images: the distance from the joint
        optimum.
    """
    log = log or LOG
    start = time.perf_counter()
    eq = _Eq7(np.asarray(f1, dtype=np.float64), D1, D2, lam, gamma, size)
    codes = lasso_codes(extract_patches(eq.f1, size), D1, lam)  # decoupled start
    images, stacked, objective = eq.images, eq.stacked, eq.objective
    D, gram = eq.D, eq.gram
    u1, u2 = images(codes)
    value = objective(u1, u2, codes)
    history = [value]
    near = None
    pending = False  # E has stalled at exact images: the next full step may certify
    since_full = 0
    full_steps = 0
    converged = False
    kkt = None
    steps = 0
    for it in range(1, max_iter + 1):
        steps = it
        Y = stacked(u1, u2)
        full = pending or near is None or since_full >= _WORKING_STEPS
        if full:
            new, near, viol = _lasso_codes(
                Y, D, lam, gram=gram, warm=codes, n_near=_N_NEAR, warm_kkt=pending
            )
            full_steps += 1
            since_full = 0
            if pending:
                after = objective(u1, u2, new)
                log.info(
                    "eq. 7 iteration %d: full step from exact images lowers E by %.2e "
                    "(relative; tol %.0e), optimality violation %.2e λ",
                    it,
                    (value - after) / abs(value),
                    tol,
                    viol / lam,
                )
                if value - after <= tol * abs(value):
                    converged = True
                    kkt = viol / lam
                    break
                pending = False
        else:
            new = lasso_codes_on_working_set(Y.T, D, lam, codes, near, gram)
            since_full += 1
        codes = new
        e1, e2 = images(codes)
        u1 = u1 + _OVERRELAX * (e1 - u1)
        u2 = None if e2 is None else u2 + _OVERRELAX * (e2 - u2)
        previous, value = value, objective(u1, u2, codes)
        if previous - value <= tol * abs(value):  # stalled: exact images, then certify
            u1, u2 = e1, e2
            value = objective(u1, u2, codes)
            pending = True
        history.append(value)
        log.info(
            "eq. 7 iteration %d (%s step): objective %.8f (%.1f s)",
            it,
            "full" if full else "working-set",
            value,
            time.perf_counter() - start,
        )
    if kkt is None:  # the cap: exact images for the last codes, then one full check
        u1, u2 = images(codes)
        history.append(objective(u1, u2, codes))
        Y = stacked(u1, u2)
        _, _, viol = _lasso_codes(Y, D, lam, gram=gram, warm=codes, warm_kkt=True)
        kkt = viol / lam
    info = {
        "iterations": steps,
        "full_steps": full_steps,
        "objective": history,
        "kkt": float(kkt),
        "converged": converged,
        "seconds": time.perf_counter() - start,
        "nnz": codes.nnz / eq.n,
        "patch_dim": eq.m1,
    }
    return Prediction(u1, u2, eq.spread(codes), codes, info)


# ----------------------------------------------------------- the workflow's three steps


@dataclass
class JointDictionary:
    """A joint TEM/confocal dictionary (paper eq. 8), atoms ordered most used first.

    Attributes
    ----------
    D1, D2 : ndarray, shape (patch_size², k)
        TEM and confocal halves; atom ``j`` is ``D1[:, j]`` over ``D2[:, j]`` (unit norm
        together), patches flattened row by row.
    usage : ndarray of int, shape (k,)
        Training patches whose lasso code uses each atom.
    training_cases : list of str
        Names of the cases the patches came from.
    history : ndarray
        Learning objective per pass.
    converged : bool
        Whether learning stopped on its tolerance (not the pass cap).
    params : dict
        The settings it was learned with (patch size, lambda, ...).
    """

    D1: np.ndarray
    D2: np.ndarray
    usage: np.ndarray
    training_cases: list[str]
    history: np.ndarray
    converged: bool
    params: dict

    @property
    def patch_size(self) -> int:
        """Patch side, px."""
        return int(round(np.sqrt(self.D1.shape[0])))

    def save(self, path) -> None:
        """Write the dictionary as a compressed ``.npz`` (keys as the attributes)."""
        np.savez_compressed(
            path,
            D1=self.D1,
            D2=self.D2,
            usage=self.usage,
            history=np.asarray(self.history),
            converged=self.converged,
            training_cases=np.array(self.training_cases),
            params=json.dumps({k: self.params[k] for k in sorted(self.params)}),
        )

    @classmethod
    def load(cls, path) -> JointDictionary:
        """Read a dictionary written by :meth:`save`."""
        with np.load(path) as data:
            return cls(
                data["D1"],
                data["D2"],
                data["usage"],
                data["training_cases"].tolist(),
                data["history"],
                bool(data["converged"]),
                json.loads(str(data["params"])),
            )


@dataclass
class ConfocalPrediction:
    """The confocal predicted from a TEM image by eq. 7.

    Attributes
    ----------
    confocal : ndarray
        The prediction ``u2`` on the TEM grid, [0, 1] confocal intensities.
    tem_denoised : ndarray
        ``u1`` brought back to TEM contrast (:func:`em_for_coding`).
    uncertainty : ndarray
        Spread of the overlapping patch predictions scaled to [0, 1] by its 99th
        percentile (:func:`scale_unit`): eq. 12's SSD weights are ``1 - uncertainty``
        (:func:`clemalign.register.weights_from_uncertainty`).
    joint : Prediction
        The full solution (codes, iterations, optimality violation).
    """

    confocal: np.ndarray
    tem_denoised: np.ndarray
    uncertainty: np.ndarray
    joint: Prediction


def predict_confocal(
    tem: np.ndarray,
    dictionary: JointDictionary,
    *,
    em_intensity: str = "inverted",
    lam: float = 1.0,
    gamma: float = 0.01,
    tol: float = 1e-6,
    max_iter: int = 40,
    log: logging.Logger | None = None,
) -> ConfocalPrediction:
    """Predict the confocal from a TEM image (paper eq. 7, solved to its optimum).

    Parameters
    ----------
    tem : ndarray
        Preprocessed TEM in [0, 1], at the sampling the dictionary was learned at.
    dictionary : JointDictionary
    em_intensity : {"inverted", "raw"}
        How the dictionary saw the TEM (:func:`em_for_coding`); must match learning.
    lam, gamma : float
        λ and γ of eq. 7 (paper: 1 and 0.01).
    tol, max_iter
        Stopping of :func:`reconstruct`.
    """
    coded = em_for_coding(tem, em_intensity)
    joint = reconstruct(
        coded, dictionary.D1, dictionary.D2, lam, gamma, dictionary.patch_size, tol, max_iter, log
    )
    return ConfocalPrediction(
        joint.u2, em_for_coding(joint.u1, em_intensity), scale_unit(joint.spread), joint
    )


def denoise_confocal(
    confocal: np.ndarray,
    dictionary: JointDictionary,
    *,
    lam: float = 1.0,
    gamma: float = 0.01,
    tol: float = 1e-6,
    max_iter: int = 40,
    log: logging.Logger | None = None,
) -> Prediction:
    """The confocal consistently denoised by the dictionary's confocal half (paper eq. 5,
    sec. 4.7): :func:`reconstruct` with ``D2`` alone; the image is ``.u1``."""
    return reconstruct(
        confocal, dictionary.D2, None, lam, gamma, dictionary.patch_size, tol, max_iter, log
    )
