"""Sparse coding and joint dictionary learning (paper sec. 4.5-4.6, appendix A).

Objective of one patch ``x`` (columns of ``X``) with dictionary ``D`` (atoms as columns):

    ½ ||x - D a||² + λ ||a||₁

(the paper's eq. 8; SPAMS and scikit-learn use the same scaling, so λ means the same
thing everywhere). Two solvers of the same problem:

* :func:`lasso_sdmm`: the paper's SDMM (Algorithm 3): ``L1 = D``, ``L2 = I``, the
  quadratic and the ℓ1 term split, all patches at once as matrix products, the
  projection ``(I + DᵀD)⁻¹`` by the Woodbury identity, stopped on primal and dual
  residuals. The reference implementation of the method.
* :func:`lasso_lars`: the production solver. A LARS-lasso homotopy batched over
  patches (every patch follows its own regularisation path from λ_max down to λ, one
  event per step, all patches advancing together), in float32 to find the support and
  signs, then an exact float64 solve on that support, and a check of the optimality
  conditions. Exact, and fast because the codes are very sparse.

:func:`learn_dictionary` alternates exact coding of all patches with the least-squares
dictionary update ``D = B A⁻¹`` (appendix A) under the constraint ``||d_j|| <= 1``
(without it the ℓ1 term can be driven to zero by growing the atoms: the problem has no
minimiser). When the unconstrained update is feasible it is the constrained optimum;
otherwise block-coordinate passes over the atoms (Mairal et al. 2010) minimise the same
quadratic on the constraint set. Both steps are exact minimisations, so the objective
never increases.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import linalg

LOG = logging.getLogger(__name__)


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


def _lars_chunk(
    c0: np.ndarray, G: np.ndarray, Dt: np.ndarray, D: np.ndarray, lam: float, max_active: int
) -> tuple[np.ndarray, np.ndarray]:
    """LARS-lasso homotopy for a block of patches; returns (support slots, signs).

    c0 : (p, k) float32 correlations Dᵀx; G : (k, k) float64 Gram; Dt : (k, m) and
    D : (m, k) float32. The state is kept only for the patches still on their path
    (compacted as they finish), so late steps cost little.
    Returns index (p, s) with -1 for empty slots, and the signs of the correlations.
    """
    p, k = c0.shape
    out_idx = np.full((p, max_active), -1, dtype=np.int64)
    out_sgn = np.zeros((p, max_active))
    lam_now = np.abs(c0).max(axis=1).astype(np.float64)
    rows = np.flatnonzero(lam_now > lam)  # original row of each running patch
    c = c0[rows].copy()
    lam_now = lam_now[rows]
    r = rows.size
    idx = np.full((r, max_active), -1, dtype=np.int64)
    beta = np.zeros((r, max_active))
    n_act = np.ones(r, dtype=np.int64)
    active = np.zeros((r, k), dtype=bool)
    first = np.abs(c).argmax(axis=1)
    idx[:, 0] = first
    active[np.arange(r), first] = True
    eps = np.float32(1e-7)
    while r:
        ar = np.arange(r)
        n = int(n_act.max())
        ix = idx[:, :n]
        live = ix >= 0
        ixs = np.where(live, ix, 0)
        sgn = np.where(live, np.sign(np.take_along_axis(c, ixs, axis=1)), 0.0)
        gaa = G[ixs[:, :, None], ixs[:, None, :]]
        both = live[:, :, None] & live[:, None, :]
        gaa[~both] = 0.0
        diag = np.arange(n)
        gaa[:, diag, diag] = np.where(live, gaa[:, diag, diag], 1.0)
        d = np.linalg.solve(gaa, sgn[..., None])[..., 0]  # dβ per unit decrease of λ
        d32 = d.astype(np.float32)
        w = d32[:, 0, None] * Dt[ixs[:, 0]]
        for slot in range(1, n):
            w += d32[:, slot, None] * Dt[ixs[:, slot]]
        a = w @ D  # (r, k): rate of decrease of the correlations
        lam32 = lam_now.astype(np.float32)[:, None]
        # joining: an inactive atom reaches |c_j - γ a_j| = λ - γ
        g = np.full((r, k), np.inf, dtype=np.float32)
        den = 1.0 - a
        np.divide(lam32 - c, den, out=g, where=den > eps)
        den = 1.0 + a
        g2 = np.full((r, k), np.inf, dtype=np.float32)
        np.divide(lam32 + c, den, out=g2, where=den > eps)
        np.minimum(g, g2, out=g)
        g[active] = np.inf
        g[g <= eps] = np.inf
        j_join = g.argmin(axis=1)
        g_join = g[ar, j_join].astype(np.float64)
        b = beta[:, :n]
        with np.errstate(divide="ignore", invalid="ignore"):
            gl = np.where(live & (d != 0), -b / d, np.inf)
        gl[~(gl > 1e-12)] = np.inf
        s_leave = gl.argmin(axis=1)
        g_leave = gl[ar, s_leave]
        g_target = lam_now - lam
        gamma = np.minimum(np.minimum(g_join, g_leave), g_target)
        beta[:, :n] = b + gamma[:, None] * d * live
        c -= gamma[:, None].astype(np.float32) * a
        lam_now -= gamma
        done = gamma >= g_target - 1e-12
        leave = ~done & (g_leave <= g_join)
        join = ~done & ~leave
        if leave.any():
            rl = np.flatnonzero(leave)
            sl = s_leave[leave]
            active[rl, idx[rl, sl]] = False
            idx[rl, sl] = -1
            beta[rl, sl] = 0.0
        if join.any():
            rj = np.flatnonzero(join)
            full = n_act[rj] >= max_active
            free = idx[rj] < 0
            has_free = free.any(axis=1)
            slot = np.where(has_free, free.argmax(axis=1), n_act[rj])
            ok = has_free | ~full
            done[rj[~ok]] = True
            rj, slot, jj = rj[ok], slot[ok], j_join[rj[ok]]
            idx[rj, slot] = jj
            beta[rj, slot] = 0.0
            n_act[rj] = np.maximum(n_act[rj], slot + 1)
            active[rj, jj] = True
        if done.any():
            fin = np.flatnonzero(done)
            fi = np.maximum(idx[fin], 0)
            out_idx[rows[fin]] = idx[fin]
            out_sgn[rows[fin]] = np.sign(np.take_along_axis(c[fin], fi, axis=1)) * (idx[fin] >= 0)
            keep = ~done
            rows, c, lam_now = rows[keep], c[keep], lam_now[keep]
            idx, beta, n_act, active = idx[keep], beta[keep], n_act[keep], active[keep]
            r = rows.size
    return out_idx, out_sgn


def _exact_on_support(
    Dtx: np.ndarray, G: np.ndarray, idx: np.ndarray, sgn: np.ndarray, lam: float
) -> np.ndarray:
    """β_A = G_AA⁻¹ (Dᵀx_A - λ s_A) in float64 for each patch's support (p, s slots)."""
    live = idx >= 0
    ixs = np.where(live, idx, 0)
    gaa = G[ixs[:, :, None], ixs[:, None, :]]
    both = live[:, :, None] & live[:, None, :]
    gaa = np.where(both, gaa, np.eye(idx.shape[1])[None])
    rhs = np.where(live, np.take_along_axis(Dtx, ixs, axis=1) - lam * sgn, 0.0)
    return np.linalg.solve(gaa, rhs[..., None])[..., 0] * live


