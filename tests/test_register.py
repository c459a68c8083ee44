"""Known-answer tests of the affine registration engine (clemalign.register)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from clemalign.register import (
    MEASURES,
    RegistrationResult,
    grid_error_um,
    make_cost,
    perturb_affine,
    register_affine,
    weights_from_uncertainty,
)
from clemalign.transforms import affine_matrix, fit_similarity, translation_matrix, warp_image

PPU = 10.0  # px/um of both images
MOVING_SHAPE = (100, 100)  # 10 x 10 um
FIXED_SHAPE = (160, 160)  # 16 x 16 um
OFFSET = translation_matrix(3.0, 3.0)  # nominal position of the moving field in the fixed
CENTRE = (5.0, 5.0)  # moving field centre, um


def texture(seed: int = 0, shape: tuple[int, int] = FIXED_SHAPE) -> np.ndarray:
    """Smooth random field (default: on the fixed grid), scaled to [0, 1]."""
    rng = np.random.default_rng(seed)
    field = sum(ndimage.gaussian_filter(rng.standard_normal(shape), s) * s for s in (1.5, 3.0, 6.0))
    return (field - field.min()) / (field.max() - field.min())


def truth_affine(mirror: bool = False) -> np.ndarray:
    """Rotation 4 deg, scale 4 % (x) / -3 % (y), shear 3 %, translation 5 px, about the centre."""
    local = affine_matrix(
        rotation_deg=4.0,
        scale=(1.04, 0.97),
        shear=0.03,
        translation_um=(0.4, -0.3),  # 5 px at 10 px/um
        mirror=mirror,
        center_um=CENTRE,
    )
    return OFFSET @ local


def moving_from(fixed: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The moving image whose pixel x shows fixed(truth x)."""
    return warp_image(fixed, PPU, np.linalg.inv(truth), MOVING_SHAPE, PPU, order=3).astype(float)


def error_px(a: np.ndarray, b: np.ndarray) -> float:
    return grid_error_um(a, b, MOVING_SHAPE, PPU) * PPU


def register(moving, fixed, start, **kw) -> RegistrationResult:
    return register_affine(moving, fixed, start, moving_px_per_um=PPU, fixed_px_per_um=PPU, **kw)


@pytest.fixture(scope="module")
def pair():
    fixed = texture(0)
    truth = truth_affine()
    return fixed, moving_from(fixed, truth), truth


def test_ssd_recovers_known_affine(pair):
    fixed, moving, truth = pair
    assert error_px(OFFSET, truth) > 5.0  # the start is well off
    result = register(moving, fixed, OFFSET, measure="ssd")
    assert error_px(result.matrix, truth) < 0.05
    assert result.measure == "ssd"
    assert len(result.info["levels"]) == 3
    assert [lv["level"] for lv in result.info["levels"]] == [2, 1, 0]
    assert all(lv["converged"] for lv in result.info["levels"])
    assert result.info["overlap"] == 1.0
    assert result.value == result.info["levels"][-1]["cost"]


def test_ssd_from_a_similarity_start(pair):
    """The workflow's start: a similarity close to (but not at) the true affine."""
    fixed, moving, truth = pair
    start = OFFSET @ affine_matrix(rotation_deg=3.0, scale=(1.0, 1.0), center_um=CENTRE)
    result = register(moving, fixed, start, measure="ssd", normalize=False)
    assert error_px(result.matrix, truth) < 0.05


def test_mi_recovers_under_non_monotonic_remap(pair):
    fixed, moving, truth = pair
    remapped = np.sin(3.0 * np.pi * fixed)  # not monotonic: SSD cannot align these
    result = register(moving, remapped, OFFSET, measure="mi", bins=32)
    assert error_px(result.matrix, truth) < 0.1
    assert result.value < 0  # minus the mutual information


def test_mirrored_transform_recovered():
    fixed = texture(1)
    truth = truth_affine(mirror=True)
    assert np.linalg.det(truth[:2, :2]) < 0
    moving = moving_from(fixed, truth)
    start = OFFSET @ affine_matrix(mirror=True, center_um=CENTRE)
    for measure in ("ssd", "mi"):
        result = register(moving, fixed, start, measure=measure)
        assert error_px(result.matrix, truth) < 0.1, measure


