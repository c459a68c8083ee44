"""Non-rigid refinement (clemalign.nonrigid): known answers, exact gradients, the
regulariser, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from clemalign.nonrigid import (
    ControlGrid,
    bending_energy,
    make_bspline_cost,
    register_bspline,
    warp_with_field,
)
from clemalign.register import pixel_centres_um
from clemalign.transforms import affine_matrix, apply, xy_um_to_rc_px

PPU = 2.0  # px/um of both images
FIXED_UM = 60.0
MOVING_UM = 40.0
AFFINE = affine_matrix(rotation_deg=3.0, scale=(1.03, 0.98), translation_um=(9.0, 11.0))


def _displacement(points: np.ndarray) -> np.ndarray:
    """The known non-affine part: sinusoids of 0.7 um amplitude, 20 um wavelength."""
    x, y = points[:, 0], points[:, 1]
    k = 2 * np.pi / 20.0
    return 0.7 * np.stack([np.sin(k * y + 0.3), np.cos(k * x - 0.5)], axis=1)


def _texture(seed: int = 0) -> np.ndarray:
    """Fixed image: Gaussian-filtered noise (σ = 1 um), standardised, 60 x 60 um."""
    n = int(FIXED_UM * PPU)
    image = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=(n, n)), 2.0)
    return (image - image.mean()) / image.std()


def _moving(fixed: np.ndarray, mapping) -> np.ndarray:
    """The moving image (40 x 40 um) whose pixel x shows the fixed image at mapping(x)."""
    m = int(MOVING_UM * PPU)
    rc = xy_um_to_rc_px(mapping(pixel_centres_um((m, m), PPU)), PPU).T
    return ndimage.map_coordinates(fixed, rc, order=3).reshape(m, m)


def _truth(points: np.ndarray) -> np.ndarray:
    return apply(AFFINE, points) + _displacement(points)


@pytest.fixture(scope="module")
def deformed():
    """(fixed, moving) with the known affine + sinusoidal deformation."""
    fixed = _texture()
    return fixed, _moving(fixed, _truth)


def _moving_for(measure: str, moving: np.ndarray) -> np.ndarray:
    # MI gets a non-linear, inverted intensity relation: only MI can match it.
    return -np.exp(moving) if measure == "mi" else moving


def _mean_error_um(mapping) -> float:
    xy = pixel_centres_um((int(MOVING_UM * PPU),) * 2, PPU)
    return float(np.mean(np.hypot(*(mapping(xy) - _truth(xy)).T)))


@pytest.mark.parametrize(("measure", "bending_weight"), [("ssd", 10.0), ("mi", 10.0), ("mi", None)])
def test_known_deformation_is_recovered(deformed, measure, bending_weight):
    fixed, moving = deformed
    result = register_bspline(
        _moving_for(measure, moving),
        fixed,
        AFFINE,
        moving_px_per_um=PPU,
        fixed_px_per_um=PPU,
        measure=measure,
        grid_spacing_um=5.0,
        bending_weight=bending_weight,
    )
    before = _mean_error_um(lambda p: apply(AFFINE, p))
    after = _mean_error_um(result.field.apply)
    assert before > 0.4  # the deformation is there to find
    assert after < 0.5 * before, (before, after)
    # the sampled field reproduces the spline, and the record is complete
    assert _mean_error_um(result.mapping) == pytest.approx(after, abs=2e-3)
    levels = result.info["levels"]
    assert [r["level"] for r in levels] == [2, 1, 0]
    assert all(r["iterations"] > 0 and r["seconds"] >= 0 for r in levels)
    assert result.value == levels[-1]["cost"]
    assert result.info["min_jacobian_ratio"] > 0.5  # no folding


@pytest.mark.parametrize("measure", ["ssd", "mi"])
def test_no_deformation_stays_put(measure):
    fixed = _texture(1)
    moving = _moving_for(measure, _moving(fixed, lambda p: apply(AFFINE, p)))
    result = register_bspline(
        moving,
        fixed,
        AFFINE,
        moving_px_per_um=PPU,
        fixed_px_per_um=PPU,
        measure=measure,
        grid_spacing_um=5.0,
        bending_weight=0.0,
        ssd_contrast_um=None,  # on local contrast the unregularised edge nodes see no pixels
    )
    assert result.info["displacement_rms_um"] < 0.05
    xy = pixel_centres_um(moving.shape, PPU)
    assert np.sqrt(np.mean(np.sum(result.displacement(xy) ** 2, axis=1))) < 0.05
    # warping the moving image back gives the fixed image over its footprint
    warped = result.warp(moving, PPU, fixed.shape, PPU, order=3)
    inside = ndimage.binary_erosion(np.isfinite(warped), iterations=4)
    assert inside.sum() > 0.3 * fixed.size
    reference = fixed if measure == "ssd" else -np.exp(fixed)
    assert np.abs(warped[inside] - reference[inside]).max() < 0.05 * np.ptp(reference)


@pytest.mark.parametrize("measure", ["ssd", "mi"])
def test_gradient_matches_finite_differences(deformed, measure):
    fixed, moving = deformed
    grid = ControlGrid.over_field((MOVING_UM, MOVING_UM), 8.0)
    cost = make_bspline_cost(
        _moving_for(measure, moving),
        fixed,
        AFFINE,
        grid,
        moving_px_per_um=PPU,
        fixed_px_per_um=PPU,
        measure=measure,
        bending_weight=10.0,
    )
    rng = np.random.default_rng(3)
    coef = rng.normal(0.0, 0.3, grid.size)  # a random configuration, up to ~1 um
    _, grad = cost(coef)
    picks = rng.choice(grid.size, 25, replace=False)
    step = 1e-4  # um
    numeric = []
    for k in picks:
        e = np.zeros(grid.size)
        e[k] = step
        numeric.append((cost(coef + e)[0] - cost(coef - e)[0]) / (2 * step))
    numeric = np.array(numeric)
    assert np.linalg.norm(numeric) > 0
    assert np.linalg.norm(grad[picks] - numeric) / np.linalg.norm(numeric) < 1e-3


def test_bending_energy_closed_form_and_gradient():
    grid = ControlGrid.over_field((13.0, 9.0), 3.0)
    rng = np.random.default_rng(4)
    coef = rng.normal(0.0, 0.5, (*grid.shape, 2))
    energy, grad = bending_energy(coef, grid, gradient=True)
    # midpoint rule over the field
    n = 400
    xs = (np.arange(n) + 0.5) * 13.0 / n
    ys = (np.arange(n) + 0.5) * 9.0 / n
    gx, gy = np.meshgrid(xs, ys)
    pts = np.stack([gx.ravel(), gy.ravel()], 1)
    dxx = grid.displacement(coef, pts, dx=2)
    dxy = grid.displacement(coef, pts, dx=1, dy=1)
    dyy = grid.displacement(coef, pts, dy=2)
    sampled = np.mean(np.sum(dxx**2 + 2 * dxy**2 + dyy**2, axis=1))
    assert energy == pytest.approx(sampled, rel=1e-3)
    # quadratic form: E(c) = <grad, c> / 2
    assert np.sum(grad * coef) / 2 == pytest.approx(energy, rel=1e-10)
    # an affine displacement (cubic B-splines reproduce it from its node values) bends
    # nothing
    affine_part = grid.nodes_um() @ np.array([[0.02, -0.01], [0.03, 0.01]]) + 0.4
    pts = np.random.default_rng(7).uniform(0.0, 9.0, (50, 2))
    expected = pts @ np.array([[0.02, -0.01], [0.03, 0.01]]) + 0.4
    np.testing.assert_allclose(grid.displacement(affine_part, pts), expected, atol=1e-12)
    assert bending_energy(affine_part, grid) < 1e-14


def test_nested_grids_carry_the_displacement_exactly():
    coarse = ControlGrid.over_field((12.0, 12.0), 6.0)
    fine = ControlGrid.over_field((12.0, 12.0), 3.0)
    coef = np.random.default_rng(5).normal(0.0, 0.5, (*coarse.shape, 2))
    refined = fine.fit(lambda p: coarse.displacement(coef, p))
    pts = np.random.default_rng(6).uniform(0.0, 12.0, (500, 2))
    assert np.abs(fine.displacement(refined, pts) - coarse.displacement(coef, pts)).max() < 1e-6


def test_stronger_bending_weight_gives_smoother_field(deformed):
    fixed, moving = deformed
    energies = []
    for weight in (1.0, 300.0):
        result = register_bspline(
            moving,
            fixed,
            AFFINE,
            moving_px_per_um=PPU,
            fixed_px_per_um=PPU,
            measure="ssd",
            grid_spacing_um=5.0,
            bending_weight=weight,
        )
        energies.append(result.bending_energy())
        assert result.info["bending"] == pytest.approx(energies[-1])
    assert energies[1] < 0.5 * energies[0], energies


def test_warp_with_field_inverts_the_mapping(deformed):
    fixed, moving = deformed
    result = register_bspline(
        moving,
        fixed,
        AFFINE,
        moving_px_per_um=PPU,
        fixed_px_per_um=PPU,
        measure="ssd",
        grid_spacing_um=5.0,
        bending_weight=10.0,
    )
    warped = warp_with_field(moving, PPU, result.field, fixed.shape, PPU, order=3)
    inside = ndimage.binary_erosion(np.isfinite(warped), iterations=4)
    assert inside.sum() > 0.3 * fixed.size
    corr = np.corrcoef(warped[inside], fixed[inside])[0, 1]
    assert corr > 0.97


def test_bad_input_raises():
    fixed = _texture(2)
    moving = _moving(fixed, lambda p: apply(AFFINE, p))
    options = {"moving_px_per_um": PPU, "fixed_px_per_um": PPU, "levels": 1}
    bad = fixed.copy()
    bad[5, 7] = np.nan
    with pytest.raises(ValueError, match="fixed image has non-finite pixels"):
        register_bspline(moving, bad, AFFINE, **options)
    singular = AFFINE.copy()
    singular[:2, :2] = [[1.0, 2.0], [0.5, 1.0]]
    with pytest.raises(ValueError, match="singular"):
        register_bspline(moving, fixed, singular, **options)
    with pytest.raises(ValueError, match="3x3"):
        register_bspline(moving, fixed, np.eye(2), **options)
    with pytest.raises(ValueError, match="bending_weight"):
        register_bspline(moving, fixed, AFFINE, bending_weight=-1.0, **options)
    with pytest.raises(ValueError, match="grid spacing"):
        register_bspline(moving, fixed, AFFINE, grid_spacing_um=0.0, **options)
    with pytest.raises(ValueError, match="unknown measure"):
        register_bspline(moving, fixed, AFFINE, measure="ncc", **options)
    far = affine_matrix(translation_um=(500.0, 0.0))
    with pytest.raises(ValueError, match="no overlap"):
        register_bspline(moving, fixed, far, **options)
