"""The realistic TEM/confocal phantom: 3D slab, thin and thick sections, non-rigid
distortion with a stored ground-truth field, image statistics of real pairs."""

import numpy as np
import pytest
from scipy import ndimage

from clemalign.evaluation import confocal_on_tem_grid, truth_error_um
from clemalign.nonrigid import register_bspline
from clemalign.phantom import make_analogy_case
from clemalign.phantom.realism import REAL_PAIR_RANGES, confocal_statistics
from clemalign.phantom.slab import DEFAULT_REALISTIC_PARAMS, _Profile, _tube_interval
from clemalign.preprocess import prepare_analogy_pair
from clemalign.register import pixel_centres_um
from clemalign.transforms import (
    DeformationField,
    affine_matrix,
    apply,
    fit_affine,
    xy_um_to_rc_px,
)

#: A small realistic case: the default physics on a smaller field and a coarser TEM.
SMALL_REALISTIC = {
    "model": "realistic",
    "tem_px_per_um": 30.0,
    "tem_field_um": [10.0, 10.0],
    "confocal_field_um": [26.0, 26.0],
}


@pytest.fixture(scope="module")
def case():
    return make_analogy_case(11, 0, SMALL_REALISTIC)


def _field(case) -> DeformationField:
    return DeformationField.from_dict(case.ground_truth["deformation"])


# ------------------------------------------------------------------ section physics


def test_tube_along_z_is_seen_whole_by_both_sections():
    qx = np.array([0.0, 0.4, 0.6])
    z1, z2 = _tube_interval(qx, np.zeros(3), 0.0, np.array([0.0, 0.0, 1.0]), 0.5)
    for profile in (_Profile("box", 0.07), _Profile("gauss", 0.8)):
        np.testing.assert_allclose(profile.integral(z1, z2), [1.0, 1.0, 0.0], atol=1e-12)


def test_tube_in_the_plane_above_the_tem_section_is_confocal_only():
    """A fibre lying flat 0.4 um above the TEM section: invisible in TEM, seen blurred
    (closed-form Gaussian weight of its chord) by the confocal."""
    r, depth = 0.2, 0.4
    qy = np.array([0.0, 0.1])
    z1, z2 = _tube_interval(np.zeros(2), qy, depth, np.array([1.0, 0.0, 0.0]), r)
    half = np.sqrt(r**2 - qy**2)
    np.testing.assert_allclose(z1, depth - half)
    np.testing.assert_allclose(z2, depth + half)
    assert np.all(_Profile("box", 0.07).integral(z1, z2) == 0.0)
    gauss = _Profile("gauss", 0.8)
    from scipy.special import ndtr

    expected = ndtr((depth + half) / gauss.sigma) - ndtr((depth - half) / gauss.sigma)
    np.testing.assert_allclose(gauss.integral(z1, z2), expected)
    assert np.all(expected > 0.1)


def test_oblique_tube_cut_is_an_ellipse():
    """A tube inclined by 60 deg cuts z = 0 in an ellipse of semi-axes r and r / cos 60."""
    r, theta = 0.3, np.deg2rad(60)
    v = np.array([np.sin(theta), 0.0, np.cos(theta)])
    box = _Profile("box", 1e-4)
    along = np.array([0.99, 1.01]) * r / np.cos(theta)
    across = np.array([0.99, 1.01]) * r
    inside_along = box.integral(*_tube_interval(along, np.zeros(2), 0.0, v, r))
    inside_across = box.integral(*_tube_interval(np.zeros(2), across, 0.0, v, r))
    np.testing.assert_allclose(inside_along, [1.0, 0.0])
    np.testing.assert_allclose(inside_across, [1.0, 0.0])


# ------------------------------------------------------------ ground-truth field


def test_field_of_an_affine_is_that_affine_with_no_floor():
    m = affine_matrix(3.0, (1.02, 0.98), 0.01, (5.0, -2.0), center_um=(4.0, 4.0))
    field = DeformationField.from_mapping(lambda xy: apply(m, xy), (8.0, 8.0), 0.5, 1.0)
    np.testing.assert_allclose(field.affine, m, atol=1e-9)
    assert field.floor_rms_um() < 1e-9
    pts = np.random.default_rng(0).uniform(0, 8, (50, 2))
    np.testing.assert_allclose(field.apply(pts), apply(m, pts), atol=1e-9)