def _correct_support(
    x: np.ndarray,
    dtx: np.ndarray,
    D: np.ndarray,
    G: np.ndarray,
    signs: dict[int, float],
    lam: float,
    max_rounds: int = 50,
) -> dict[int, float]:
    """Active-set correction for one patch whose homotopy support fails the optimality
    conditions (float32 near-ties): drop atoms whose exact coefficient has the wrong
    sign, add the most violating atom, until the conditions hold (float64)."""
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


def lasso_lars(
    X: np.ndarray,
    D: np.ndarray,
    lam: float,
    chunk: int = 8192,
    max_active: int | None = None,
    gram: np.ndarray | None = None,
) -> np.ndarray:
    """Exact lasso for every column of ``X`` by a LARS homotopy batched over patches.

    Parameters
    ----------
    X : ndarray, shape (m, n)
        Patches as columns.
    D : ndarray, shape (m, k)
        Dictionary (atoms as columns; any norms).
    lam : float
        λ.
    chunk : int
        Patches processed together (memory ~ chunk x k x 4 bytes x a few).
    max_active : int, optional
        Cap on the support size (default min(m, k)).
    gram : ndarray, optional
        Precomputed ``DᵀD`` (float64).

    Returns
    -------
    ndarray, shape (k, n), float64
        Codes.
    """
    D64 = np.asarray(D, dtype=np.float64)
    m, k = D64.shape
    G = D64.T @ D64 if gram is None else gram
    D32 = D64.astype(np.float32)
    Dt32 = np.ascontiguousarray(D32.T)
    max_active = min(m, k) if max_active is None else max_active
    X = np.asarray(X)
    n = X.shape[1]
    out = np.zeros((k, n))
    for s0 in range(0, n, chunk):
        xs = np.asarray(X[:, s0 : s0 + chunk], dtype=np.float32)
        c0 = np.ascontiguousarray((Dt32 @ xs).T)  # (p, k)
        idx, sgn = _lars_chunk(c0, G, Dt32, D32, lam, max_active)
        used = int((idx >= 0).sum(axis=1).max(initial=0))
        order = np.argsort(idx < 0, axis=1, kind="stable")[:, : max(used, 1)]
        idx = np.take_along_axis(idx, order, axis=1)
        sgn = np.take_along_axis(sgn, order, axis=1)
        dtx = (D64.T @ np.asarray(X[:, s0 : s0 + chunk], dtype=np.float64)).T
        beta = _exact_on_support(dtx, G, idx, sgn, lam)
        cols = np.arange(idx.shape[0])[:, None] + s0
        live = idx >= 0
        out[idx[live], np.broadcast_to(cols, idx.shape)[live]] = beta[live]
        # Optimality conditions in float64: g = Dᵀ(x - D a) with |g| <= λ off the support
        # and g = λ sign(a) on it. The rare patches that fail are corrected exactly.
        block = out[:, s0 : s0 + chunk]
        x64 = np.asarray(X[:, s0 : s0 + chunk], dtype=np.float64)
        g = D64.T @ (x64 - D64 @ block)
        on = block != 0
        bad_on = np.abs(g - lam * np.sign(block)) > 1e-7 * lam
        bad_off = np.abs(g) > lam * (1 + 1e-7)
        bad = np.flatnonzero(((bad_on & on) | (bad_off & ~on)).any(axis=0))
        for col in bad:
            start = {int(j): float(np.sign(block[j, col])) for j in np.flatnonzero(on[:, col])}
            fixed = _correct_support(x64[:, col], dtx[col], D64, G, start, lam)
            block[:, col] = 0.0
            for j, v in fixed.items():
                block[j, col] = v
    return out


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
    D = D.copy()
    for _ in range(max_passes):
        moved = 0.0
        for j in np.flatnonzero(used):
            u = D[:, j] + (XAt[:, j] - D @ AAt[:, j]) / AAt[j, j]
            u /= max(np.linalg.norm(u), 1.0)
            moved = max(moved, float(np.abs(u - D[:, j]).max()))
            D[:, j] = u
        if moved < tol:
            break
    return D


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
) -> LearnedDictionary:
    """Alternating minimisation of Σ ½||x_i - D a_i||² + λ||a_i||₁ over D and the codes.

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
        Draws the initial atoms (random training patches, normalised).
    tol : float
        Stop when an iteration lowers the objective by less than this fraction.
    max_iter : int
        Iteration cap.
    log : logging.Logger, optional
        Progress (iteration, objective, non-zeros, time) is logged here.

    Returns
    -------
    LearnedDictionary
    """
    log = log or LOG
    X = np.asarray(X, dtype=np.float64)
    m, n = X.shape
    D = X[:, rng.choice(n, n_atoms, replace=n < n_atoms)].copy()
    norms = np.linalg.norm(D, axis=0)
    dead = norms < 1e-12
    D[:, dead] = rng.normal(size=(m, int(dead.sum())))
    D /= np.linalg.norm(D, axis=0)
    history = []
    previous = np.inf
    start = time.perf_counter()
    converged = False
    for it in range(1, max_iter + 1):
        A = lasso_lars(X, D, lam)
        coded = lasso_objective(X, D, A, lam)
        D = update_dictionary(D, A @ A.T, X @ A.T)
        unused = ~(A != 0).any(axis=1)
        if unused.any():  # unused atoms do not enter the objective: re-seed them
            fresh = X[:, rng.choice(n, int(unused.sum()))]
            D[:, unused] = fresh / np.maximum(np.linalg.norm(fresh, axis=0), 1e-12)
        updated = lasso_objective(X, D, A, lam)
        nnz = float((A != 0).sum(axis=0).mean())
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
    return LearnedDictionary(D, history, converged)
