"""Global search without a start: masked NCC by FFT and recovery of a known placement
under rotation, scale and mirror."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from clemalign.confidence import ConfidenceLimits
from clemalign.evaluation import truth_error_um
from clemalign.register import register_affine
from clemalign.search import (
    SearchRange,
    StartSearch,
    global_search,
    global_status,
    local_contrast,
    masked_ncc,
    pick_refined,
    refine_placement,
    start_candidates,
    windowed_ncc,
)
from clemalign.transforms import affine_matrix, warp_image


def _textured(shape, seed, sigma=2.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return (image - image.min()) / (image.max() - image.min())


def test_masked_ncc_equals_pearson_at_every_shift():
    rng = np.random.default_rng(0)
    fixed, moving = rng.random((12, 14)), rng.random((5, 4))
    fmask = np.ones_like(fixed, bool)
    fmask[0, :] = False
    mmask = np.ones_like(moving, bool)
    mmask[2, 1] = False
    ncc, overlap = masked_ncc(fixed, fmask, moving, mmask)
    for row, col in [(0, 0), (3, 5), (7, 10), (-2, -1)]:
        i, j = row + moving.shape[0] - 1, col + moving.shape[1] - 1
        a, b = [], []
        for r in range(moving.shape[0]):
            for c in range(moving.shape[1]):
                fr, fc = row + r, col + c
                inside = 0 <= fr < fixed.shape[0] and 0 <= fc < fixed.shape[1]
                if inside and mmask[r, c] and fmask[fr, fc]:
                    a.append(moving[r, c])
                    b.append(fixed[fr, fc])
        assert overlap[i, j] == len(a)
        assert ncc[i, j] == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-9)


@pytest.mark.parametrize("mirrored", [False, True])
def test_global_search_recovers_a_rotated_scaled_placement(mirrored):
    ppu = 4.0
    fixed = _textured((240, 240), seed=1)  # 60 um
    truth = affine_matrix(117.0, (0.96, 0.96), 0.0, (31.0, 24.0), center_um=(0.0, 0.0))
    if mirrored:
        truth = truth @ np.diag([-1.0, 1.0, 1.0])
    moving = warp_image(fixed, ppu, np.linalg.inv(truth), (80, 80), ppu, order=3)  # 20 um
    found = global_search(
        moving,
        fixed,
        moving_px_per_um=ppu,
        fixed_px_per_um=ppu,
        search=SearchRange(rotation_step_deg=6.0, scale_steps=3, coarse_px_per_um=1.0),
        measure="ssd",
    )
    assert truth_error_um(found.matrix, truth, moving.shape, ppu) < 0.05
    assert found.candidates[0]["mirrored"] is mirrored and found.gap > 0.1


@pytest.mark.parametrize("margin_um", [3.0, None])
def test_refine_placement_answers_in_the_whole_fixed_frame(margin_um):
    """From a placement 0.6 um and 2 deg off, near the fixed image's edge (the crop is
    clipped there), the refinement on the crop (resampled to the moving image's
    sampling) and on the whole fixed image both recover the truth in the whole image's
    um; a placement outside the fixed image is refused."""
    fixed_ppu, moving_ppu = 3.0, 4.0
    fixed = _textured((180, 180), seed=4, sigma=1.5)  # 60 um at 3 px/um
    truth = affine_matrix(20.0, (1.03, 0.98), 0.01, (41.0, 2.0), center_um=(0.0, 0.0))
    moving = warp_image(fixed, fixed_ppu, np.linalg.inv(truth), (72, 72), moving_ppu, order=3)
    off = truth @ affine_matrix(2.0, (1.0, 1.0), 0.0, (0.6, -0.4), center_um=(9.0, 9.0))
    kwargs = {"moving_px_per_um": moving_ppu, "fixed_px_per_um": fixed_ppu, "measure": "ssd"}
    assert truth_error_um(off, truth, moving.shape, moving_ppu) > 0.5
    got = refine_placement(moving, fixed, off, crop_margin_um=margin_um, **kwargs)
    assert truth_error_um(got, truth, moving.shape, moving_ppu) < 0.05
    outside = affine_matrix(0.0, (1.0, 1.0), 0.0, (200.0, 200.0))
    with pytest.raises(ValueError):
        refine_placement(moving, fixed, outside, crop_margin_um=margin_um, **kwargs)


def test_local_contrast_removes_a_slow_background():
    image = _textured((100, 100), seed=2, sigma=1.0)
    ramp = np.linspace(0, 5, 100)[None, :]
    a = local_contrast(image, 2.0, 1.5)
    b = local_contrast(image + ramp, 2.0, 1.5)
    inner = (slice(10, -10), slice(10, -10))
    assert np.corrcoef(a[inner].ravel(), b[inner].ravel())[0, 1] > 0.99
    nan = image.copy()
    nan[5, 5] = np.nan
    assert np.isnan(local_contrast(nan, 2.0, 1.5)[5, 5])


def _start_case(seed: int):
    """A 20 um moving texture inside a 40 um fixed one, the true placement, and a rough
    start 12 deg, 8 % scale and 1.8 um away from it (the wide protocol's kind of error)."""
    ppu = 4.0
    fixed = _textured((160, 160), seed=seed)
    truth = affine_matrix(20.0, (1.03, 0.98), 0.02, (9.0, 11.0), center_um=(0.0, 0.0))
    moving = warp_image(fixed, ppu, np.linalg.inv(truth), (80, 80), ppu, order=3)
    centre = (10.0, 10.0)
    off = affine_matrix(-12.0, (1.08, 1.08), 0.0, (1.2, -1.35), center_um=centre)
    return moving, fixed, truth, truth @ off, ppu


def test_start_search_finds_the_placement_a_rough_start_misses():
    moving, fixed, truth, start, ppu = _start_case(seed=3)
    search = StartSearch(coarse_px_per_um=2.0)
    found = start_candidates(
        moving, fixed, start, moving_px_per_um=ppu, fixed_px_per_um=ppu, search=search
    )
    assert 1 <= len(found) <= search.candidates
    assert truth_error_um(start, truth, moving.shape, ppu) > 2.0
    assert truth_error_um(found[0]["matrix"], truth, moving.shape, ppu) < 0.6
    refined = [
        register_affine(
            moving, fixed, c["matrix"], moving_px_per_um=ppu, fixed_px_per_um=ppu, measure="ssd"
        ).matrix
        for c in found
    ]
    best, r, gap = pick_refined(moving, fixed, refined, ppu, search.contrast_um)
    assert truth_error_um(refined[best], truth, moving.shape, ppu) < 0.05
    assert r > 0.9 and (np.isinf(gap) or gap > 0.1)


def test_start_search_stays_within_its_window():
    """A shift window too small for the start's error cannot reach the truth: the search
    looks only where it is told to."""
    moving, fixed, truth, start, ppu = _start_case(seed=3)
    search = StartSearch(rotation_deg=0.0, scale_steps=1, shift_um=0.3, candidates=1)
    found = start_candidates(
        moving, fixed, start, moving_px_per_um=ppu, fixed_px_per_um=ppu, search=search
    )
    centre = np.array([10.0, 10.0, 1.0])
    moved = np.linalg.norm((found[0]["matrix"] @ centre)[:2] - (start @ centre)[:2])
    assert moved <= 0.3 + 1e-9
    assert truth_error_um(found[0]["matrix"], truth, moving.shape, ppu) > 1.0


def test_pick_refined_prefers_the_true_placement_and_reports_the_gap():
    moving, fixed, truth, start, ppu = _start_case(seed=4)
    best, r, gap = pick_refined(moving, fixed, [start, truth], ppu, 1.0)
    assert best == 1 and r > 0.9 and gap > 0.3
    assert pick_refined(moving, fixed, [truth, truth @ np.eye(3)], ppu, 1.0)[2] == np.inf


def test_windowed_ncc_equals_masked_ncc_on_its_placements():
    rng = np.random.default_rng(5)
    fixed, moving = rng.random((20, 22)), rng.random((6, 5))
    fixed[3, 4] = np.nan
    mmask = np.ones_like(moving, bool)
    mmask[1, 2] = False
    full, full_n = masked_ncc(np.nan_to_num(fixed), np.isfinite(fixed), moving, mmask)
    rows, cols = np.arange(-3, 18), np.arange(-2, 20)  # partly outside the fixed image
    got, n = windowed_ncc(fixed, moving, mmask, rows, cols)
    i, j = rows + moving.shape[0] - 1, cols + moving.shape[1] - 1
    np.testing.assert_array_equal(n, full_n[np.ix_(i, j)])
    np.testing.assert_allclose(got, full[np.ix_(i, j)], atol=1e-9)


def test_a_second_search_image_overrules_a_misleading_first():
    """The first search image is unrelated to the fixed one (it finds a false placement
    alone); the second is the true view. Pooled and scored by the mean correlation of
    both, the true placement wins, and its status is ok."""
    ppu = 4.0
    fixed = _textured((240, 240), seed=1)
    truth = affine_matrix(40.0, (1.0, 1.0), 0.0, (30.0, 28.0), center_um=(0.0, 0.0))
    view = warp_image(fixed, ppu, np.linalg.inv(truth), (80, 80), ppu, order=3)
    unrelated = _textured((80, 80), seed=9)
    search = SearchRange(rotation_step_deg=10.0, scale_steps=1, mirror=False, coarse_px_per_um=1.0)
    alone = global_search(
        unrelated, fixed, moving_px_per_um=ppu, fixed_px_per_um=ppu, search=search,
        measure="ssd", refine_moving=view,
    )  # fmt: skip
    assert truth_error_um(alone.matrix, truth, view.shape, ppu) > 1.0
    pooled = global_search(
        unrelated, fixed, moving_px_per_um=ppu, fixed_px_per_um=ppu, search=search,
        measure="ssd", refine_moving=view, more_probes=[view],
    )  # fmt: skip
    assert truth_error_um(pooled.matrix, truth, view.shape, ppu) < 0.05
    limits = ConfidenceLimits()
    assert global_status(pooled, limits, min_gap=0.05) == "ok"
    assert global_status(pooled, limits, min_gap=10.0).startswith("uncertain: another placement")
    squashed = replace(
        pooled, candidates=[pooled.candidates[0] | {"coarse": np.diag([1.5, 1.5, 1.0])}]
    )
    assert "scale changed" in global_status(squashed, limits, min_gap=0.05)
