"""Compiled (numba) kernels of the exact lasso and of the patch/dictionary bookkeeping.

Lasso, one patch per task, all in float64 from the correlations ``c = Dᵀx`` of a block of
patches (one GEMM by the caller) and the Gram matrix ``G = DᵀD``:

* :func:`active_set_batch`: feature-sign active-set method (Lee et al. 2007), from zero
  or from given codes (warm start). Solves the sign-fixed problem on the support with a
  Cholesky factor of ``G_AA`` (grown by rows; rebuilt after a drop), steps back to the
  first sign change, adds the most violating atoms; stops when the optimality
  conditions hold to 1e-10 λ, which makes the result exact to rounding.
* :func:`lars_batch`: LARS-lasso homotopy (Efron et al. 2004, with the lasso
  modification) with rank-one Cholesky updates (Givens rotations on a leave), the
  fallback for the rare patches where the active-set method stalls (singular supports).
  It ends with an exact solve on the final support and the same float64 check.

* :func:`working_set_batch`: the same active-set method restricted to a few atoms per
  patch (its support and the atoms nearest to entering, which :func:`active_set_batch`
  records), with their correlations computed in the kernel: the cheap code step of
  eq. 7. :func:`warm_violation` measures how far given codes are from optimal.

A patch that a kernel cannot certify is FLAGGED for the caller's exact correction.

Dictionary and images: :func:`atom_passes` (block-coordinate dictionary update),
:func:`decode_rows` (``D @ codes`` from sparse codes), :func:`patches_into` (patch
extraction without strided copies), :func:`decode_overlap` and :func:`residual_sq`
(overlap sums and the patch residual of eq. 7 without storing the decoded patches).

Patches are independent, so the parallel loops are deterministic whatever the number of
threads (``numba.set_num_threads`` / ``NUMBA_NUM_THREADS``). All kernels are cached on
disk (``cache=True``).
"""

from __future__ import annotations

import numba
import numpy as np

#: Status codes written per patch.
OK, FLAGGED, OVERFLOW = 0, 1, 2

_BLOCK = 64  # patches per parallel task (work arrays allocated once per task)


@numba.njit(cache=True)
def _solve_chol(L: np.ndarray, s: int, rhs: np.ndarray, out: np.ndarray) -> None:
    """out[:s] = (L Lᵀ)⁻¹ rhs[:s] for the leading s x s lower-triangular block of L."""
    for i in range(s):
        v = rhs[i]
        for t in range(i):
            v -= L[i, t] * out[t]
        out[i] = v / L[i, i]
    for i in range(s - 1, -1, -1):
        v = out[i]
        for t in range(i + 1, s):
            v -= L[t, i] * out[t]
        out[i] = v / L[i, i]


@numba.njit(cache=True, fastmath={"nnan", "nsz"})
def _min_join(
    c: np.ndarray, a: np.ndarray, pen: np.ndarray, lam_now: float, gbuf: np.ndarray
) -> float:
    """Step length at which each atom joins, into gbuf; returns the smallest.

    An inactive atom j reaches |c_j - γ a_j| = λ_now - γ at γ = (λ_now ∓ c_j) / (1 ∓ a_j)
    (positive denominators only); ``pen`` is +inf for atoms that may not join. Written
    without branches so that it vectorises (no NaN can arise: denominators are
    replaced by 1 where they are not used).
    """
    best = np.inf
    for j in range(c.shape[0]):
        cj = c[j]
        aj = a[j]
        d1 = 1.0 - aj
        d2 = 1.0 + aj
        n1 = max(lam_now - cj, 0.0)
        n2 = max(lam_now + cj, 0.0)
        g1 = n1 / (d1 if d1 > 1e-12 else 1.0)
        g2 = n2 / (d2 if d2 > 1e-12 else 1.0)
        g1 = g1 if d1 > 1e-12 else np.inf
        g2 = g2 if d2 > 1e-12 else np.inf
        g = min(g1, g2) + pen[j]
        gbuf[j] = g
        best = min(best, g)
    return best


