import numpy as np
import pytest
from scipy import sparse

from clemalign._lasso_numba import OK, active_set_batch, lars_batch
from clemalign.dictionary import (
    _lasso_codes,
    lasso_codes,
    lasso_codes_on_working_set,
    lasso_kkt_violation,
    lasso_lars,
    lasso_objective,
    lasso_sdmm,
    learn_dictionary,
    soft_threshold,
    update_dictionary,
)


def _patch_problem(seed=0, m=25, k=60, n=40):
    """Image-like patches (smooth, correlated, non-negative) and a normalised dictionary
    of other such patches: badly conditioned, like the real one."""
    rng = np.random.default_rng(seed)
    side = int(np.sqrt(m))
    base = rng.random((n + k, side + 4, side + 4))
    from scipy import ndimage

    smooth = ndimage.uniform_filter(base, size=(1, 3, 3))[:, 2 : 2 + side, 2 : 2 + side]
    P = smooth.reshape(n + k, m).T * 3.0
    D = P[:, n:] / np.linalg.norm(P[:, n:], axis=0)
    return P[:, :n], D


@pytest.mark.parametrize("lam", [0.05, 0.3, 1.0])
def test_orthonormal_dictionary_closed_form(lam):
    """With an orthonormal dictionary the lasso is soft thresholding of Dᵀx."""
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    X = rng.normal(size=(30, 50))
    exact = soft_threshold(Q.T @ X, lam)
    f_exact = lasso_objective(X, Q, exact, lam)
    lars = lasso_lars(X, Q, lam)
    sdmm, info = lasso_sdmm(X, Q, lam, tol=1e-10)
    np.testing.assert_allclose(lars, exact, atol=1e-9)
    for A in (lars, sdmm):
        assert abs(lasso_objective(X, Q, A, lam) - f_exact) <= 1e-6 * f_exact
    assert info.primal_residual < 1e-9 and info.dual_residual < 1e-9


@pytest.mark.parametrize("lam", [0.05, 0.2])
def test_lars_and_sdmm_reach_the_same_optimum_on_patches(lam):
    X, D = _patch_problem()
    lars = lasso_lars(X, D, lam)
    sdmm, info = lasso_sdmm(X, D, lam, tol=1e-11, max_iter=200_000)
    f_lars, f_sdmm = lasso_objective(X, D, lars, lam), lasso_objective(X, D, sdmm, lam)
    assert abs(f_lars - f_sdmm) <= 1e-6 * f_lars
    assert lasso_kkt_violation(X, D, lars, lam) < 1e-9  # LARS is exact
    assert lasso_kkt_violation(X, D, sdmm, lam) < 1e-3
    assert (lars != 0).sum() > 0 and (lars == 0).mean() > 0.5  # a sparse regime


def test_lars_handles_all_zero_codes_and_chunks():
    X, D = _patch_problem(n=25)
    lam_max = np.abs(D.T @ X).max()
    assert not lasso_lars(X, D, lam_max * 1.01).any()
    whole = lasso_lars(X, D, 0.1)
    np.testing.assert_allclose(lasso_lars(X, D, 0.1, chunk=7), whole, atol=1e-12)


def test_dictionary_update_is_the_constrained_minimiser():
    rng = np.random.default_rng(4)
    X = rng.random((16, 200))
    D = rng.normal(size=(16, 24))
    D /= np.linalg.norm(D, axis=0)
    A = lasso_lars(X, D, 0.1)
    AAt, XAt = A @ A.T, X @ A.T

    def quad(M):
        return 0.5 * np.trace(M.T @ M @ AAt) - np.trace(M.T @ XAt)

    new = update_dictionary(D, AAt, XAt)
    assert np.all(np.linalg.norm(new, axis=0) <= 1 + 1e-9)
    assert quad(new) <= quad(D) + 1e-12
    # no feasible random perturbation does better (first-order optimality on the ball)
    for _ in range(20):
        trial = new + 1e-3 * rng.normal(size=new.shape)
        trial /= np.maximum(np.linalg.norm(trial, axis=0), 1.0)
        assert quad(trial) >= quad(new) - 1e-9


