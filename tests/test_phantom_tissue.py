import numpy as np
import pytest

from clemalign.phantom import make_analogy_case
from clemalign.transforms import Transform, apply, xy_um_to_rc_px


def test_same_seed_same_arrays_other_seed_different(small_analogy_case, small_params):
    again = make_analogy_case(7, 0, small_params)
    np.testing.assert_array_equal(again.em, small_analogy_case.em)
    np.testing.assert_array_equal(again.lm, small_analogy_case.lm)
    assert again.landmarks.equals(small_analogy_case.landmarks)
    other = make_analogy_case(8, 0, small_params)
    assert other.em.shape == again.em.shape
    assert not np.array_equal(other.em, again.em)
    assert not np.array_equal(other.lm, again.lm)
    assert not np.array_equal(make_analogy_case(7, 1, small_params).em, again.em)


def test_landmarks_agree_under_ground_truth_within_annotator_noise(small_analogy_case):
    case = small_analogy_case
    gt = Transform.from_dict(case.ground_truth["transform"])
    em_xy = case.landmarks[["em_x_um", "em_y_um"]].to_numpy()
    lm_xy = case.landmarks[["lm_x_um", "lm_y_um"]].to_numpy()
    assert 10 <= len(em_xy) <= 15
    err = np.hypot(*(gt.apply(em_xy) - lm_xy).T)
    noise = case.ground_truth["annotator_noise_um"]  # RMS click error per image
    # Both clicks are noisy: the RMS of the difference is about sqrt(2) x noise.
    rms = np.sqrt(np.mean(err**2))
    assert 0.3 * noise < rms < 2.5 * noise
    assert err.max() < 5 * noise
    # The true positions agree exactly.
    true_em = np.array(case.ground_truth["landmarks_true_em_um"])
    np.testing.assert_allclose(gt.apply(true_em), case.ground_truth["landmarks_true_lm_um"])


def test_ground_truth_is_a_weak_affine_as_configured(small_analogy_case):
    extra = small_analogy_case.ground_truth["transform"]["extra"]
    assert 1.0 <= abs(extra["rotation_deg"]) <= 4.0
    assert all(abs(s - 1) <= 0.03 for s in extra["scale"])
    assert abs(extra["shear"]) <= 0.03
    assert np.hypot(*extra["translation_from_box_um"]) == pytest.approx(1.0)


def test_modalities_relate_as_designed(small_analogy_case):
    """Myelin (dark in TEM) is bright in green; TEM-only structures break a functional map."""
    case = small_analogy_case
    gt = Transform.from_dict(case.ground_truth["transform"])
    # Sample the confocal green at the TEM pixel positions (nearest confocal pixel).
    rows, cols = np.indices(case.em.shape)[:, ::4, ::4]
    xy = np.stack([(cols.ravel() + 0.5), (rows.ravel() + 0.5)], 1) / case.em_px_per_um
    rc = np.round(xy_um_to_rc_px(apply(gt.matrix, xy), case.lm_px_per_um)).astype(int)
    green = case.lm[rc[:, 0], rc[:, 1], 1].astype(float)
    tem = case.em[rows.ravel(), cols.ravel()].astype(float)
    dark = tem < 70  # myelin and lipofuscin
    assert green[dark].mean() > green[~dark].mean() + 15
    assert np.corrcoef(tem, green)[0, 1] < -0.2  # inverted relation
    assert np.corrcoef(tem, green)[0, 1] > -0.9  # ... but far from a clean linear one


def test_strip_rendering_matches_one_piece(small_params):
    """The TEM renders in row strips (bounded memory) with the same result as in one piece."""
    params = dict(small_params, tem_field_um=[3.0, 3.0], confocal_field_um=[8.0, 8.0])
    one = make_analogy_case(3, 0, dict(params, rows_per_tile=10_000))
    strips = make_analogy_case(3, 0, dict(params, rows_per_tile=17))
    diff = np.abs(one.em.astype(int) - strips.em.astype(int))
    assert diff.max() <= 1


def test_paper_resolution_renders():
    """582.24 px/um (the paper's TEM) works; a small field keeps the test quick."""
    case = make_analogy_case(
        1,
        0,
        {
            "model": "simple",
            "tem_px_per_um": 582.24,
            "tem_field_um": [3.0, 3.0],
            "confocal_field_um": [8.0, 8.0],
            "rows_per_tile": 256,
            "n_landmarks": [3, 4],
        },
    )
    assert case.em.shape == (1747, 1747)
    assert case.em.dtype == np.uint8 and case.em.std() > 10