@numba.njit(cache=True)
def _lars_one(
    c0: np.ndarray,
    G: np.ndarray,
    lam: float,
    width: int,
    idx_out: np.ndarray,
    val_out: np.ndarray,
    c: np.ndarray,
    a: np.ndarray,
    state: np.ndarray,
    L: np.ndarray,
    act: np.ndarray,
    sgn: np.ndarray,
    beta: np.ndarray,
    w: np.ndarray,
    tmp: np.ndarray,
    pen: np.ndarray,
    gbuf: np.ndarray,
) -> tuple[int, int]:
    """Homotopy for one patch. Returns (support size, status).

    state[j]: 0 inactive, 1 active, 2 blocked (linearly dependent on the active set).
    """
    k = c0.shape[0]
    for j in range(k):
        c[j] = c0[j]
        state[j] = 0
        pen[j] = 0.0
    j0 = 0
    best = -1.0
    for j in range(k):
        v = abs(c[j])
        if v > best:
            best = v
            j0 = j
    lam_now = best
    if lam_now <= lam:
        return 0, OK
    s = 0
    status = OK
    # add j0
    gjj = G[j0, j0]
    if gjj <= 0.0:
        return 0, FLAGGED
    L[0, 0] = np.sqrt(gjj)
    act[0] = j0
    sgn[0] = 1.0 if c[j0] > 0 else -1.0
    beta[0] = 0.0
    state[j0] = 1
    pen[j0] = np.inf
    s = 1
    excluded = -1
    max_steps = 8 * width + 100
    for _step in range(max_steps):
        # direction on the active set: G_AA w = sgn
        _solve_chol(L, s, sgn, w)
        for j in range(k):
            a[j] = 0.0
        for t in range(s):
            row = G[act[t]]
            wt = w[t]
            for j in range(k):
                a[j] += wt * row[j]
        # events
        g_target = lam_now - lam
        gamma = g_target
        event = 0  # 0 target, 1 join, 2 leave
        who = -1
        if excluded >= 0:
            pen[excluded] = np.inf
        gj = _min_join(c, a, pen, lam_now, gbuf)
        if excluded >= 0:
            pen[excluded] = 0.0
        if gj < gamma:
            gamma = gj
            event = 1
            for j in range(k):
                if gbuf[j] == gj:
                    who = j
                    break
        for t in range(s):
            if w[t] != 0.0:
                g = -beta[t] / w[t]
                if g > 0.0 and g < gamma:
                    gamma = g
                    event = 2
                    who = t
        # move
        for t in range(s):
            beta[t] += gamma * w[t]
        for j in range(k):
            c[j] -= gamma * a[j]
        lam_now -= gamma
        excluded = -1
        if event == 0:
            break
        if event == 2:
            p = who
            state[act[p]] = 0
            pen[act[p]] = 0.0
            excluded = act[p]
            # delete row p of L, restore triangularity by Givens rotations
            for i in range(p, s - 1):
                for t in range(i + 2):
                    L[i, t] = L[i + 1, t]
                act[i] = act[i + 1]
                sgn[i] = sgn[i + 1]
                beta[i] = beta[i + 1]
            s -= 1
            for i in range(p, s):
                x0 = L[i, i]
                y0 = L[i, i + 1]
                r = np.hypot(x0, y0)
                cs = x0 / r
                sn = y0 / r
                for row in range(i, s):
                    x1 = L[row, i]
                    y1 = L[row, i + 1]
                    L[row, i] = cs * x1 + sn * y1
                    L[row, i + 1] = -sn * x1 + cs * y1
                L[i, i + 1] = 0.0
            if s == 0:
                # every coefficient left: restart from the largest correlation
                best = -1.0
                for j in range(k):
                    if state[j] == 0 and abs(c[j]) > best:
                        best = abs(c[j])
                        j0 = j
                if best <= lam:
                    break
                who = j0
                event = 1
            else:
                continue
        # join `who`
        j = who
        if s >= width:
            status = OVERFLOW
            break
        for t in range(s):
            tmp[t] = G[act[t], j]
        # forward solve L v = G[A, j]
        nrm = 0.0
        for i in range(s):
            v = tmp[i]
            for t in range(i):
                v -= L[i, t] * L[s, t]
            v /= L[i, i]
            L[s, i] = v
            nrm += v * v
        d2 = G[j, j] - nrm
        if d2 <= 1e-10 * G[j, j]:
            state[j] = 2  # dependent on the active atoms: never joins (checked below)
            pen[j] = np.inf
            continue
        L[s, s] = np.sqrt(d2)
        act[s] = j
        sgn[s] = 1.0 if c[j] > 0 else -1.0
        beta[s] = 0.0
        state[j] = 1
        pen[j] = np.inf
        s += 1
    else:
        status = FLAGGED
    if status == OVERFLOW:
        return s, status
    # exact coefficients on the support: G_AA β = c0_A - λ sgn
    for t in range(s):
        tmp[t] = c0[act[t]] - lam * sgn[t]
    _solve_chol(L, s, tmp, beta)
    for t in range(s):
        if beta[t] * sgn[t] <= 0.0:
            status = FLAGGED
    # optimality conditions: g = c0 - G[:, A] β
    for j in range(k):
        a[j] = c0[j]
    for t in range(s):
        row = G[act[t]]
        bt = beta[t]
        for j in range(k):
            a[j] -= bt * row[j]
    tol = 1e-10 * lam
    for j in range(k):
        if state[j] == 1:
            continue
        if abs(a[j]) > lam + tol:
            status = FLAGGED
    for t in range(s):
        if abs(a[act[t]] - lam * sgn[t]) > tol:
            status = FLAGGED
    for t in range(s):
        idx_out[t] = act[t]
        val_out[t] = beta[t]
    return s, status