def test_dictionary_learning_decreases_the_objective_monotonically():
    rng = np.random.default_rng(7)
    X, _ = _patch_problem(seed=3, m=25, k=1, n=400)
    # four code blocks: the incremental steps (code a block, update D) are what is tested
    learned = learn_dictionary(X, 40, 0.2, rng, tol=1e-6, max_iter=15, batch_size=100)
    values = [v for _, coded, updated, _, _ in learned.history for v in (coded, updated)]
    assert all(b <= a + 1e-12 * abs(a) for a, b in zip(values, values[1:], strict=False))
    # it learns: below the objective of the initial dictionary (7.5 % here), not just holds
    D0 = X[:, np.random.default_rng(7).choice(X.shape[1], 40, replace=False)]
    D0 = D0 / np.linalg.norm(D0, axis=0)
    start = lasso_objective(X, D0, lasso_lars(X, D0, 0.2), 0.2)
    assert values[-1] < 0.95 * start, (values[-1], start)
    assert np.all(np.linalg.norm(learned.D, axis=0) <= 1 + 1e-9)
    # same seed, same dictionary
    again = learn_dictionary(
        X, 40, 0.2, np.random.default_rng(7), tol=1e-6, max_iter=15, batch_size=100
    )
    np.testing.assert_array_equal(again.D, learned.D)


def _degenerate_problem():
    """Random patches with a zero patch, a patch below λ_max, and duplicated atoms."""
    X, D = _patch_problem(seed=5, m=25, k=40, n=30)
    D = np.hstack([D, D[:, :5]])  # atoms 40-44 duplicate atoms 0-4 exactly
    X[:, 0] = 0.0  # zero patch: zero code
    X[:, 1] *= 0.3 / np.abs(D.T @ X[:, 1]).max()  # λ = 0.3 >= max|Dᵀx|: zero code
    return X, D, 0.3


def test_compiled_paths_match_the_reference_including_degenerate_cases():
    """Both compiled solvers (homotopy and active set) reach the SDMM optimum, exactly
    (KKT to rounding), on a problem with a zero patch, a patch whose code is zero
    because λ >= max|Dᵀx|, and duplicated atoms (singular Gram matrix)."""
    X, D, lam = _degenerate_problem()
    G = D.T @ D
    C = np.ascontiguousarray(X.T @ D)
    sdmm, _ = lasso_sdmm(X, D, lam, tol=1e-11, max_iter=200_000)
    f_ref = lasso_objective(X, D, sdmm, lam)
    n, k = X.shape[1], D.shape[1]
    zeros_i, zeros_v = np.zeros((n, 20), np.int32), np.zeros((n, 20))
    runs = {
        "homotopy": lars_batch(C, G, lam, 20),
        "active set": active_set_batch(
            C, G, lam, zeros_i, zeros_v, np.zeros(n, np.int32), 64, np.empty((n, 0), np.int32)
        ),
    }
    for name, (idx, val, nnz, status) in runs.items():
        assert (status == OK).mean() > 0.9, name  # the safety net is for rare cases only
        A = np.zeros((k, n))
        for i in np.flatnonzero(status == OK):
            A[idx[i, : nnz[i]], i] = val[i, : nnz[i]]
        ok = status == OK
        assert lasso_kkt_violation(X[:, ok], D, A[:, ok], lam) < 1e-9, name
        assert not A[:, 0].any() and not A[:, 1].any(), name
    # the public solver (compiled paths + exact correction) on the whole problem
    A = lasso_lars(X, D, lam)
    assert lasso_kkt_violation(X, D, A, lam) < 1e-9
    assert abs(lasso_objective(X, D, A, lam) - f_ref) <= 1e-6 * f_ref
    assert not A[:, 0].any() and not A[:, 1].any()