def test_field_interpolates_a_smooth_warp_and_round_trips():
    def warp(xy):
        return xy + 0.2 * np.stack([np.sin(xy[:, 1] / 2.0), np.cos(xy[:, 0] / 3.0)], 1)

    field = DeformationField.from_mapping(warp, (10.0, 10.0), 0.25, 1.0)
    pts = np.random.default_rng(1).uniform(0, 10, (500, 2))
    assert np.max(np.abs(field.apply(pts) - warp(pts))) < 2e-4  # < 0.2 nm
    assert 0.05 < field.floor_rms_um() < 0.2
    again = DeformationField.from_dict(field.to_dict())
    np.testing.assert_allclose(again.apply(pts), field.apply(pts), atol=1e-4)
    shift = affine_matrix(10.0, translation_um=(3.0, 1.0))
    moved = field.then(shift)
    np.testing.assert_allclose(moved.apply(pts), apply(shift, field.apply(pts)), atol=1e-9)
    assert moved.floor_rms_um() == pytest.approx(field.floor_rms_um())


def test_landmarks_agree_through_the_field_within_annotator_noise(case):
    field = _field(case)
    true_em = np.array(case.ground_truth["landmarks_true_em_um"])
    np.testing.assert_allclose(
        field.apply(true_em), case.ground_truth["landmarks_true_lm_um"], atol=2e-3
    )
    em = case.landmarks[["em_x_um", "em_y_um"]].to_numpy()
    lm = case.landmarks[["lm_x_um", "lm_y_um"]].to_numpy()
    err = np.hypot(*(field.apply(em) - lm).T)
    noise = case.ground_truth["annotator_noise_um"]
    rms = np.sqrt(np.mean(err**2))
    assert 0.3 * noise < rms < 2.5 * noise
    assert len(em) >= 10


def test_stored_affine_is_the_least_squares_affine_of_the_field(case):
    field = _field(case)
    np.testing.assert_allclose(case.ground_truth["transform"]["matrix"], field.affine)
    w, h = field.field_um
    gx, gy = np.meshgrid(np.linspace(0, w, 60), np.linspace(0, h, 60))
    pts = np.stack([gx.ravel(), gy.ravel()], 1)
    refit = fit_affine(pts, field.apply(pts))
    assert np.max(np.abs(apply(refit, pts) - apply(field.affine, pts))) < 0.01
    # what no affine explains is as configured (0.1-0.3 um RMS by default)
    lo, hi = DEFAULT_REALISTIC_PARAMS["nonrigid_rms_um"]
    assert lo * 0.8 < field.floor_rms_um() < hi * 1.2
    assert case.ground_truth["nonrigid_floor_rms_um"] == pytest.approx(
        field.floor_rms_um(), rel=1e-4
    )


def test_best_affine_keeps_the_floor_as_ground_truth_error(case):
    field = _field(case)
    shape = case.em.shape
    err = truth_error_um(field.affine, field, shape, case.em_px_per_um)
    xy = pixel_centres_um(shape, case.em_px_per_um)
    mean_residual = np.mean(np.hypot(*field.residual(xy).T))
    assert err == pytest.approx(mean_residual, rel=1e-6)
    assert err > 0.05


# ------------------------------------------------ exact analogy (benchmarks only)

EXACT_PX_PER_UM = 14.52


@pytest.fixture(scope="module")
def exact(case):
    return make_analogy_case(11, 0, SMALL_REALISTIC, exact_prediction_px_per_um=EXACT_PX_PER_UM)


def _green_through(mapping, case, shape) -> np.ndarray:
    """The confocal's green channel sampled at ``mapping`` of the TEM-grid pixel centres."""
    xy = pixel_centres_um(shape, EXACT_PX_PER_UM)
    rc = xy_um_to_rc_px(mapping(xy), case.lm_px_per_um).T
    green = case.lm[..., 1].astype(float)
    return ndimage.map_coordinates(green, rc, order=1).reshape(shape)


def test_exact_prediction_leaves_the_case_unchanged_and_follows_the_distortion(case, exact):
    """Asking for the exact analogy draws nothing random; it is the confocal seen through
    the true field, which explains it better than the field's best affine does."""
    np.testing.assert_array_equal(exact.em, case.em)
    np.testing.assert_array_equal(exact.lm, case.lm)
    image = exact.exact_predictions["exact"]
    assert image.shape == (145, 145) and image.dtype == np.float32
    field = _field(case)
    r_field = np.corrcoef(image.ravel(), _green_through(field.apply, case, image.shape).ravel())
    affine = _green_through(lambda xy: apply(field.affine, xy), case, image.shape)
    r_affine = np.corrcoef(image.ravel(), affine.ravel())
    assert r_field[0, 1] > 0.95
    assert r_field[0, 1] > r_affine[0, 1] + 0.02
    assert case.exact_predictions is None
    uniform = exact.exact_predictions["mean_stain"]
    r_uniform = np.corrcoef(image.ravel(), uniform.ravel())[0, 1]
    assert 0.5 < r_uniform < 0.98  # each fibre's dye uptake is part of the confocal