@pytest.mark.parametrize("measure", MEASURES)
def test_analytic_gradient_matches_finite_differences(pair, measure):
    fixed, moving, truth = pair
    rng = np.random.default_rng(3)
    weights = rng.uniform(0.0, 1.0, MOVING_SHAPE) if measure == "wssd" else None
    if measure == "mi":
        fixed = np.sin(3.0 * np.pi * fixed)
    cost = make_cost(
        moving,
        fixed,
        OFFSET,
        moving_px_per_um=PPU,
        fixed_px_per_um=PPU,
        measure=measure,
        weights=weights,
    )
    np.testing.assert_allclose(cost.matrix(cost.params(truth)), truth, atol=1e-12)
    for x in (cost.params(truth) + rng.normal(0.0, 0.05, 6), cost.params(OFFSET)):
        value, grad = cost(x)
        h = 1e-5  # um
        numeric = np.array([(cost(x + h * e)[0] - cost(x - h * e)[0]) / (2 * h) for e in np.eye(6)])
        assert np.max(np.abs(numeric - grad)) <= 1e-4 * np.max(np.abs(grad)), measure
        assert np.isfinite(value)


@pytest.mark.parametrize("contrast, limit_px", [(None, 0.05), (1.0, 0.1)])
def test_weighted_ssd_ignores_a_down_weighted_corruption(pair, contrast, limit_px):
    """Eq. 12: a corrupted quarter with zero weight does not pull the answer, on globally
    standardised intensities and on local contrast (where the weights also keep the
    corrupted pixels out of their neighbours' local statistics)."""
    fixed, moving, truth = pair
    corrupted = moving.copy()
    corrupted[:50, :50] = np.roll(texture(5)[:50, :50], 0) * 2.0  # wrong content, wrong gain
    uncertainty = np.zeros(MOVING_SHAPE)
    uncertainty[:50, :50] = 1.0
    weights = weights_from_uncertainty(uncertainty)
    np.testing.assert_array_equal(weights[:50, :50], 0.0)
    options = {"ssd_contrast_um": contrast}
    weighted = register(corrupted, fixed, OFFSET, measure="wssd", weights=weights, **options)
    plain = register(corrupted, fixed, OFFSET, measure="ssd", **options)
    assert error_px(weighted.matrix, truth) < limit_px
    assert error_px(plain.matrix, truth) > 2 * error_px(weighted.matrix, truth)


def test_moving_mask_and_nans_exclude_pixels(pair):
    fixed, moving, truth = pair
    corrupted = moving.copy()
    corrupted[60:, 60:] = 5.0  # a bright block the mask removes
    corrupted[:10, :] = np.nan  # NaNs are excluded without a mask
    mask = np.ones(MOVING_SHAPE, bool)
    mask[60:, 60:] = False
    result = register(corrupted, fixed, OFFSET, measure="ssd", moving_mask=mask)
    assert error_px(result.matrix, truth) < 0.05


def test_partial_overlap_is_masked():
    """Moving pixels mapped outside the fixed image do not count."""
    big = texture(2, (160, 200))  # the moving content comes from a wider field
    fixed = big[:, 40:]  # fixed x = big x - 4 um
    shift = translation_matrix(-4.5, 0.0)  # about a sixth of the moving field falls outside
    truth = shift @ truth_affine()
    big_truth = translation_matrix(4.0, 0.0) @ truth
    moving = warp_image(big, PPU, np.linalg.inv(big_truth), MOVING_SHAPE, PPU, order=3)
    start = shift @ OFFSET
    # plain SSD: on local contrast the moving field's edge band is not used at all
    result = register(moving.astype(float), fixed, start, measure="ssd", ssd_contrast_um=None)
    assert 0.7 < result.info["overlap"] < 0.95
    assert error_px(result.matrix, truth) < 0.05


def test_grid_error_known_answers():
    shift = translation_matrix(3.0, 4.0)
    assert grid_error_um(np.eye(3), shift, (20, 30), 2.0) == pytest.approx(5.0)
    # a half-turn about the grid centre: mean of 2 |x - c| over the pixel centres
    c = np.array([1.5, 1.0])  # centre of a 2 x 3 px grid at 1 px/um
    turn = affine_matrix(rotation_deg=180.0, center_um=tuple(c))
    xy = np.array([[x + 0.5, y + 0.5] for y in range(2) for x in range(3)])
    expected = np.mean(2 * np.hypot(*(xy - c).T))
    assert grid_error_um(np.eye(3), turn, (2, 3), 1.0) == pytest.approx(expected)
    assert grid_error_um(shift, shift, (5, 5), 1.0) == 0.0