def test_warm_start_reaches_the_same_optimum():
    """Warm-started coding from wrong codes (random supports, wrong signs, a too-large
    support) ends at the cold optimum; the sparse and dense forms agree."""
    X, D = _patch_problem(seed=6, n=60)
    lam = 0.1
    cold = lasso_codes(X, D, lam)
    np.testing.assert_array_equal(cold.toarray(), lasso_lars(X, D, lam))
    rng = np.random.default_rng(0)
    bad = sparse.random(D.shape[1], X.shape[1], density=0.2, random_state=1, format="csc")
    bad.data = rng.normal(size=bad.data.size)
    for warm in (bad, cold, -cold):
        A = lasso_codes(X, D, lam, warm=warm).toarray()
        assert lasso_kkt_violation(X, D, A, lam) < 1e-9
        np.testing.assert_allclose(A, cold.toarray(), atol=1e-10)


def _per_patch_objective(X, D, A, lam):
    R = X - D @ A
    return 0.5 * (R * R).sum(axis=0) + lam * np.abs(A).sum(axis=0)


def test_near_atoms_and_warm_violation_are_those_of_the_solution():
    """The recorded near atoms are the off-support atoms with the largest |Dᵀ(x - Dα)| at
    the exact solution, and the warm-start violation is the KKT violation of the warm
    codes (computed independently here)."""
    X, D = _patch_problem(seed=7, n=50)
    lam, M = 0.1, 5
    A, near, _ = _lasso_codes(X, D, lam, n_near=M)
    A = A.toarray()
    G = D.T @ (X - D @ A)
    checked = 0
    for i in range(X.shape[1]):
        g = np.abs(G[:, i])
        g[A[:, i] != 0] = 0.0
        want = np.argsort(-g, kind="stable")[:M]
        if (near[i] >= 0).all():
            checked += 1
            np.testing.assert_allclose(g[near[i]], g[want], rtol=1e-12)
    assert checked > X.shape[1] // 2  # the comparison ran for most patches
    warm = sparse.csc_matrix(A + 0.05 * (A != 0))  # right supports, wrong values
    _, _, viol = _lasso_codes(X, D, lam, warm=warm, warm_kkt=True)
    assert viol == pytest.approx(lasso_kkt_violation(X, D, warm.toarray(), lam) * lam, rel=1e-9)


def test_working_set_step_is_exact_on_a_sufficient_set_and_never_worse():
    """From the solution for X, a working-set step for perturbed patches X' (support plus
    the near atoms) never raises any patch's lasso objective; where the exact solution
    for X' lies inside the working set it finds it; with every atom in the set it is the
    exact lasso for all patches."""
    X, D = _patch_problem(seed=8, n=60)
    lam, M = 0.1, 6
    k = D.shape[1]
    A, near, _ = _lasso_codes(X, D, lam, n_near=M)
    X2 = X + 0.02 * np.random.default_rng(3).normal(size=X.shape)
    exact = lasso_codes(X2, D, lam).toarray()
    step = lasso_codes_on_working_set(np.ascontiguousarray(X2.T), D, lam, A, near).toarray()
    before = _per_patch_objective(X2, D, A.toarray(), lam)
    after = _per_patch_objective(X2, D, step, lam)
    assert (after <= before + 1e-12).all()
    inside = 0
    for i in range(X.shape[1]):
        ws = set(A[:, [i]].indices) | {j for j in near[i] if j >= 0}
        if set(np.flatnonzero(exact[:, i])) <= ws:
            inside += 1
            np.testing.assert_allclose(step[:, i], exact[:, i], atol=1e-9)
    assert inside > X.shape[1] // 2  # the test means something
    everything = np.tile(np.arange(k, dtype=np.int32), (X.shape[1], 1))
    full = lasso_codes_on_working_set(np.ascontiguousarray(X2.T), D, lam, A, everything)
    np.testing.assert_allclose(full.toarray(), exact, atol=1e-9)