@numba.njit(cache=True)
def _lars_rows(
    C: np.ndarray,
    G: np.ndarray,
    lam: float,
    width: int,
    idx: np.ndarray,
    val: np.ndarray,
    nnz: np.ndarray,
    status: np.ndarray,
    r0: int,
    r1: int,
) -> None:
    """:func:`_lars_one` for rows r0 <= i < r1 of ``C`` (work arrays allocated once)."""
    k = C.shape[1]
    c = np.empty(k)
    a = np.empty(k)
    state = np.empty(k, dtype=np.int8)
    L = np.zeros((width + 1, width + 1))
    act = np.empty(width + 1, dtype=np.int64)
    sgn = np.empty(width + 1)
    beta = np.empty(width + 1)
    w = np.empty(width + 1)
    tmp = np.empty(width + 1)
    pen = np.empty(k)
    gbuf = np.empty(k)
    for i in range(r0, r1):
        s, st = _lars_one(
            C[i], G, lam, width, idx[i], val[i], c, a, state, L, act, sgn, beta, w, tmp, pen, gbuf
        )
        nnz[i] = s
        status[i] = st


@numba.njit(cache=True, parallel=True)
def _lars_parallel(
    C: np.ndarray,
    G: np.ndarray,
    lam: float,
    width: int,
    idx: np.ndarray,
    val: np.ndarray,
    nnz: np.ndarray,
    status: np.ndarray,
) -> None:
    """Rows of C in parallel blocks (see :func:`lars_batch`)."""
    n_blocks = (C.shape[0] + _BLOCK - 1) // _BLOCK
    for b in numba.prange(n_blocks):
        _lars_rows(
            C, G, lam, width, idx, val, nnz, status, b * _BLOCK, min(C.shape[0], (b + 1) * _BLOCK)
        )