def test_perturb_affine_bounds_and_seed():
    start = affine_matrix(rotation_deg=10.0, scale=(1.1, 0.9), mirror=True) @ OFFSET
    centre = (5.0, 5.0)
    a = [perturb_affine(start, np.random.default_rng(11), centre) for _ in range(2)]
    np.testing.assert_array_equal(a[0], a[1])
    rng = np.random.default_rng(12)
    for _ in range(200):
        p = np.linalg.inv(start) @ perturb_affine(
            start, rng, centre, max_translation_um=0.5, max_scale=0.05
        )
        q, u = np.linalg.qr(p[:2, :2])  # p = rotation @ (shear @ scale)
        signs = np.sign(np.diag(u))
        q, u = q * signs, u * signs[:, None]
        assert abs(np.degrees(np.arctan2(q[1, 0], q[0, 0]))) <= 4.0 + 1e-9
        assert 0.95 - 1e-12 <= u[0, 0] <= 1.05 + 1e-12
        assert 0.95 - 1e-12 <= u[1, 1] <= 1.05 + 1e-12
        assert abs(u[0, 1] / u[1, 1]) <= 0.03 + 1e-12
        moved_centre = p[:2, :2] @ centre + p[:2, 2]
        assert np.hypot(*(moved_centre - centre)) <= 0.5 + 1e-12


def test_bad_input_raises(pair):
    fixed, moving, _ = pair
    with pytest.raises(ValueError, match="unknown measure"):
        register(moving, fixed, OFFSET, measure="ncc")
    with pytest.raises(ValueError, match="weights shape"):
        register(moving, fixed, OFFSET, measure="wssd", weights=np.ones((10, 10)))
    with pytest.raises(ValueError, match="needs weights"):
        register(moving, fixed, OFFSET, measure="wssd")
    with pytest.raises(ValueError, match="only used by measure 'wssd'"):
        register(moving, fixed, OFFSET, measure="ssd", weights=np.ones(MOVING_SHAPE))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        register(moving, fixed, OFFSET, measure="wssd", weights=np.full(MOVING_SHAPE, 2.0))
    with pytest.raises(ValueError, match="moving_mask shape"):
        register(moving, fixed, OFFSET, moving_mask=np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="no overlap"):
        register(moving, fixed, translation_matrix(100.0, 0.0))
    with pytest.raises(ValueError, match="3x3 affine"):
        register(moving, fixed, np.eye(2))
    with pytest.raises(ValueError, match="no contrast"):
        register(np.ones(MOVING_SHAPE), fixed, OFFSET, measure="mi")


def test_info_records_levels_and_options(pair):
    """The documented layout of RegistrationResult.info, one record per level, coarse first."""
    fixed, moving, _ = pair
    result = register(moving, fixed, OFFSET, measure="mi", levels=2, max_iter=5)
    assert list(result.info) == [
        "levels",
        "overlap",
        "seconds",
        "bins",
        "normalize",
        "parameterisation",
    ]
    assert [lv["level"] for lv in result.info["levels"]] == [1, 0]
    for lv, ppu in zip(result.info["levels"], (PPU / 2, PPU), strict=True):
        assert list(lv) == [
            "level",
            "px_per_um",
            "pixels",
            "iterations",
            "evaluations",
            "cost",
            "converged",
            "message",
            "seconds",
            "overlap",
        ]
        assert lv["px_per_um"] == ppu
        assert 0 < lv["iterations"] <= 5
    assert result.info["levels"][1]["pixels"] == MOVING_SHAPE[0] * MOVING_SHAPE[1]
    assert result.info["overlap"] == result.info["levels"][-1]["overlap"]
    assert result.value == result.info["levels"][-1]["cost"]
    assert result.info["bins"] == 32 and result.info["normalize"] is None
    assert set(result.info["parameterisation"]) == {"center_um", "scale_um"}