def test_bspline_recovers_the_distortion_given_an_exact_analogy(case, exact):
    """Known answer on the realistic physics: with a prediction that matches the confocal
    (not what the methods get), the B-spline step lands well below the best affine."""
    field = _field(case)
    image = exact.exact_predictions["exact"]
    floor = truth_error_um(field.affine, field, image.shape, EXACT_PX_PER_UM)
    result = register_bspline(
        image,
        case.lm[..., 1].astype(float),
        field.affine,
        moving_px_per_um=EXACT_PX_PER_UM,
        fixed_px_per_um=case.lm_px_per_um,
        measure="ssd",
        bending_weight=10.0,
    )
    xy = pixel_centres_um(image.shape, EXACT_PX_PER_UM)
    error = np.mean(np.hypot(*(result.field.apply(xy) - field.apply(xy)).T))
    assert error < 0.75 * floor


# -------------------------------------------------------------- determinism, size


def test_same_seed_same_case_other_seed_differs(case):
    again = make_analogy_case(11, 0, SMALL_REALISTIC)
    np.testing.assert_array_equal(again.em, case.em)
    np.testing.assert_array_equal(again.lm, case.lm)
    assert again.landmarks.equals(case.landmarks)
    other = make_analogy_case(12, 0, SMALL_REALISTIC)
    assert not np.array_equal(other.lm, case.lm)


def test_strips_match_one_piece_and_paper_resolution_renders():
    params = dict(SMALL_REALISTIC, tem_field_um=[4.0, 4.0], confocal_field_um=[10.0, 10.0])
    one = make_analogy_case(3, 0, dict(params, rows_per_tile=10_000))
    strips = make_analogy_case(3, 0, dict(params, rows_per_tile=23))
    assert np.abs(one.em.astype(int) - strips.em.astype(int)).max() <= 1
    paper = make_analogy_case(
        1,
        0,
        dict(
            params,
            tem_px_per_um=582.24,
            tem_field_um=[3.0, 3.0],
            n_landmarks=[3, 4],
            rows_per_tile=256,
        ),
    )
    assert paper.em.shape == (1747, 1747) and paper.em.std() > 10


# ------------------------------------------------------------ image statistics


def test_confocal_statistics_fall_in_the_real_ranges(case):
    """The five statistics of issue 11 on a small case, within 25 % of the real ranges
    (a 10 um field is a third of the default one, so its statistics scatter more)."""
    pair = prepare_analogy_pair(
        case.em, case.em_px_per_um, case.lm, case.lm_px_per_um, case.landmarks
    )
    frame = {"ground_truth_field": _field(case).then(pair.lm_frame_from_confocal()).to_dict()}
    on_tem, _ = confocal_on_tem_grid(pair.em, pair.lm, pair.px_per_um, frame, pair.landmarks)
    stats = confocal_statistics(pair.lm, pair.px_per_um, pair.em, on_tem)
    for key, (lo, hi) in REAL_PAIR_RANGES.items():
        assert 0.75 * lo <= stats[key] <= 1.25 * hi, (key, stats[key], (lo, hi))


@pytest.mark.parametrize("seed", [0, 3, 4])
def test_small_fields_of_in_plane_fibres_still_get_landmarks(seed):
    """Fields with few cross-cut structures fall back to any fibre cut and granule
    (these seeds had fewer than 3 landmark candidates before the fallback)."""
    params = {
        "tem_px_per_um": 20.0,
        "tem_field_um": [5.0, 5.0],
        "confocal_field_um": [12.0, 12.0],
        "n_landmarks": [3, 4],
    }
    case = make_analogy_case(seed, 0, params)
    assert len(case.landmarks) >= 3
    true_em = np.array(case.ground_truth["landmarks_true_em_um"])
    assert np.all((true_em > 0) & (true_em < 5.0))
    np.testing.assert_allclose(
        _field(case).apply(true_em), case.ground_truth["landmarks_true_lm_um"], atol=2e-3
    )
