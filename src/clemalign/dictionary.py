"""Sparse coding and joint dictionary learning (paper sec. 4.5-4.6, appendix A).

Objective of one patch ``x`` (columns of ``X``) with dictionary ``D`` (atoms as columns):

    ½ ||x - D a||² + λ ||a||₁

(the paper's eq. 8; SPAMS and scikit-learn use the same scaling, so λ means the same
thing everywhere). Two solvers of the same problem:

* :func:`lasso_sdmm`: the paper's SDMM (Algorithm 3): ``L1 = D``, ``L2 = I``, the
  quadratic and the ℓ1 term split, all patches at once as matrix products, the
  projection ``(I + DᵀD)⁻¹`` by the Woodbury identity, stopped on primal and dual
  residuals. The reference implementation of the method.
* :func:`lasso_codes` (sparse result) and :func:`lasso_lars` (dense): the production
  solver, compiled with numba (:mod:`clemalign._lasso_numba`), float64 throughout. The
  correlations ``Dᵀx`` of a chunk of patches come from one GEMM and the Gram matrix
  ``DᵀD`` is shared; each patch is then solved alone (in parallel over patches) by an
  active-set method — from zero, or warm-started from given codes — that solves the
  sign-fixed problem on the support with an updated Cholesky factor, steps back to the
  first sign change (feature-sign search, Lee et al. 2007), adds the most violating
  atoms, and stops when the optimality conditions hold to 1e-10 λ. Patches where it
  stalls (a singular support, rare) are solved by a LARS-lasso homotopy with the same
  final check, and anything still uncertified by an exact float64 active-set loop.
  Exact to rounding; as fast as SPAMS's LARS on the paper's sizes.

:func:`learn_dictionary` minimises the same objective over the dictionary and all codes by
block-coordinate descent: exact coding of one batch of patches at a time, each followed
by block-coordinate passes over the atoms under the constraint ``||d_j|| <= 1`` (without
it the ℓ1 term can be driven to zero by growing the atoms: the problem has no minimiser),
using the sufficient statistics of all stored codes (Mairal et al. 2010). Every step is
an exact minimisation over its block, so the objective never increases.
:func:`update_dictionary` is the exact dictionary step given all codes: the
least-squares update ``D = B A⁻¹`` of appendix A when it is feasible, the same quadratic
minimised on the constraint set by block-coordinate passes otherwise.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import linalg, sparse

from ._lasso_numba import (
    FLAGGED,
    OK,
    OVERFLOW,
    active_set_batch,
    atom_passes,
    lars_batch,
    warm_violation,
    working_set_batch,
)

LOG = logging.getLogger(__name__)

_WIDTH = 64  # support slots per patch in the compiled pass (larger supports: second pass)
_ROUNDS = 64  # active-set rounds per patch before falling back to the homotopy


def soft_threshold(x: np.ndarray, t: float) -> np.ndarray:
    """Proximal operator of ``t ||.||₁``: sign(x) max(|x| - t, 0)."""
    return np.sign(x) * np.maximum(np.abs(x) - t, 0.0)


def lasso_objective(X: np.ndarray, D: np.ndarray, A: np.ndarray, lam: float) -> float:
    """Mean over patches of ½||x - D a||² + λ||a||₁.

    Parameters
    ----------
    X : ndarray, shape (m, n)
        Patches as columns.
    D : ndarray, shape (m, k)
        Dictionary, atoms as columns.
    A : ndarray, shape (k, n)
        Codes as columns.
    lam : float
        λ.
    """
    X = np.asarray(X, dtype=np.float64)
    R = X - np.asarray(D, dtype=np.float64) @ np.asarray(A, dtype=np.float64)
    n = X.shape[1]
    return float(0.5 * np.einsum("ij,ij->", R, R) / n + lam * np.abs(A).sum() / n)


def _sparse_objective(X: np.ndarray, D: np.ndarray, A: sparse.spmatrix, lam: float) -> float:
    """:func:`lasso_objective` for sparse codes (the product costs nnz x m, not k x n x m)."""
    R = X - np.asarray(A.T @ D.T).T
    return float(
        0.5 * np.einsum("ij,ij->", R, R) / X.shape[1] + lam * np.abs(A.data).sum() / X.shape[1]
    )


def lasso_kkt_violation(X: np.ndarray, D: np.ndarray, A: np.ndarray, lam: float) -> float:
    """Largest violation of the lasso optimality conditions, relative to λ.

    At the optimum ``g = Dᵀ(x - D a)`` satisfies ``g_j = λ sign(a_j)`` where ``a_j != 0``
    and ``|g_j| <= λ`` elsewhere.
    """
    X = np.asarray(X, dtype=np.float64)
    A = np.asarray(A, dtype=np.float64)
    g = np.asarray(D, dtype=np.float64).T @ (X - D @ A)
    on = A != 0
    viol_on = np.abs(g - lam * np.sign(A))[on]
    viol_off = np.maximum(np.abs(g[~on]) - lam, 0.0)
    worst = max(viol_on.max(initial=0.0), viol_off.max(initial=0.0))
    return float(worst / lam)


# --------------------------------------------------------------------------- SDMM


@dataclass
class SolverInfo:
    """Convergence record of an iterative solver."""

    iterations: int = 0
    primal_residual: float = float("nan")
    dual_residual: float = float("nan")
    seconds: float = 0.0
    history: list = field(default_factory=list)


def lasso_sdmm(
    X: np.ndarray,
    D: np.ndarray,
    lam: float,
    sigma: float | None = None,
    tol: float = 1e-8,
    max_iter: int = 20000,
) -> tuple[np.ndarray, SolverInfo]:
    """Lasso for every column of ``X`` by the paper's SDMM (Algorithm 3).

    With ``g1(w) = ½||w - x||²`` on ``w = D a`` and ``g2(q) = λ||q||₁`` on ``q = a``:

        a  ← (DᵀD + I)⁻¹ (Dᵀ(y1 - z1) + (y2 - z2))
        y1 ← prox_{g1/σ}(D a + z1) = (σ (D a + z1) + x) / (σ + 1)
        y2 ← soft(a + z2, λ/σ)
        z1 ← z1 + D a - y1,   z2 ← z2 + a - y2

    Stops when the primal residual ``||(Da - y1, a - y2)||`` and the dual residual
    ``σ ||Dᵀ(Δy1) + Δy2||`` (Boyd et al. 2011) both fall below ``tol`` relative to the
    size of the iterates.

    Parameters
    ----------
    X : ndarray, shape (m, n)
        Patches as columns.
    D : ndarray, shape (m, k)
        Dictionary.
    lam : float
        λ.
    sigma : float, optional
        Penalty parameter (default: λ / mean |Dᵀx|, a balanced start).
    tol : float
        Relative residual tolerance.
    max_iter : int
        Iteration cap.

    Returns
    -------
    A : ndarray, shape (k, n)
        Codes (the ℓ1 copy ``y2``, exactly sparse).
    info : SolverInfo
    """
    start = time.perf_counter()
    X = np.asarray(X, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    m, k = D.shape
    if sigma is None:
        sigma = lam / max(float(np.mean(np.abs(D.T @ X))), 1e-12)
    # (I + DᵀD)⁻¹ v = v - Dᵀ (I + D Dᵀ)⁻¹ D v   (Woodbury: an m x m factor, m < k)
    chol = linalg.cho_factor(np.eye(m) + D @ D.T)

    def project(v: np.ndarray) -> np.ndarray:
        return v - D.T @ linalg.cho_solve(chol, D @ v)

    n = X.shape[1]
    y1, z1 = X.copy(), np.zeros_like(X)
    y2, z2 = np.zeros((k, n)), np.zeros((k, n))
    info = SolverInfo()
    for it in range(1, max_iter + 1):
        a = project(D.T @ (y1 - z1) + (y2 - z2))
        s1, s2 = D @ a, a
        y1_old, y2_old = y1, y2
        y1 = (sigma * (s1 + z1) + X) / (sigma + 1.0)
        y2 = soft_threshold(s2 + z2, lam / sigma)
        z1 += s1 - y1
        z2 += s2 - y2
        primal = np.sqrt(np.sum((s1 - y1) ** 2) + np.sum((s2 - y2) ** 2))
        dual = sigma * np.sqrt(np.sum((D.T @ (y1 - y1_old) + (y2 - y2_old)) ** 2))
        scale = max(np.sqrt(np.sum(s1**2) + np.sum(s2**2)), 1e-12)
        if it % 50 == 0:
            info.history.append((it, primal / scale, dual / scale))
        if primal <= tol * scale and dual <= tol * scale:
            break
    info.iterations, info.primal_residual, info.dual_residual = it, primal / scale, dual / scale
    info.seconds = time.perf_counter() - start
    return y2, info


# --------------------------------------------------------------------------- LARS


def _correct_support(
    x: np.ndarray,
    dtx: np.ndarray,
    D: np.ndarray,
    G: np.ndarray,
    signs: dict[int, float],
    lam: float,
    max_rounds: int = 50,
) -> dict[int, float]:
    """Active-set correction for one patch the compiled solvers could not certify
    (near-ties, singular supports): drop atoms whose exact coefficient has the wrong
    sign, add the most violating atom, until the conditions hold (float64, least
    squares on the support, so a singular support is handled)."""
    signs = dict(signs)
    beta: dict[int, float] = {}
    for _ in range(max_rounds):
        act = list(signs)
        if act:
            sub = G[np.ix_(act, act)]
            rhs = dtx[act] - lam * np.array([signs[j] for j in act])
            vals = np.linalg.lstsq(sub, rhs, rcond=None)[0]
            wrong = [j for j, v in zip(act, vals, strict=True) if np.sign(v) != signs[j]]
            if wrong:
                # keep the point on the segment where no sign flips (feature-sign step)
                for j in wrong:
                    del signs[j]
                continue
            beta = dict(zip(act, vals, strict=True))
        else:
            beta = {}
        resid = x - (D[:, list(beta)] @ np.array(list(beta.values())) if beta else 0.0)
        g = D.T @ resid
        viol = np.abs(g) - lam
        viol[list(beta)] = -np.inf
        j = int(np.argmax(viol))
        if viol[j] <= 1e-10 * lam:
            return beta
        signs[j] = float(np.sign(g[j]))
    return beta


def _to_slots(A: sparse.spmatrix, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse (k, n) codes as per-patch slots: idx, val (n, width) and nnz (n,)."""
    A = sparse.csc_matrix(A)
    A.sort_indices()
    nnz = np.diff(A.indptr).astype(np.int32)
    n = A.shape[1]
    idx = np.zeros((n, width), dtype=np.int32)
    val = np.zeros((n, width))
    take = nnz <= width
    cols = np.repeat(np.arange(n), nnz)
    pos = np.arange(A.indices.size) - np.repeat(A.indptr[:-1], nnz)
    ok = take[cols]
    idx[cols[ok], pos[ok]] = A.indices[ok]
    val[cols[ok], pos[ok]] = A.data[ok]
    nnz[~take] = 0
    return idx, val, nnz