def lars_batch(
    C: np.ndarray, G: np.ndarray, lam: float, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """LARS-lasso for every row of ``C`` (correlations Dᵀx, shape (n, k), float64).

    Returns idx (n, width) int32, val (n, width) float64 (the first ``nnz[i]`` slots
    of row i hold the support and coefficients), nnz (n,) int32 and status (n,) int8
    (OK, FLAGGED: optimality not certified, OVERFLOW: support larger than ``width``).
    A few rows are done serially: a parallel region costs a scheduling round trip.
    """
    n = C.shape[0]
    idx = np.zeros((n, width), dtype=np.int32)
    val = np.zeros((n, width))
    nnz = np.zeros(n, dtype=np.int32)
    status = np.zeros(n, dtype=np.int8)
    if n <= _BLOCK:
        _lars_rows(C, G, float(lam), width, idx, val, nnz, status, 0, n)
    else:
        _lars_parallel(C, G, float(lam), width, idx, val, nnz, status)
    return idx, val, nnz, status


@numba.njit(cache=True)
def _chol_from(G: np.ndarray, act: np.ndarray, s: int, L: np.ndarray) -> bool:
    """Cholesky factor of G[act[:s]][:, act[:s]] into L; False when not positive definite."""
    for i in range(s):
        gi = G[act[i]]
        for j in range(i + 1):
            v = gi[act[j]]
            for t in range(j):
                v -= L[i, t] * L[j, t]
            if i == j:
                if v <= 1e-10 * gi[act[i]]:
                    return False
                L[i, i] = np.sqrt(v)
            else:
                L[i, j] = v / L[j, j]
    return True


@numba.njit(cache=True)
def _append_chol(G: np.ndarray, act: np.ndarray, s: int, j: int, L: np.ndarray) -> bool:
    """Extend the Cholesky factor of G_AA (A = act[:s]) by atom j as row s of L;
    False (L unchanged in its leading block) when j depends on the active atoms."""
    gj = G[j]
    nrm = 0.0
    for i in range(s):
        v = gj[act[i]]
        for t in range(i):
            v -= L[i, t] * L[s, t]
        v /= L[i, i]
        L[s, i] = v
        nrm += v * v
    d2 = gj[j] - nrm
    if d2 <= 1e-10 * gj[j]:
        return False
    L[s, s] = np.sqrt(d2)
    return True


_ADD = 3  # violating atoms added per active-set round at most


@numba.njit(cache=True)
def _active_set_one(
    c0: np.ndarray,
    G: np.ndarray,
    lam: float,
    width: int,
    n0: int,
    idx_out: np.ndarray,
    val_out: np.ndarray,
    g: np.ndarray,
    L: np.ndarray,
    act: np.ndarray,
    sgn: np.ndarray,
    beta: np.ndarray,
    new: np.ndarray,
    tmp: np.ndarray,
    max_rounds: int,
) -> tuple[int, int]:
    """Active-set (feature-sign) lasso for one patch from the support in idx_out[:n0]
    with coefficients val_out[:n0] (any signs; zeros are dropped). Returns (size, status).

    Each round solves the sign-fixed problem on the support, G_AA β = c_A - λ s_A; if some
    coefficient changes sign, moves from the current point towards the solution only up
    to the first zero crossing (the objective decreases along the segment) and drops the
    atoms that reached zero; otherwise checks the optimality conditions and adds the (at
    most three) most violating atoms at zero with the sign of their correlation. The
    Cholesky factor of G_AA grows by rows and is rebuilt after a drop. Exact at
    termination; FLAGGED when it stalls or runs out of rounds (the caller then runs the
    homotopy).
    """
    k = c0.shape[0]
    s = 0
    for t in range(n0):
        v = val_out[t]
        if v != 0.0:
            act[s] = idx_out[t]
            beta[s] = v
            sgn[s] = 1.0 if v > 0 else -1.0
            s += 1
    if s > 0 and not _chol_from(G, act, s, L):
        return s, FLAGGED
    tol = 1e-10 * lam
    best_v = np.empty(_ADD)
    best_j = np.empty(_ADD, dtype=np.int64)
    n_add = _ADD
    for _round in range(max_rounds):
        if s > 0:
            for t in range(s):
                tmp[t] = c0[act[t]] - lam * sgn[t]
            _solve_chol(L, s, tmp, new)
            # first zero crossing on the segment beta -> new
            tcross = 1.0
            for t in range(s):
                if new[t] * sgn[t] <= 0.0:
                    d = beta[t] - new[t]
                    tt = beta[t] / d if d != 0.0 else 0.0
                    if tt < tcross:
                        tcross = tt
            if tcross <= 0.0:
                # an atom just added at zero wants the other sign: no progress along
                # this segment. Drop such atoms and add one at a time from now on.
                if n_add == 1:
                    return s, FLAGGED
                n_add = 1
                keep = 0
                for t in range(s):
                    if not (beta[t] == 0.0 and new[t] * sgn[t] <= 0.0):
                        act[keep] = act[t]
                        sgn[keep] = sgn[t]
                        beta[keep] = beta[t]
                        keep += 1
                s = keep
                if s > 0 and not _chol_from(G, act, s, L):
                    return s, FLAGGED
                continue
            if tcross < 1.0:
                keep = 0
                for t in range(s):
                    v = beta[t] + tcross * (new[t] - beta[t])
                    drop = v * sgn[t] <= 0.0
                    if new[t] * sgn[t] <= 0.0:
                        d = beta[t] - new[t]
                        tt = beta[t] / d if d != 0.0 else 0.0
                        drop = drop or tt <= tcross * (1.0 + 1e-12)
                    if not drop:
                        act[keep] = act[t]
                        sgn[keep] = sgn[t]
                        beta[keep] = v
                        keep += 1
                s = keep
                if s > 0 and not _chol_from(G, act, s, L):
                    return s, FLAGGED
                continue
            for t in range(s):
                beta[t] = new[t]
        # optimality conditions: g = c0 - G[:, A] β
        for j in range(k):
            g[j] = c0[j]
        for t in range(s):
            row = G[act[t]]
            bt = beta[t]
            for j in range(k):
                g[j] -= bt * row[j]
        for t in range(s):
            g[act[t]] = 0.0  # on the support: checked by the solve
        _top_abs(g[:k], lam + tol, best_v, best_j)  # g may be a longer work array
        if best_j[0] < 0:
            for t in range(s):
                idx_out[t] = act[t]
                val_out[t] = beta[t]
            return s, OK
        added = 0
        for r in range(n_add):
            jw = best_j[r]
            if jw < 0:
                break
            if s >= width:
                return s, OVERFLOW
            if not _append_chol(G, act, s, jw, L):
                continue
            act[s] = jw
            sgn[s] = 1.0 if g[jw] > 0 else -1.0
            beta[s] = 0.0
            s += 1
            added += 1
        if added == 0:
            return s, FLAGGED
    return s, FLAGGED


@numba.njit(cache=True, parallel=True)
def active_set_batch(
    C: np.ndarray,
    G: np.ndarray,
    lam: float,
    idx0: np.ndarray,
    val0: np.ndarray,
    nnz0: np.ndarray,
    max_rounds: int,
    near: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Warm-started active-set lasso for every row of ``C`` (correlations, (n, k)).

    ``idx0``/``val0`` (n, width) and ``nnz0`` (n,) give each patch's starting support and
    coefficients (e.g. the previous codes; ``nnz0 = 0`` starts from zero). Same outputs as
    :func:`lars_batch`; FLAGGED patches should be recoded by the homotopy. ``near``
    (n, M), written in place, receives for each certified patch the M off-support atoms
    closest to entering (largest |optimality residual|, descending; -1 pads; M may be 0):
    the working set of :func:`working_set_batch`.
    """
    n, k = C.shape
    width = idx0.shape[1]
    idx = idx0.copy()
    val = val0.copy()
    nnz = np.zeros(n, dtype=np.int32)
    status = np.zeros(n, dtype=np.int8)
    n_blocks = (n + _BLOCK - 1) // _BLOCK
    for b in numba.prange(n_blocks):
        g = np.empty(k)
        L = np.zeros((width + 1, width + 1))
        act = np.empty(width + 1, dtype=np.int64)
        sgn = np.empty(width + 1)
        beta = np.empty(width + 1)
        new = np.empty(width + 1)
        tmp = np.empty(width + 1)
        best = np.empty(near.shape[1])
        for i in range(b * _BLOCK, min(n, (b + 1) * _BLOCK)):
            s, st = _active_set_one(
                C[i],
                G,
                lam,
                width,
                nnz0[i],
                idx[i],
                val[i],
                g,
                L,
                act,
                sgn,
                beta,
                new,
                tmp,
                max_rounds,
            )
            nnz[i] = s if st == OK else 0
            status[i] = st
            if near.shape[1] > 0:
                if st == OK:  # g holds the final residual correlations, 0 on the support
                    _top_abs(g, 0.0, best, near[i])
                else:
                    near[i, :] = -1
    return idx, val, nnz, status


@numba.njit(cache=True)
def _top_abs(g: np.ndarray, floor: float, best: np.ndarray, out: np.ndarray) -> None:
    """Indices of the len(out) largest |g| above ``floor`` (descending) into ``out``, -1
    where fewer exceed it; ``best`` (at least len(out) long) receives their |g|."""
    m = out.shape[0]
    for r in range(m):
        best[r] = floor
        out[r] = -1
    for j in range(g.shape[0]):
        v = abs(g[j])
        if v > best[m - 1]:
            r = m - 1
            while r > 0 and v > best[r - 1]:
                best[r] = best[r - 1]
                out[r] = out[r - 1]
                r -= 1
            best[r] = v
            out[r] = j


@numba.njit(cache=True, fastmath=True)
def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Σ a_t b_t, vectorised (reassociated sum; the same on every run and thread count)."""
    v = 0.0
    for t in range(a.shape[0]):
        v += a[t] * b[t]
    return v


@numba.njit(cache=True, parallel=True)
def working_set_batch(
    Yt: np.ndarray,
    Dt: np.ndarray,
    G: np.ndarray,
    lam: float,
    idx0: np.ndarray,
    val0: np.ndarray,
    nnz0: np.ndarray,
    near: np.ndarray,
    max_rounds: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lasso of every patch restricted to a working set of atoms (no full correlations).

    Patch i (row ``Yt[i]``, length m) is coded exactly over the atoms W_i = its current
    support (``idx0[i, :nnz0[i]]``, coefficients ``val0``) plus ``near[i]`` (the atoms
    closest to entering at the last full step; -1 entries are ignored): the correlations
    of those atoms only (``Dt[j] · y``, |W_i| x m operations instead of k x m), the Gram
    block ``G[W_i, W_i]``, and :func:`_active_set_one` warm-started from the current
    codes. Codes outside W_i stay zero, so the result minimises the lasso over a subspace
    that contains the current codes: it never raises the objective, and it is the exact
    lasso solution whenever no atom outside W_i violates the optimality conditions (which
    only a full step can certify). Patches the kernel cannot solve keep their codes
    (status FLAGGED). Returns idx, val (n, width), nnz (n,), status (n,) with global atom
    indices, as :func:`active_set_batch`.
    """
    n, m = Yt.shape
    width = idx0.shape[1]
    n_near = near.shape[1]
    q_max = width + n_near
    idx = idx0.copy()
    val = val0.copy()
    nnz = nnz0.copy()
    status = np.zeros(n, dtype=np.int8)
    n_blocks = (n + _BLOCK - 1) // _BLOCK
    for b in numba.prange(n_blocks):
        cand = np.empty(q_max, dtype=np.int64)
        c_loc = np.empty(q_max)
        G_loc = np.empty((q_max, q_max))
        idx_loc = np.empty(width, dtype=np.int32)
        val_loc = np.empty(width)
        g = np.empty(q_max)
        L = np.zeros((width + 1, width + 1))
        act = np.empty(width + 1, dtype=np.int64)
        sgn = np.empty(width + 1)
        beta = np.empty(width + 1)
        new = np.empty(width + 1)
        tmp = np.empty(width + 1)
        for i in range(b * _BLOCK, min(n, (b + 1) * _BLOCK)):
            q = 0
            for t in range(nnz0[i]):
                if val0[i, t] != 0.0:
                    cand[q] = idx0[i, t]
                    idx_loc[q] = q
                    val_loc[q] = val0[i, t]
                    q += 1
            s0 = q
            for r in range(n_near):
                j = near[i, r]
                if j < 0:
                    continue
                dup = False
                for t in range(s0):
                    if cand[t] == j:
                        dup = True
                        break
                if not dup:
                    cand[q] = j
                    q += 1
            y = Yt[i]
            for a in range(q):
                c_loc[a] = _dot(Dt[cand[a]], y)
                ga = G[cand[a]]
                for b2 in range(q):
                    G_loc[a, b2] = ga[cand[b2]]
            s, st = _active_set_one(
                c_loc[:q],
                G_loc,
                lam,
                width,
                s0,
                idx_loc,
                val_loc,
                g,
                L,
                act,
                sgn,
                beta,
                new,
                tmp,
                max_rounds,
            )
            status[i] = st
            if st == OK:
                for t in range(s):
                    idx[i, t] = cand[idx_loc[t]]
                    val[i, t] = val_loc[t]
                nnz[i] = s
    return idx, val, nnz, status


@numba.njit(cache=True)
def atom_passes(
    Dt: np.ndarray, AAt: np.ndarray, XAt_t: np.ndarray, max_passes: int, tol: float
) -> int:
    """Block-coordinate passes over the atoms for the dictionary update (in place).

    Minimises ½ tr(Dᵀ D AAᵀ) - tr(Dᵀ XAᵀ) over ``||d_j|| <= 1`` one atom at a time: the
    atom's exact minimiser ``d_j + (b_j - D a_j) / A_jj`` projected on the unit ball
    (Mairal et al. 2010); every step lowers the objective. ``Dt`` (k, m) holds the atoms
    as rows, ``XAt_t`` is (XAᵀ)ᵀ. Atoms with ``A_jj = 0`` are left alone. Stops after
    ``max_passes`` or when no atom entry moved by more than ``tol``; returns the passes.
    """
    k, m = Dt.shape
    u = np.empty(m)
    for p in range(max_passes):
        moved = 0.0
        for j in range(k):
            ajj = AAt[j, j]
            if ajj <= 0.0:
                continue
            for i in range(m):
                u[i] = XAt_t[j, i]
            row = AAt[j]
            for q in range(k):
                al = row[q]
                if al != 0.0:
                    dl = Dt[q]
                    for i in range(m):
                        u[i] -= al * dl[i]
            nrm = 0.0
            for i in range(m):
                u[i] = Dt[j, i] + u[i] / ajj
                nrm += u[i] * u[i]
            scale = 1.0 / max(np.sqrt(nrm), 1.0)
            for i in range(m):
                v = u[i] * scale
                moved = max(moved, abs(v - Dt[j, i]))
                Dt[j, i] = v
        if moved < tol:
            return p + 1
    return max_passes


@numba.njit(cache=True)
def patches_into(image: np.ndarray, size: int, out: np.ndarray, col0: int) -> None:
    """Write every size x size window of ``image`` (row-major positions, each window
    flattened row by row) into ``out[i, col0 : col0 + size²]``, i the window's index."""
    rows = image.shape[0] - size + 1
    cols = image.shape[1] - size + 1
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            t = col0
            for dy in range(size):
                for dx in range(size):
                    out[i, t] = image[r + dy, c + dx]
                    t += 1


@numba.njit(cache=True, parallel=True)
def decode_rows(
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, Dt: np.ndarray
) -> np.ndarray:
    """Patches from CSC codes, patch by patch: out[i] = Σ_t data_t Dt[indices_t] over
    column i's entries (shape (n, m); cost nnz x m)."""
    n = indptr.size - 1
    m = Dt.shape[1]
    out = np.zeros((n, m))
    for i in numba.prange(n):
        row = out[i]
        for t in range(indptr[i], indptr[i + 1]):
            v = data[t]
            d = Dt[indices[t]]
            for q in range(m):
                row[q] += v * d[q]
    return out


@numba.njit(cache=True)
def decode_overlap(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    Dt: np.ndarray,
    size: int,
    totals: np.ndarray,
) -> None:
    """Overlap sums of decoded patches without storing them: patch i (CSC column i of
    the codes, window i in row-major order) is decoded as Σ_t data_t Dt[indices_t] and
    its part h (rows h·size² … of the stacked atom) added into ``totals[h]`` (h, rows,
    cols) at the window's position (in place)."""
    n_img, rows_img, cols_img = totals.shape
    rows = rows_img - size + 1
    cols = cols_img - size + 1
    m = Dt.shape[1]
    buf = np.empty(m)
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            for q in range(m):
                buf[q] = 0.0
            for t in range(indptr[i], indptr[i + 1]):
                v = data[t]
                d = Dt[indices[t]]
                for q in range(m):
                    buf[q] += v * d[q]
            t = 0
            for h in range(n_img):
                img = totals[h]
                for dy in range(size):
                    for dx in range(size):
                        img[r + dy, c + dx] += buf[t]
                        t += 1


@numba.njit(cache=True, parallel=True)
def residual_sq(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    Dt: np.ndarray,
    images: np.ndarray,
    size: int,
) -> float:
    """Σ_i ||y_i - D α_i||², y_i the stacked window i of ``images`` (h, rows, cols) and
    α_i CSC column i of the codes, without storing the patches (deterministic sum)."""
    n_img, rows_img, cols_img = images.shape
    rows = rows_img - size + 1
    cols = cols_img - size + 1
    m = Dt.shape[1]
    part = np.zeros(rows)
    for r in numba.prange(rows):
        buf = np.empty(m)
        acc = 0.0
        for c in range(cols):
            i = r * cols + c
            t = 0
            for h in range(n_img):
                for dy in range(size):
                    for dx in range(size):
                        buf[t] = images[h, r + dy, c + dx]
                        t += 1
            for t in range(indptr[i], indptr[i + 1]):
                v = data[t]
                d = Dt[indices[t]]
                for q in range(m):
                    buf[q] -= v * d[q]
            acc += _dot(buf, buf)
        part[r] = acc
    total = 0.0
    for r in range(rows):
        total += part[r]
    return total


@numba.njit(cache=True, parallel=True)
def warm_violation(
    C: np.ndarray,
    G: np.ndarray,
    lam: float,
    idx: np.ndarray,
    val: np.ndarray,
    nnz: np.ndarray,
) -> np.ndarray:
    """Largest violation of the lasso optimality conditions of given codes, per row of
    the correlations ``C`` (n, k): with g = c - G α, |g_j - λ sign α_j| on the support
    (``idx``/``val``/``nnz`` slots) and max(|g_j| - λ, 0) off it."""
    n, k = C.shape
    out = np.zeros(n)
    for i in numba.prange(n):
        g = C[i].copy()
        for t in range(nnz[i]):
            v = val[i, t]
            if v != 0.0:
                row = G[idx[i, t]]
                for j in range(k):
                    g[j] -= v * row[j]
        worst = 0.0
        for t in range(nnz[i]):
            v = val[i, t]
            if v != 0.0:
                j = idx[i, t]
                s = 1.0 if v > 0 else -1.0
                worst = max(worst, abs(g[j] - lam * s))
                g[j] = 0.0
        for j in range(k):
            worst = max(worst, abs(g[j]) - lam)
        out[i] = worst
    return out
