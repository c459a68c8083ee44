import numpy as np
import pytest

from clemalign.transforms import (
    Transform,
    affine_matrix,
    apply,
    fit_affine,
    fit_similarity,
    rc_px_to_xy_um,
    xy_um_to_rc_px,
)


def _points(n=20, seed=0):
    return np.random.default_rng(seed).uniform(0, 50, (n, 2))


@pytest.mark.parametrize("mirror", [False, True])
def test_fit_affine_recovers_known_affine(mirror):
    truth = affine_matrix(7.0, (1.03, 0.96), 0.05, (3.0, -2.0), mirror, (10.0, 20.0))
    src = _points()
    fitted = fit_affine(src, apply(truth, src))
    np.testing.assert_allclose(fitted, truth, atol=1e-10)


@pytest.mark.parametrize("mirror", [False, True])
def test_fit_similarity_recovers_similarity_and_mirror(mirror):
    truth = affine_matrix(-31.0, (1.7, 1.7), 0.0, (5.0, 1.0), mirror)
    src = _points()
    fitted = fit_similarity(src, apply(truth, src))
    np.testing.assert_allclose(fitted, truth, atol=1e-10)
    assert np.sign(np.linalg.det(fitted[:2, :2])) == (-1 if mirror else 1)


def test_fit_similarity_without_reflection_stays_proper():
    truth = affine_matrix(10.0, (1.0, 1.0), mirror=True)
    src = _points()
    fitted = fit_similarity(src, apply(truth, src), allow_reflection=False)
    assert np.linalg.det(fitted[:2, :2]) > 0


def test_fit_similarity_is_least_squares_on_an_affine():
    """On a sheared map the similarity is the best one: perturbing it raises the residual."""
    truth = affine_matrix(5.0, (1.05, 0.95), 0.04)
    src = _points(50)
    dst = apply(truth, src)
    fitted = fit_similarity(src, dst)
    base = ((apply(fitted, src) - dst) ** 2).sum()
    for delta in (
        affine_matrix(0.2),
        affine_matrix(scale=(1.002, 1.002)),
        affine_matrix(translation_um=(0.01, 0.0)),
    ):
        assert ((apply(delta @ fitted, src) - dst) ** 2).sum() > base


def test_collinear_and_too_few_points_raise():
    line = np.stack([np.arange(5.0), 2 * np.arange(5.0)], 1)
    with pytest.raises(ValueError, match="collinear"):
        fit_affine(line, line)
    with pytest.raises(ValueError, match="at least 3"):
        fit_affine(line[:2], line[:2])


def test_pixel_um_conversions_use_pixel_centres():
    rc = np.array([[0, 0], [9, 4]])
    xy = rc_px_to_xy_um(rc, 2.0)
    np.testing.assert_allclose(xy, [[0.25, 0.25], [2.25, 4.75]])
    np.testing.assert_allclose(xy_um_to_rc_px(xy, 2.0), rc)


def test_transform_json_round_trip(tmp_path):
    t = Transform(
        affine_matrix(3.0, (1.01, 0.99), 0.02, (1.0, 2.0), True), "em", "lm", "test", {"note": 1}
    )
    t.save(tmp_path / "t.json")
    back = Transform.load(tmp_path / "t.json")
    np.testing.assert_array_equal(back.matrix, t.matrix)
    assert (back.moving, back.fixed, back.method, back.extra) == ("em", "lm", "test", {"note": 1})


def test_transform_rejects_wrong_units():
    data = Transform(np.eye(3), "a", "b", "c").to_dict()
    data["units"] = "px"
    with pytest.raises(ValueError, match="units"):
        Transform.from_dict(data)
