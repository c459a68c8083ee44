"""Tests of the crowded stress cases and negative controls (clemalign.phantom.crowded)."""

from __future__ import annotations

import numpy as np
import pytest

from clemalign.io import LANDMARK_COLUMNS, read_json, read_landmarks
from clemalign.phantom.beads import _field_half_extent, _sem_view, make_fiducial_case
from clemalign.phantom.crowded import (
    STRESS_FAMILIES,
    detection_settings,
    make_stress_case,
    make_unrelated_bead_pair,
    stress_params,
)
from clemalign.transforms import Transform

N_RECIPES = 40


@pytest.fixture(scope="module")
def recipes() -> list[dict]:
    return [stress_params(seed) for seed in range(N_RECIPES)]


def test_recipes_follow_the_ranges(recipes) -> None:
    assert [r["family"] for r in recipes[:4]] == [*STRESS_FAMILIES, *STRESS_FAMILIES]
    for r in recipes:
        view = r["views"][0]
        anisotropy = 1.0 / np.cos(np.deg2rad(view["tilt_deg"]))
        assert 1.0 <= anisotropy <= 1.25 + 1e-12
        assert 0.10 <= r["missing_fraction"] <= 0.30
        assert 15 <= r["target_pairs"] <= 30
        assert all(200 <= n <= 400 for n in r["target_candidates"])
        assert r["n_puncta_em"] >= 0 and r["n_puncta_lm"] >= 0
        if r["family"] == "gold":
            assert r["bead_diameter_nm"] == 100.0 and r["confocal_size_px"] == 511
        else:
            assert 200.0 <= r["bead_diameter_nm"] <= 1000.0
            assert 400 <= r["confocal_size_px"] <= 1024
        # the SEM field fits in the confocal field
        sem = _sem_view(view)
        extent = 2.0 * _field_half_extent(sem.linear, sem.width_um, sem.height_um)
        assert np.all(extent < r["confocal_size_px"] * r["confocal_px_nm"] / 1000.0)
        assert view["databar_px"] == 0 or 0.05 * view["size_px"][0] < view["databar_px"]
    mirrored = np.mean([r["views"][0]["mirror"] for r in recipes])
    with_bar = np.mean([r["views"][0]["databar_px"] > 0 for r in recipes])
    assert 0.25 < mirrored < 0.75 and 0.25 < with_bar < 0.75
    assert stress_params(3) == recipes[3]  # deterministic
    assert detection_settings(recipes[1]) == {
        "bead_diameter_nm": recipes[1]["bead_diameter_nm"],
        "lm_psf_fwhm_nm": recipes[1]["psf_fwhm_nm"],
    }
    with pytest.raises(ValueError, match="family"):
        stress_params(0, "silver")


@pytest.fixture(scope="module")
def stress_case():
    return make_stress_case(2)  # gold


def test_stress_case_landmarks_exact(stress_case) -> None:
    case, params = stress_case
    assert params["family"] == "gold" and case.name == "stress0002"
    t = Transform.from_dict(case.ground_truth["transform"])
    em = case.landmarks[["em_x_um", "em_y_um"]].to_numpy()
    lm = case.landmarks[["lm_x_um", "lm_y_um"]].to_numpy()
    assert 12 <= len(em) <= 45
    assert np.max(np.abs(t.apply(em) - lm)) < 1e-9
    gt = case.ground_truth
    assert len(gt["puncta_lm_um"]) == params["n_puncta_lm"]
    assert len(gt["puncta_em_um"]) == params["n_puncta_em"]


def test_unrelated_pair(stress_case, tmp_path) -> None:
    _, params = stress_case
    view = {**params["views"][0], "size_px": [320, 360]}
    params = {**params, "n_puncta_lm": 60, "n_puncta_em": 40, "views": [view]}  # faster
    case = make_fiducial_case(2, 0, params)
    pair = make_unrelated_bead_pair(2, params)
    assert pair.name == "unrelated0002"
    assert list(pair.landmarks.columns) == LANDMARK_COLUMNS and len(pair.landmarks) == 0
    assert pair.ground_truth["transform"] is None
    assert pair.ground_truth["track"] == "fiducial_negative"
    assert pair.em.shape == case.em.shape and pair.lm.shape == case.lm.shape
    assert pair.em_px_per_um == case.em_px_per_um and pair.lm_px_per_um == case.lm_px_per_um
    assert not np.array_equal(pair.lm, case.lm) and not np.array_equal(pair.em, case.em)
    # the two images come from different bead fields
    beads_em = np.array(pair.ground_truth["beads_em_um"])
    beads_lm = np.array(pair.ground_truth["beads_lm_um"])
    assert len(beads_em) >= 10 and len(beads_lm) >= 10
    paths = pair.write(str(tmp_path / pair.name))
    assert len(read_landmarks(paths["landmarks"])) == 0
    assert read_json(paths["ground_truth"])["transform"] is None


def test_default_crowded_case_is_gold_crowded_and_deterministic() -> None:
    """The default dataset's crowd01: the gold recipe (the workflow's bead settings
    apply), many more candidates than beads, the same images for the same seed."""
    from clemalign.phantom.crowded import make_crowded_case

    a, b = make_crowded_case(2012, 0), make_crowded_case(2012, 0)
    assert a.name == "crowd01" and a.ground_truth["bead_diameter_nm"] == 100.0
    assert a.lm_px_per_um == pytest.approx(25.0)  # 40 nm confocal pixels
    assert 15 <= len(a.landmarks) <= 40
    assert np.array_equal(a.em, b.em) and np.array_equal(a.lm, b.lm)
