"""Global search without a start: masked NCC by FFT and recovery of a known placement
under rotation, scale and mirror."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from clemalign.evaluation import truth_error_um
from clemalign.search import SearchRange, global_search, local_contrast, masked_ncc
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