def _code_chunk(
    x64: np.ndarray,
    D64: np.ndarray,
    G: np.ndarray,
    lam: float,
    max_active: int,
    warm: sparse.spmatrix | None,
    n_near: int = 0,
    warm_kkt: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Exact codes of p patches, as COO triplets (column, atom, value): float64
    correlations by one GEMM, the active-set kernel, the homotopy where it stalls, the
    float64 correction where neither certifies the optimality conditions. Also the
    (p, n_near) atoms nearest to entering each support (-1 where the active-set kernel
    did not certify the patch), and with ``warm_kkt`` the optimality violation of the
    warm-start codes at these patches (:func:`warm_violation`)."""
    C = x64.T @ D64  # (p, k) correlations Dᵀx
    p = C.shape[0]
    width = max(1, min(max_active, _WIDTH))
    rows = np.arange(p)  # patches still to code
    out_c, out_i, out_v = [], [], []
    special: dict[int, dict[int, float]] = {}  # column -> starting signs for the correction

    def emit(cols: np.ndarray, idx: np.ndarray, val: np.ndarray, cnt: np.ndarray) -> None:
        keep = np.arange(idx.shape[1])[None, :] < cnt[:, None]
        out_c.append(np.broadcast_to(cols[:, None], idx.shape)[keep])
        out_i.append(idx[keep])
        out_v.append(val[keep])

    if warm is not None:
        nmax = int(np.diff(sparse.csc_matrix(warm).indptr).max(initial=0))
        w_width = max(1, min(max_active, max(_WIDTH, nmax + 16)))
        idx0, val0, nnz0 = _to_slots(warm, w_width)
    else:  # from zero
        idx0 = np.zeros((p, width), dtype=np.int32)
        val0 = np.zeros((p, width))
        nnz0 = np.zeros(p, dtype=np.int32)
    near = np.empty((p, n_near), dtype=np.int32)
    viol = None
    if warm_kkt and warm is not None:
        viol = warm_violation(C, G, float(lam), idx0, val0, nnz0)
    idx, val, cnt, status = active_set_batch(C, G, float(lam), idx0, val0, nnz0, _ROUNDS, near)
    ok = status == OK
    emit(rows[ok], idx[ok], val[ok], cnt[ok])
    rows = rows[~ok]
    if rows.size:
        Cr = C if rows.size == p else np.ascontiguousarray(C[rows])
        idx, val, cnt, status = lars_batch(Cr, G, float(lam), width)
        ok = status == OK
        emit(rows[ok], idx[ok], val[ok], cnt[ok])
        over = np.flatnonzero(status == OVERFLOW)
        if over.size and width < max_active:
            idx2, val2, cnt2, status2 = lars_batch(
                np.ascontiguousarray(Cr[over]), G, float(lam), max_active
            )
            ok2 = status2 == OK
            emit(rows[over[ok2]], idx2[ok2], val2[ok2], cnt2[ok2])
            for r in np.flatnonzero(~ok2):
                special[int(rows[over[r]])] = {
                    int(j): float(np.sign(v))
                    for j, v in zip(idx2[r, : cnt2[r]], val2[r, : cnt2[r]], strict=True)
                }
        elif over.size:
            special.update({int(rows[r]): {} for r in over})
        for r in np.flatnonzero(status == FLAGGED):
            special[int(rows[r])] = {
                int(j): float(np.sign(v))
                for j, v in zip(idx[r, : cnt[r]], val[r, : cnt[r]], strict=True)
            }
    # near-ties, dependent atoms: exact active-set correction in float64
    for col, signs in special.items():
        fixed = _correct_support(x64[:, col], C[col], D64, G, signs, lam)
        fixed = {j: v for j, v in fixed.items() if v != 0}
        out_c.append(np.full(len(fixed), col))
        out_i.append(np.array(list(fixed), dtype=np.int32))
        out_v.append(np.array(list(fixed.values()), dtype=np.float64))
    cols = np.concatenate(out_c) if out_c else np.zeros(0, np.int64)
    order = np.argsort(cols, kind="stable")
    return (
        cols[order],
        np.concatenate(out_i)[order].astype(np.int32) if out_c else np.zeros(0, np.int32),
        np.concatenate(out_v)[order] if out_c else np.zeros(0),
        near,
        viol,
    )


def lasso_codes(
    X: np.ndarray,
    D: np.ndarray,
    lam: float,
    chunk: int = 8192,
    max_active: int | None = None,
    gram: np.ndarray | None = None,
    warm: sparse.spmatrix | None = None,
) -> sparse.csc_matrix:
    """Exact lasso for every column of ``X``, as a sparse (k, n) matrix.

    Per chunk of patches: the correlations ``Dᵀx`` by one float64 GEMM, then the compiled
    LARS-lasso homotopy of :mod:`clemalign._lasso_numba` (one patch per task, parallel
    over patches with numba's thread count), which ends with an exact solve on the
    support and a float64 check of the optimality conditions. The rare patches whose
    conditions fail (near-ties, dependent atoms) are corrected exactly by an active-set
    loop (:func:`_correct_support`).

    Parameters
    ----------
    X : ndarray, shape (m, n)
        Patches as columns.
    D : ndarray, shape (m, k)
        Dictionary (atoms as columns; any norms).
    lam : float
        λ (in the units of ``X``, here intensities in [0, 1]).
    chunk : int
        Patches coded together (memory ~ chunk x k x 8 bytes).
    max_active : int, optional
        Cap on the support size (default min(m, k)).
    gram : ndarray, optional
        Precomputed ``DᵀD`` (float64, C-contiguous).
    warm : sparse matrix, shape (k, n), optional
        Starting codes (e.g. the previous iteration's): each patch is then solved by a
        warm-started active-set method (:func:`clemalign._lasso_numba.active_set_batch`),
        exact at termination, the homotopy only where that stalls. Same optimum.

    Returns
    -------
    scipy.sparse.csc_matrix, shape (k, n), float64
        Codes; explicit zeros are never stored.
    """
    return _lasso_codes(X, D, lam, chunk, max_active, gram, warm)[0]


def _lasso_codes(
    X: np.ndarray,
    D: np.ndarray,
    lam: float,
    chunk: int = 8192,
    max_active: int | None = None,
    gram: np.ndarray | None = None,
    warm: sparse.spmatrix | None = None,
    n_near: int = 0,
    warm_kkt: bool = False,
) -> tuple[sparse.csc_matrix, np.ndarray, float | None]:
    """:func:`lasso_codes`, and the (n, n_near) atoms nearest to entering each patch's
    support at the solution (largest |Dᵀ(x - Dα)| off the support; -1 pads and marks
    patches certified by the fallbacks), for :func:`lasso_codes_on_working_set`; with
    ``warm_kkt`` (and ``warm``) also the largest optimality violation of the warm-start
    codes at ``X`` (absolute, in the units of λ), from the same correlations."""
    D64 = np.ascontiguousarray(D, dtype=np.float64)
    m, k = D64.shape
    G = np.ascontiguousarray(D64.T @ D64 if gram is None else gram, dtype=np.float64)
    max_active = min(m, k) if max_active is None else int(max_active)
    X = np.asarray(X)
    n = X.shape[1]
    if warm is not None:
        warm = sparse.csc_matrix(warm)
    cols, atoms, vals, nears = [], [], [], []
    worst = None
    for s0 in range(0, n, chunk):
        x64 = np.asarray(X[:, s0 : s0 + chunk], dtype=np.float64)
        if not (x64.flags.c_contiguous or x64.flags.f_contiguous):
            x64 = np.ascontiguousarray(x64)  # BLAS needs one of the two layouts
        w = None if warm is None else warm[:, s0 : s0 + chunk]
        c, i, v, near, viol = _code_chunk(x64, D64, G, lam, max_active, w, n_near, warm_kkt)
        nears.append(near)
        if viol is not None:
            worst = max(worst or 0.0, float(viol.max(initial=0.0)))
        cols.append(c + s0)
        atoms.append(i)
        vals.append(v)
    cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(cols, minlength=n), out=indptr[1:])
    indices = np.concatenate(atoms) if atoms else np.zeros(0, np.int32)
    data = np.concatenate(vals) if vals else np.zeros(0)
    near = np.vstack(nears) if nears else np.zeros((0, n_near), np.int32)
    return sparse.csc_matrix((data, indices, indptr), shape=(k, n)), near, worst


def lasso_codes_on_working_set(
    Yt: np.ndarray,
    D: np.ndarray,
    lam: float,
    codes: sparse.spmatrix,
    near: np.ndarray,
    gram: np.ndarray | None = None,
) -> sparse.csc_matrix:
    """Lasso of every patch over its working set only: its support in ``codes`` plus
    its ``near`` atoms (:func:`clemalign._lasso_numba.working_set_batch`).

    Costs |working set| x m per patch instead of the k x m of the correlations, and never
    raises the lasso objective of any patch; it is exact only where no other atom enters,
    which a call of :func:`lasso_codes` must certify.

    Parameters
    ----------
    Yt : ndarray, shape (n, m)
        Patches as rows (C order).
    D : ndarray, shape (m, k)
        Dictionary.
    lam : float
        λ.
    codes : sparse matrix, shape (k, n)
        Current codes (the warm start; kept where the kernel cannot solve a patch).
    near : ndarray of int32, shape (n, M)
        Extra atoms per patch (-1: none), e.g. from ``_lasso_codes(..., n_near=M)``.
    gram : ndarray, optional
        ``DᵀD``.

    Returns
    -------
    scipy.sparse.csc_matrix, shape (k, n)
    """
    D64 = np.ascontiguousarray(D, dtype=np.float64)
    k = D64.shape[1]
    G = np.ascontiguousarray(D64.T @ D64 if gram is None else gram, dtype=np.float64)
    codes = sparse.csc_matrix(codes)
    nmax = int(np.diff(codes.indptr).max(initial=0))
    width = max(_WIDTH, nmax + 16)
    idx0, val0, nnz0 = _to_slots(codes, width)
    idx, val, nnz, _ = working_set_batch(
        np.ascontiguousarray(Yt, dtype=np.float64),
        np.ascontiguousarray(D64.T),
        G,
        float(lam),
        idx0,
        val0,
        nnz0,
        np.ascontiguousarray(near, dtype=np.int32),
        _ROUNDS,
    )
    n = idx.shape[0]
    keep = np.arange(width)[None, :] < nnz[:, None]
    keep &= val != 0.0
    cols = np.broadcast_to(np.arange(n)[:, None], idx.shape)[keep]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(cols, minlength=n), out=indptr[1:])
    out = sparse.csc_matrix((val[keep], idx[keep], indptr), shape=(k, n))
    out.sort_indices()
    return out


def lasso_lars(
    X: np.ndarray,
    D: np.ndarray,
    lam: float,
    chunk: int = 8192,
    max_active: int | None = None,
    gram: np.ndarray | None = None,
) -> np.ndarray:
    """Exact lasso for every column of ``X``, as a dense (k, n) array.

    The dense form of :func:`lasso_codes` (same parameters).

    Returns
    -------
    ndarray, shape (k, n), float64
        Codes.
    """
    return lasso_codes(X, D, lam, chunk, max_active, gram).toarray()


# ------------------------------------------------------------------ dictionary learning


def update_dictionary(
    D: np.ndarray, AAt: np.ndarray, XAt: np.ndarray, max_passes: int = 50, tol: float = 1e-9
) -> np.ndarray:
    """Minimise ½ tr(Dᵀ D AAᵀ) - tr(Dᵀ XAᵀ) over ``||d_j|| <= 1`` (codes fixed).

    First the least-squares update ``D = B A⁻¹`` of appendix A (``B = X Aᵀ``,
    ``A = Σ a aᵀ``, pseudo-inverse when singular): when it satisfies the constraint it is
    the constrained minimiser. Otherwise block-coordinate passes over the atoms
    (each atom's exact minimiser projected on the unit ball, Mairal et al. 2010), from
    the current ``D``, until the atoms stop moving; every pass lowers the objective.

    Parameters
    ----------
    D : ndarray, shape (m, k)
        Current dictionary (feasible).
    AAt : ndarray, shape (k, k)
        Σ a_i a_iᵀ.
    XAt : ndarray, shape (m, k)
        Σ x_i a_iᵀ.

    Returns
    -------
    ndarray, shape (m, k)
        The updated dictionary. Atoms no code uses keep their previous value.
    """
    used = np.diag(AAt) > 0
    D_ls = D.copy()
    if used.any():
        sub = AAt[np.ix_(used, used)]
        D_ls[:, used] = XAt[:, used] @ np.linalg.pinv(sub, hermitian=True)
    if np.all(np.linalg.norm(D_ls, axis=0) <= 1.0 + 1e-12):
        return D_ls
    Dt = np.ascontiguousarray(D.T, dtype=np.float64)
    atom_passes(Dt, np.ascontiguousarray(AAt), np.ascontiguousarray(XAt.T), max_passes, tol)
    return Dt.T.copy()


@dataclass
class LearnedDictionary:
    """A dictionary and the record of how it was learned."""

    D: np.ndarray
    history: list  # (iteration, objective after coding, objective after update, nnz, s)
    converged: bool


def learn_dictionary(
    X: np.ndarray,
    n_atoms: int,
    lam: float,
    rng: np.random.Generator,
    tol: float = 1e-4,
    max_iter: int = 100,
    log: logging.Logger | None = None,
    batch_size: int = 1024,
) -> LearnedDictionary:
    """Block-coordinate minimisation of Σ ½||x_i - D a_i||² + λ||a_i||₁ over D and codes.

    The blocks are the dictionary and the codes of each batch of ``batch_size`` patches
    (incremental alternating minimisation, Neal & Hinton 1998; Mairal et al. 2010 use the
    same statistics online). One iteration is a pass over the batches in order: the
    batch's codes by exact lasso (warm-started from its previous codes), the sufficient
    statistics ``AAᵀ = Σ a aᵀ`` and ``XAᵀ = Σ x aᵀ`` of all stored codes updated, and
    one block-coordinate pass over the atoms on ``||d_j|| <= 1`` (each atom's exact
    minimiser, projected). Both kinds of step are exact minimisations over their block
    of the objective evaluated with the stored codes, so that objective never increases
    and is the full objective of eq. 8 at the stored codes; updating ``D`` after every
    batch instead of after all patches reaches a given objective several times sooner.
    Codes not yet computed (first pass) are zero.

    Parameters
    ----------
    X : ndarray, shape (m, n)
        Training patches as columns (for image analogies: TEM and confocal patches
        stacked, so one code explains both; paper eq. 8).
    n_atoms : int
        Number of atoms.
    lam : float
        λ.
    rng : numpy.random.Generator
        Draws the initial atoms (random training patches, normalised) and re-seeds atoms
        no code uses.
    tol : float
        Stop when an iteration lowers the objective by less than this fraction.
    max_iter : int
        Iteration cap (passes over the patches).
    log : logging.Logger, optional
        Progress (iteration, objective, non-zeros, time) is logged here.
    batch_size : int
        Patches per code block.

    Returns
    -------
    LearnedDictionary
        ``history`` rows: (iteration, objective with the stored codes after the pass's
        last coding step, after its last dictionary step, mean non-zeros per code,
        seconds since the start); the objective is the mean over patches.
    """
    log = log or LOG
    X = np.asarray(X, dtype=np.float64)
    m, n = X.shape
    D = X[:, rng.choice(n, n_atoms, replace=n < n_atoms)].copy()
    norms = np.linalg.norm(D, axis=0)
    dead = norms < 1e-12
    D[:, dead] = rng.normal(size=(m, int(dead.sum())))
    D /= np.linalg.norm(D, axis=0)
    Dt = np.ascontiguousarray(D.T)
    bounds = [(s0, min(n, s0 + batch_size)) for s0 in range(0, n, batch_size)]
    codes: list[sparse.csc_matrix | None] = [None] * len(bounds)
    AAt = np.zeros((n_atoms, n_atoms))
    XAt_t = np.zeros((n_atoms, m))  # (X Aᵀ)ᵀ
    history = []
    previous = np.inf
    start = time.perf_counter()
    converged = False
    for it in range(1, max_iter + 1):
        coded = np.nan
        for b, (s0, s1) in enumerate(bounds):
            xb = X[:, s0:s1]
            D = Dt.T
            new = lasso_codes(xb, D, lam, warm=codes[b])
            if codes[b] is not None:
                old = codes[b]
                AAt -= (old @ old.T).toarray()
                XAt_t -= np.asarray(old @ xb.T)
            AAt += (new @ new.T).toarray()
            XAt_t += np.asarray(new @ xb.T)
            codes[b] = new
            if b == len(bounds) - 1:
                coded = _codes_objective(X, Dt.T, codes, lam)
            atom_passes(Dt, AAt, XAt_t, 1, 0.0)
        # exact statistics again (no drift from the running sums)
        A = sparse.hstack(codes).tocsc()
        AAt = (A @ A.T).toarray()
        XAt_t = np.asarray(A @ X.T)
        unused = np.diag(AAt) == 0
        if unused.any():  # unused atoms do not enter the objective: re-seed them
            fresh = X[:, rng.choice(n, int(unused.sum()))]
            Dt[unused] = (fresh / np.maximum(np.linalg.norm(fresh, axis=0), 1e-12)).T
        D = Dt.T
        updated = _sparse_objective(X, D, A, lam)
        nnz = A.nnz / n
        elapsed = time.perf_counter() - start
        history.append((it, coded, updated, nnz, elapsed))
        log.info(
            "dictionary iteration %d: objective %.6f after coding, %.6f after update, "
            "%.2f non-zeros per code, %d unused atoms re-seeded, %.1f s",
            it,
            coded,
            updated,
            nnz,
            int(unused.sum()),
            elapsed,
        )
        if previous - updated < tol * abs(updated):
            converged = True
            break
        previous = updated
    return LearnedDictionary(np.ascontiguousarray(Dt.T), history, converged)


def _codes_objective(
    X: np.ndarray, D: np.ndarray, codes: list[sparse.csc_matrix], lam: float
) -> float:
    """Mean objective over all patches with the stored per-batch codes."""
    return _sparse_objective(X, D, sparse.hstack(codes).tocsc(), lam)