@pytest.mark.parametrize("measure", ["mi", "ssd"])
def test_tem_to_confocal_phantom_at_native_samplings(small_analogy_case, measure):
    """TEM (30 px/um) onto the green confocal channel (7.588 px/um) from the landmark
    similarity: raw TEM under MI, inverted TEM under SSD, both to well below the start."""
    case = small_analogy_case
    tem, green = case.em / 255.0, case.lm[..., 1] / 255.0
    pts = case.landmarks
    start = fit_similarity(
        pts[["em_x_um", "em_y_um"]].to_numpy(float), pts[["lm_x_um", "lm_y_um"]].to_numpy(float)
    )
    truth = np.asarray(case.ground_truth["transform"]["matrix"])
    moving = tem if measure == "mi" else 1.0 - tem
    result = register_affine(
        moving,
        green,
        start,
        moving_px_per_um=case.em_px_per_um,
        fixed_px_per_um=case.lm_px_per_um,
        measure=measure,
    )
    start_error = grid_error_um(start, truth, tem.shape, case.em_px_per_um)
    error = grid_error_um(result.matrix, truth, tem.shape, case.em_px_per_um)
    assert error < 0.05 < start_error  # um; 0.05 um is 0.4 confocal px


def test_ssd_on_local_contrast_ignores_patchy_gain_and_background():
    """The fixed image is the texture under a patchy gain (x0.2-5 over ~3 um patches, as
    uneven staining) plus a slow background; the moving image is the texture alone. SSD
    on locally normalised images (ssd_contrast_um) recovers the affine to 0.02 um; the
    globally standardised SSD is pulled 2-5 times farther by the gain pattern."""
    ppu = 4.0
    rng = np.random.default_rng(13)
    texture = ndimage.gaussian_filter(rng.normal(size=(160, 160)), 2.0)
    gain, background = (ndimage.gaussian_filter(rng.normal(size=(160, 160)), 12.0) for _ in "ab")
    fixed = np.exp(0.8 * gain / gain.std()) * texture / texture.std()
    fixed += 2.0 * background / background.std()
    truth = affine_matrix(3.0, (1.02, 0.98), 0.01, (6.0, 7.0))
    moving = warp_image(texture, ppu, np.linalg.inv(truth), (100, 100), ppu, order=3)
    start = affine_matrix(0.0, (1.0, 1.0), 0.0, (6.4, 6.7))
    errors = {}
    for contrast in (None, 1.0):
        got = register_affine(
            moving,
            fixed,
            start,
            moving_px_per_um=ppu,
            fixed_px_per_um=ppu,
            measure="ssd",
            ssd_contrast_um=contrast,
        )
        errors[contrast] = grid_error_um(got.matrix, truth, moving.shape, ppu)
    assert errors[1.0] < 0.02 and errors[None] > 2 * errors[1.0]


def test_contrast_cache_gives_the_same_images_and_normalises_each_once(monkeypatch):
    """What a route's repeated registrations compare is what contrast_images gives, and
    each image (the fixed one and every moving one) is normalised once."""
    import clemalign.register as register

    rng = np.random.default_rng(5)
    fixed = ndimage.gaussian_filter(rng.normal(size=(60, 70)), 2.0)
    moving = ndimage.gaussian_filter(rng.normal(size=(40, 40)), 2.0)
    moving[:3] = np.nan
    weights = rng.uniform(0.2, 1.0, moving.shape)
    calls = []
    original = register.local_contrast
    monkeypatch.setattr(
        register, "local_contrast", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    cache = register.ContrastCache(fixed, 5.0, 1.0)
    for measure, w in (("ssd", None), ("wssd", weights)):
        expected = register.contrast_images(moving, fixed, measure, 4.0, 5.0, 1.0, w)
        calls.clear()
        for _ in range(3):
            got = cache(moving, measure, 4.0, w)
            np.testing.assert_array_equal(got[0], expected[0])
            np.testing.assert_array_equal(got[1], expected[1])
        assert len(calls) == (2 if measure == "ssd" else 1)  # the fixed one is kept
    assert cache(moving, "mi", 4.0) == (moving, fixed)
    assert register.ContrastCache(fixed, 5.0, None)(moving, "ssd", 4.0) == (moving, fixed)
