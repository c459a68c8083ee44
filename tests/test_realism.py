"""Realism statistics of confocal images (clemalign.phantom.realism): known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from clemalign.phantom.realism import (
    DEFAULT_SIGMAS_UM,
    REAL_PAIR_RANGES,
    acf_half_width_um,
    autocorrelation,
    best_smoothed_inverted_tem,
    confocal_statistics,
    median_over_p99,
    power_fraction_above,
    within_real_ranges,
)

PX_PER_UM = 14.52


def _blurred_noise(seed: int, sigma_px: float, shape=(512, 512)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.standard_normal(shape), sigma_px, mode="wrap")


def _sinusoid(cycles_per_um: float, shape=(256, 256)) -> np.ndarray:
    _, x = np.mgrid[: shape[0], : shape[1]]
    return np.sin(2 * np.pi * cycles_per_um * x / PX_PER_UM + 0.3)


# --- autocorrelation -------------------------------------------------------------------


def test_autocorrelation_is_one_at_zero_lag_and_symmetric():
    image = _blurred_noise(1, 2.0, (64, 80))
    acf = autocorrelation(image)
    assert acf.shape == (127, 159)
    assert acf[63, 79] == pytest.approx(1.0)
    np.testing.assert_allclose(acf, acf[::-1, ::-1], atol=1e-10)


def test_autocorrelation_does_not_wrap_around():
    # A ramp along x: with wrap-around the lag-(n-1) product would pair the two ends.
    image = np.tile(np.arange(32, dtype=float), (8, 1))
    acf = autocorrelation(image)
    centred = np.arange(32) - 15.5
    # at lag dx = 31 only one pair per row overlaps: (x=0, x=31)
    expected = centred[0] * centred[31] / np.mean(centred**2)
    assert acf[7, 31 + 31] == pytest.approx(expected)


def test_acf_half_width_of_blurred_white_noise():
    # exp(-r^2 / (4 s^2)) = 0.5 at r = 2 s sqrt(ln 2)
    s = 4.0
    expected_um = 2 * s * math.sqrt(math.log(2)) / PX_PER_UM
    image = _blurred_noise(0, s)
    got = acf_half_width_um(image, PX_PER_UM)
    assert got == pytest.approx(expected_um, rel=0.05)


def test_acf_half_width_scales_with_pixel_size():
    image = _blurred_noise(0, 4.0)
    fine = acf_half_width_um(image, PX_PER_UM)
    coarse = acf_half_width_um(image, PX_PER_UM / 2)
    assert coarse == pytest.approx(2 * fine, rel=1e-12)
    wider = acf_half_width_um(_blurred_noise(0, 8.0), PX_PER_UM)
    assert wider == pytest.approx(2 * fine, rel=0.08)


def test_acf_half_width_with_masked_block():
    image = _blurred_noise(2, 4.0)
    masked = image.copy()
    masked[100:260, 150:400] = np.nan
    full = acf_half_width_um(image, PX_PER_UM)
    assert acf_half_width_um(masked, PX_PER_UM) == pytest.approx(full, rel=0.03)
    # a NaN block filled with a large constant instead would distort it
    filled = np.where(np.isfinite(masked), masked, 10.0)
    assert abs(acf_half_width_um(filled, PX_PER_UM) - full) > 0.2 * full


def test_acf_half_width_of_flat_image_is_nan():
    assert math.isnan(acf_half_width_um(np.ones((32, 32)), PX_PER_UM))


# --- power above 1 cycle/um ------------------------------------------------------------


def test_power_fraction_of_sinusoids():
    assert power_fraction_above(_sinusoid(0.5), PX_PER_UM) < 1e-3
    assert power_fraction_above(_sinusoid(2.0), PX_PER_UM) > 0.999
    # the threshold is a parameter
    assert power_fraction_above(_sinusoid(2.0), PX_PER_UM, cycles_per_um=3.0) < 1e-3


def test_power_fraction_of_white_noise():
    # flat spectrum: the share of the frequency square [-p/2, p/2]^2 outside the unit disc
    noise = np.random.default_rng(3).standard_normal((512, 512))
    expected = 1 - math.pi / PX_PER_UM**2
    assert power_fraction_above(noise, PX_PER_UM) == pytest.approx(expected, rel=0.02)
    # at 2 px/um the square is [-1, 1]^2: only its corners lie outside the unit disc
    assert power_fraction_above(noise, 2.0) == pytest.approx(1 - math.pi / 4, rel=0.02)


def test_power_fraction_ignores_offset_and_nan():
    image = _sinusoid(2.0) + 100.0
    image[:10, :10] = np.nan
    assert power_fraction_above(image, PX_PER_UM) > 0.99


# --- median over 99th percentile -------------------------------------------------------


def test_median_over_p99_known_array():
    values = np.arange(1.0, 101.0)  # median 50.5; p99 = 99 + 0.01 (linear interpolation)
    image = np.append(values, [np.nan, np.inf]).reshape(2, 51)
    assert median_over_p99(image) == pytest.approx(50.5 / 99.01)
    assert math.isnan(median_over_p99(np.zeros((4, 4))))


# --- best smoothed inverted TEM --------------------------------------------------------


def _tem_and_confocal(seed: int, sigma_um: float, shape=(256, 256)):
    rng = np.random.default_rng(seed)
    tem = rng.random(shape)  # sharp: white noise in [0, 1]
    confocal = ndimage.gaussian_filter(1 - tem, sigma_um * PX_PER_UM, mode="nearest")
    confocal += 0.1 * confocal.std() * rng.standard_normal(shape)
    return tem, confocal


def test_best_sigma_recovered():
    tem, confocal = _tem_and_confocal(4, 0.35)
    confocal[:40, :] = np.nan  # outside the confocal data
    sigma, r = best_smoothed_inverted_tem(tem, confocal, PX_PER_UM)
    assert abs(sigma - 0.35) <= 0.05 + 1e-9
    assert r > 0.95


def test_best_sigma_is_on_the_grid_and_sign_matters():
    tem, confocal = _tem_and_confocal(5, 0.8)
    sigma, r = best_smoothed_inverted_tem(tem, confocal, PX_PER_UM)
    assert sigma in DEFAULT_SIGMAS_UM
    assert abs(sigma - 0.8) <= 0.05 + 1e-9
    assert r > 0.95
    # a confocal bright where the TEM is bright correlates negatively at every sigma; the
    # least negative r is at sigma 0: corr(noise, its blur) = 1 / (sqrt(pi) s_px) = 0.049
    sigmas_um = (0.0, 0.4, 0.8, 1.2)
    sigma_flipped, r_flipped = best_smoothed_inverted_tem(tem, -confocal, PX_PER_UM, sigmas_um)
    assert sigma_flipped == 0.0
    assert r_flipped == pytest.approx(-1 / (math.sqrt(math.pi) * 0.8 * PX_PER_UM), rel=0.2)


def test_best_sigma_unrelated_confocal_is_uncorrelated():
    tem, _ = _tem_and_confocal(6, 0.35)
    _, other = _tem_and_confocal(7, 0.35)
    _, r = best_smoothed_inverted_tem(tem, other, PX_PER_UM)
    assert abs(r) < 0.15


def test_best_sigma_zero_means_unfiltered():
    tem = np.random.default_rng(8).random((64, 64))
    sigma, r = best_smoothed_inverted_tem(tem, 2.0 * (1 - tem) + 5.0, PX_PER_UM)
    assert sigma == 0.0
    assert r == pytest.approx(1.0)


def test_best_sigma_rejects_mismatched_grids():
    with pytest.raises(ValueError, match="grids differ"):
        best_smoothed_inverted_tem(np.zeros((8, 8)), np.zeros((8, 9)), PX_PER_UM)


# --- all statistics and the real ranges ------------------------------------------------


def test_confocal_statistics_keys_and_missing_tem():
    confocal = np.abs(_blurred_noise(9, 6.0, (128, 128)))
    stats = confocal_statistics(confocal, PX_PER_UM)
    assert list(stats) == list(REAL_PAIR_RANGES)
    assert math.isnan(stats["best_sigma_um"]) and math.isnan(stats["best_pearson_r"])
    assert stats["acf_half_width_um"] > 0
    assert 0 < stats["power_above_1_per_um"] < 1
    assert 0 < stats["median_over_p99"] < 1

    tem, on_grid = _tem_and_confocal(10, 0.35, (128, 128))
    stats = confocal_statistics(confocal, PX_PER_UM, tem=tem, confocal_on_tem_grid=on_grid)
    assert abs(stats["best_sigma_um"] - 0.35) <= 0.05 + 1e-9
    assert stats["best_pearson_r"] > 0.9


def test_within_real_ranges_edges():
    lows = {k: lo for k, (lo, _) in REAL_PAIR_RANGES.items()}
    highs = {k: hi for k, (_, hi) in REAL_PAIR_RANGES.items()}
    assert all(within_real_ranges(lows).values())
    assert all(within_real_ranges(highs).values())

    below = {k: v * 0.99 for k, v in lows.items()}
    above = {k: v * 1.01 for k, v in highs.items()}
    assert not any(within_real_ranges(below).values())
    assert not any(within_real_ranges(above).values())
    # a 2 % tolerance widens both ends
    assert all(within_real_ranges(below, tolerance=0.02).values())
    assert all(within_real_ranges(above, tolerance=0.02).values())

    partial = within_real_ranges({"median_over_p99": 0.4, "best_pearson_r": float("nan")})
    assert list(partial) == list(REAL_PAIR_RANGES)
    assert partial["median_over_p99"] is True
    assert partial["best_pearson_r"] is False
    assert partial["acf_half_width_um"] is False
