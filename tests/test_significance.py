"""A-contrario significance and plausibility of fiducial matches."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from clemalign.fiducials import (
    _leverage,
    algorithm1,
    check_match,
    robust_match,
    robust_settings,
)
from clemalign.pointmatch import FiducialResult
from clemalign.significance import MatchCheck, assess_match, chance_probability, log10_nfa
from clemalign.transforms import affine_matrix, apply, fit_affine


def _check(**kw) -> MatchCheck:
    base = dict(
        n_consistent=20,
        n_source_inside=60,
        n_target=100,
        p_chance=0.03,
        expected_by_chance=1.8,
        log10_nfa=-12.0,
        singular_values=(1.01, 0.99),
    )
    return MatchCheck(**{**base, **kw})


def test_log10_nfa_equals_the_binomial_tail_times_the_tests():
    n, k, p, tests = 40, 9, 0.05, 500
    tail = sum(comb(n - 3, i) * p**i * (1 - p) ** (n - 3 - i) for i in range(k - 3, n - 3 + 1))
    assert log10_nfa(n, k, p, tests) == pytest.approx(np.log10(tests * tail), abs=1e-9)


def test_three_pairs_are_no_evidence_and_more_pairs_than_points_impossible():
    assert log10_nfa(50, 3, 0.1, 100) == pytest.approx(2.0)
    assert log10_nfa(10, 12, 0.1, 100) == -np.inf


def test_chance_probability_is_target_coverage():
    assert chance_probability(100, 0.2, 400.0) == pytest.approx(100 * np.pi * 0.04 / 400)
    assert chance_probability(10**6, 1.0, 1.0) == 1.0


def test_status_words_follow_the_thresholds():
    assert _check().status() == "ok"
    assert _check(log10_nfa=-1.0).status().startswith("uncertain: barely better than chance")
    assert _check(log10_nfa=0.5).status().startswith("failed: not better than chance")
    assert "need at least 4" in _check(n_consistent=3, log10_nfa=-5.0).status()


@pytest.mark.parametrize(
    ("sv", "word"),
    [
        ((0.87, 0.0), "singular values"),
        ((1.5, 1.4), "singular values"),
        ((1.2, 0.85), "anisotropy"),
    ],
)
def test_implausible_affines_fail_whatever_their_support(sv, word):
    status = _check(singular_values=sv).status()
    assert status.startswith("failed: implausible affine") and word in status


def test_a_true_match_is_significant_and_random_support_is_not():
    rng = np.random.default_rng(3)
    matrix = affine_matrix(rotation_deg=30.0, translation_um=(5.0, 2.0))
    src = rng.uniform(0, 15, (80, 2))
    dst = rng.uniform(0, 25, (150, 2))
    # 20 true pairs among the candidates
    dst[:20] = (matrix[:2, :2] @ src[:20].T).T + matrix[:2, 2] + rng.normal(0, 0.02, (20, 2))
    good = assess_match(matrix, src, dst, 20, 5000, 0.2, (25.0, 25.0))
    assert good.status() == "ok" and good.log10_nfa < -5
    # the support a random transform has: about what chance gives
    chance = assess_match(matrix, src, dst, 4, 5000, 0.2, (25.0, 25.0))
    assert chance.expected_by_chance == pytest.approx(good.expected_by_chance)
    assert chance.status().startswith("failed")


@pytest.mark.parametrize("seed", range(3))
def test_best_hypotheses_on_unrelated_points_are_not_significant(seed):
    """Negative control for significance alone: the matchers' best hypotheses on two
    independent uniform point sets, with any affine allowed, are explained by chance."""
    rng = np.random.default_rng(seed)
    src, dst = rng.uniform(0, 12, (60, 2)), rng.uniform(0, 20, (120, 2))
    for result in (
        algorithm1(src, dst, 3, 0.2),
        algorithm1(src, dst, 3, 0.2, refine=False),
        robust_match(src, dst, robust_settings(), 0.2, (20.0, 20.0)),
    ):
        check = check_match(result, src, dst, 0.2, (20.0, 20.0))
        status = check.status(plausible={"scale_range": [0.0, 1e9], "max_anisotropy": 1e9})
        assert status.startswith("failed"), status
        assert "chance" in status or "need at least" in status


def test_tolerance_scan_finds_a_tight_match_in_a_dense_field():
    """20 true pairs (5 nm noise) among 300 targets on 20 x 20 um: at 0.2 um chance
    gives ~11 pairs and 20 hardly stand out; the ORSA scan picks a tight tolerance and
    the match is clearly significant, with the scan counted as tests."""
    rng = np.random.default_rng(5)
    truth = np.array([[0.9, -0.3, 4.0], [0.35, 1.05, 3.0], [0.0, 0.0, 1.0]])
    src = rng.uniform(0, 12, (20, 2))
    dst = np.concatenate(
        [apply(truth, src) + rng.normal(0, 0.005, (20, 2)), rng.uniform(0, 20, (280, 2))]
    )
    result = FiducialResult(truth, np.zeros((0, 2), int), 0.0, 10**6, "test")
    check = check_match(result, src, dst, 0.2, (20.0, 20.0))
    assert check.tolerance_um < 0.1
    assert check.n_consistent == 20 and check.log10_nfa < -20
    assert check.status() == "ok"
    loose = assess_match(truth, src, dst, 20, 10**6, 0.2, (20.0, 20.0))
    assert loose.log10_nfa > check.log10_nfa + 15


def test_held_out_residual_is_the_leave_one_out_residual():
    """residual / (1 - h) equals the residual of a pair under the fit without it (the
    consistency test of check_match counts pairs by it)."""
    rng = np.random.default_rng(2)
    src, dst = rng.uniform(0, 10, (7, 2)), rng.uniform(0, 10, (7, 2))
    fitted = apply(fit_affine(src, dst), src) - dst
    held_out = fitted / (1.0 - _leverage(src))[:, None]
    for i in range(7):
        keep = np.arange(7) != i
        alone = apply(fit_affine(src[keep], dst[keep]), src[i : i + 1])[0] - dst[i]
        np.testing.assert_allclose(held_out[i], alone, atol=1e-9)
    assert np.all(_leverage(src[:3]) == 1.0)  # 3 pairs: nothing is held out
