"""Tests of the SEM/confocal gold-bead phantom (clemalign.phantom.beads)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clemalign.fiducials import apparent_diameter_um, detect_beads
from clemalign.io import LANDMARK_COLUMNS, read_image, read_json, read_landmarks
from clemalign.phantom.beads import (
    DEFAULT_FIDUCIAL_PARAMS,
    STRESS_PARAMS,
    STRESS_VIEW_OPTIONS,
    make_fiducial_case,
)
from clemalign.transforms import Transform, xy_um_to_rc_px

SEED = 0
N_VIEWS = len(DEFAULT_FIDUCIAL_PARAMS["views"])


@pytest.fixture(scope="module")
def cases() -> list:
    return [make_fiducial_case(SEED, i, {}) for i in range(N_VIEWS)]


def _window_excess(image: np.ndarray, xy_um: np.ndarray, px_per_um: float) -> np.ndarray:
    """Mean grey of the 3x3 window at each point minus the image median."""
    rc = np.rint(xy_um_to_rc_px(xy_um, px_per_um)).astype(int)
    img = image.astype(float)
    med = np.median(img)
    return np.array([img[r - 1 : r + 2, c - 1 : c + 2].mean() - med for r, c in rc])


def test_deterministic_and_seed_dependent(cases) -> None:
    again = make_fiducial_case(SEED, 1, {})
    first = cases[1]
    assert np.array_equal(again.em, first.em)
    assert np.array_equal(again.lm, first.lm)
    pd.testing.assert_frame_equal(again.landmarks, first.landmarks)
    other = make_fiducial_case(SEED + 1, 1, {})
    assert not np.array_equal(other.lm, first.lm)
    assert other.em.shape == first.em.shape
    assert not np.array_equal(other.em, first.em)


def test_confocal_shared_by_cases_of_a_seed(cases) -> None:
    for case in cases[1:]:
        assert np.array_equal(case.lm, cases[0].lm)
        assert case.ground_truth["beads_lm_um"] == cases[0].ground_truth["beads_lm_um"]
    assert not np.array_equal(cases[0].em[:100, :100], cases[2].em[:100, :100])


def test_shapes_dtypes_and_sampling(cases) -> None:
    for case, view in zip(cases, DEFAULT_FIDUCIAL_PARAMS["views"], strict=True):
        assert case.em.dtype == np.uint8 and case.lm.dtype == np.uint8
        assert case.em.shape == tuple(view["size_px"])
        assert case.lm.shape == (511, 511)
        assert case.em_px_per_um == pytest.approx(1000.0 / view["px_nm"])
        assert case.lm_px_per_um == pytest.approx(25.0)
        assert list(case.landmarks.columns) == LANDMARK_COLUMNS
    assert [c.name for c in cases] == ["sem01", "sem02", "sem03", "sem04"]


def test_ground_truth_maps_landmarks(cases) -> None:
    for case in cases:
        t = Transform.from_dict(case.ground_truth["transform"])
        assert (t.moving, t.fixed) == ("em", "lm")
        lm = case.landmarks[["lm_x_um", "lm_y_um"]].to_numpy()
        em = case.landmarks[["em_x_um", "em_y_um"]].to_numpy()
        assert np.max(np.abs(t.apply(em) - lm)) < 1e-9
        beads_em = np.array(case.ground_truth["beads_em_um"])
        beads_lm = np.array(case.ground_truth["beads_lm_um"])
        assert np.max(np.abs(t.apply(beads_em) - beads_lm)) < 1e-9
    dets = [np.linalg.det(np.array(c.ground_truth["transform"]["matrix"])[:2, :2]) for c in cases]
    assert dets[3] < 0  # the mirrored default view
    assert all(d > 0 for d in dets[:3])


def test_sem_field_centre_maps_to_view_centre(cases) -> None:
    for case in cases:
        t = Transform.from_dict(case.ground_truth["transform"])
        rows, cols = case.em.shape
        centre_em = np.array([[cols / 2, rows / 2]]) / case.em_px_per_um
        centre_lm = t.apply(centre_em)[0]
        assert np.allclose(centre_lm, case.ground_truth["view"]["center_um"], atol=1e-9)
        corners = np.array([[0, 0], [cols, 0], [0, rows], [cols, rows]]) / case.em_px_per_um
        mapped = t.apply(corners)
        assert np.all(mapped >= 0) and np.all(mapped <= 511 / 25.0)


def test_beads_visible_at_landmarks(cases) -> None:
    for case in cases:
        lm_xy = case.landmarks[["lm_x_um", "lm_y_um"]].to_numpy()
        em_xy = case.landmarks[["em_x_um", "em_y_um"]].to_numpy()
        assert np.all(_window_excess(case.lm, lm_xy, case.lm_px_per_um) > 60), case.name
        assert np.all(_window_excess(case.em, em_xy, case.em_px_per_um) > 80), case.name


def test_missing_beads_are_dark(cases) -> None:
    case = cases[0]
    gt = case.ground_truth
    beads_em = np.array(gt["beads_em_um"])
    beads_lm = np.array(gt["beads_lm_um"])
    assert gt["missing_in_em"], "expected some beads buried in the SEM section"
    em_excess = _window_excess(case.em, beads_em[gt["missing_in_em"]], case.em_px_per_um)
    assert np.all(em_excess < 60)
    assert gt["missing_in_lm"], "expected some beads too dim in the confocal"
    lm_excess = _window_excess(case.lm, beads_lm[gt["missing_in_lm"]], case.lm_px_per_um)
    assert np.all(lm_excess < 40)


def test_missing_fraction_and_landmark_count(cases) -> None:
    for case in cases:
        gt = case.ground_truth
        n_inside = len(gt["beads_lm_um"]) - len(gt["outside_em"])
        absent = 1.0 - len(case.landmarks) / n_inside
        assert 0.10 <= absent <= 0.25, (case.name, absent)
        assert len(case.landmarks) >= 12, case.name
        names = set(case.landmarks["name"])
        for i in gt["missing_in_em"] + gt["missing_in_lm"] + gt["outside_em"]:
            assert f"bead{i:03d}" not in names
        assert set(gt["missing_in_em"]).isdisjoint(gt["outside_em"])


def test_spurious_objects_present(cases) -> None:
    for case in cases:
        gt = case.ground_truth
        assert 3 <= len(gt["spurious_em_um"]) <= 6
        assert len(gt["spurious_lm_um"]) == 3
        diam = np.array(gt["spurious_em_diameter_nm"])
        assert np.any((diam > 70) & (diam < 140))  # some are bead-sized


def test_fixed_center_and_overrides() -> None:
    params = {
        "views": [
            {"px_nm": 20.0, "size_px": [300, 400], "rotation_deg": 10.0, "center_um": [10.0, 9.0]}
        ],
        "n_beads": 30,
    }
    case = make_fiducial_case(3, 5, params, name="custom")
    assert case.name == "custom"
    assert case.em.shape == (300, 400)
    assert case.ground_truth["view"]["center_um"] == [10.0, 9.0]
    assert len(case.ground_truth["beads_lm_um"]) == 30
    with pytest.raises(ValueError, match="confocal field"):
        make_fiducial_case(
            3, 0, {"views": [{"px_nm": 20.0, "size_px": [300, 400], "center_um": [1.0, 1.0]}]}
        )


def test_write_and_read_back(cases, tmp_path) -> None:
    case = cases[3]
    paths = case.write(str(tmp_path / case.name))
    em, em_ppu = read_image(paths["em"])
    lm, lm_ppu = read_image(paths["lm"])
    view = DEFAULT_FIDUCIAL_PARAMS["views"][3]
    assert em_ppu == pytest.approx(1000.0 / view["px_nm"], rel=1e-6)
    assert lm_ppu == pytest.approx(1000.0 / 40.0, rel=1e-6)
    assert np.array_equal(em, case.em) and np.array_equal(lm, case.lm)
    table = read_landmarks(paths["landmarks"])
    assert len(table) == len(case.landmarks)
    assert np.allclose(
        table[LANDMARK_COLUMNS[1:]].to_numpy(),
        case.landmarks[LANDMARK_COLUMNS[1:]].to_numpy(),
        atol=1e-5,
    )
    truth = read_json(paths["ground_truth"])
    assert truth["track"] == "fiducial" and truth["case"] == "sem04"


# ----------------------------------------------------------------- stress options


def _truth_without_view(case) -> dict:
    return {k: v for k, v in case.ground_truth.items() if k != "view"}


def test_stress_options_off_change_nothing(cases) -> None:
    """Every stress option at its off value gives the default case, byte for byte."""
    view = dict(DEFAULT_FIDUCIAL_PARAMS["views"][3])
    view.update(STRESS_VIEW_OPTIONS)
    params = dict(STRESS_PARAMS, views=[*DEFAULT_FIDUCIAL_PARAMS["views"][:3], view])
    off = make_fiducial_case(SEED, 3, params)
    assert np.array_equal(off.em, cases[3].em) and np.array_equal(off.lm, cases[3].lm)
    pd.testing.assert_frame_equal(off.landmarks, cases[3].landmarks)
    assert _truth_without_view(off) == _truth_without_view(cases[3])
    legacy_keys = {
        "case", "track", "seed", "index", "transform", "em_px_per_um", "lm_px_per_um",
        "em_shape", "lm_shape", "beads_lm_um", "beads_em_um", "missing_in_em",
        "missing_in_lm", "outside_em", "missing_fraction", "spurious_em_um",
        "spurious_em_diameter_nm", "spurious_lm_um", "spurious_lm_diameter_nm", "view",
        "bead_diameter_nm",
    }  # fmt: skip
    for case in cases:
        assert set(case.ground_truth) == legacy_keys
        assert "tilt_deg" not in case.ground_truth["transform"]["extra"]


CROWDED_VIEW = {
    "px_nm": 20.0,
    "size_px": [520, 560],
    "rotation_deg": 30.0,
    "mirror": True,
    "tilt_deg": 30.0,
    "tilt_axis_deg": 25.0,
    "databar_px": 44,
}
CROWDED = {
    "n_beads": 80,
    "n_puncta_lm": [150, 170],
    "n_puncta_em": [120, 140],
    "missing_fraction": [0.1, 0.3],
    "views": [CROWDED_VIEW],
}


@pytest.fixture(scope="module")
def crowded():
    return make_fiducial_case(7, 0, CROWDED)


def test_crowded_puncta_counts_and_clearance(crowded) -> None:
    gt = crowded.ground_truth
    lm_puncta, em_puncta = np.array(gt["puncta_lm_um"]), np.array(gt["puncta_em_um"])
    assert 150 <= len(lm_puncta) <= 170 and 120 <= len(em_puncta) <= 140
    assert len(gt["puncta_lm_diameter_nm"]) == len(lm_puncta)
    diam = np.array(gt["puncta_em_diameter_nm"] + gt["puncta_lm_diameter_nm"])
    assert diam.min() >= 100 * 0.6 * 0.75 - 1e-9 and diam.max() <= 100 * 1.6 + 1e-9
    # puncta keep clear of every bead (centres >= 0.38 um apart) in both frames
    for puncta, beads in ((lm_puncta, gt["beads_lm_um"]), (em_puncta, gt["beads_em_um"])):
        d = np.hypot(*(puncta[:, None, :] - np.array(beads)[None, :, :]).transpose(2, 0, 1))
        assert d.min() > 0.3
    # the puncta are bright in both images (where not under the databar)
    assert np.median(_window_excess(crowded.lm, lm_puncta, crowded.lm_px_per_um)) > 30
    rows = crowded.em.shape[0] - CROWDED_VIEW["databar_px"] - 2
    above = em_puncta[em_puncta[:, 1] * crowded.em_px_per_um < rows]
    assert np.median(_window_excess(crowded.em, above, crowded.em_px_per_um)) > 60


def test_crowded_landmarks_exact_and_visible(crowded) -> None:
    t = Transform.from_dict(crowded.ground_truth["transform"])
    em = crowded.landmarks[["em_x_um", "em_y_um"]].to_numpy()
    lm = crowded.landmarks[["lm_x_um", "lm_y_um"]].to_numpy()
    assert len(crowded.landmarks) >= 12
    assert np.max(np.abs(t.apply(em) - lm)) < 1e-9
    assert np.all(_window_excess(crowded.lm, lm, crowded.lm_px_per_um) > 60)
    assert np.all(_window_excess(crowded.em, em, crowded.em_px_per_um) > 80)
    assert np.linalg.det(t.matrix[:2, :2]) < 0  # mirrored


def test_tilt_gives_the_foreshortening(crowded) -> None:
    m = np.array(crowded.ground_truth["transform"]["matrix"])[:2, :2]
    sv = np.linalg.svd(m, compute_uv=False)
    expected = 1.0 / np.cos(np.deg2rad(30.0))
    assert sv[0] / sv[1] == pytest.approx(expected, abs=1e-9)
    assert crowded.ground_truth["transform"]["extra"]["anisotropy"] == pytest.approx(expected)
    # the stretch acts across the tilt axis (25 deg in the SEM frame): the em -> lm map
    # keeps lengths along the axis and stretches them across it
    axis = np.deg2rad(25.0)
    along, across = np.array([np.cos(axis), np.sin(axis)]), np.array([-np.sin(axis), np.cos(axis)])
    assert np.linalg.norm(m @ along) == pytest.approx(1.0, abs=1e-12)
    assert np.linalg.norm(m @ across) == pytest.approx(expected, abs=1e-12)


def test_databar_uniform_with_marks_and_no_landmark_under_it(crowded) -> None:
    bar_px = CROWDED_VIEW["databar_px"]
    bar = crowded.em[-bar_px:]
    assert set(np.unique(bar)) == {0, 255}  # uniform black, white marks
    assert 0.02 < np.mean(bar == 255) < 0.35
    assert np.mean(bar[:, : bar.shape[1] // 2] == 255) > 0.02  # text on the left
    assert np.mean(crowded.em[-bar_px - 1] == 0) < 0.05  # the image above is not black
    top_um = (crowded.em.shape[0] - bar_px) / crowded.em_px_per_um
    r_um = 0.05
    assert np.all(crowded.landmarks["em_y_um"] + r_um <= top_um)
    gt = crowded.ground_truth
    under = gt["under_databar_em"]
    names = set(crowded.landmarks["name"])
    beads_em = np.array(gt["beads_em_um"])
    assert all(f"bead{i:03d}" not in names for i in under)
    assert all(beads_em[i, 1] + r_um > top_um for i in under)
    assert set(under) <= set(gt["outside_em"])


def test_large_beads_scale_with_the_psf() -> None:
    """600 nm beads: detected at the apparent size (bead and PSF in quadrature)."""
    params = {
        "bead_diameter_nm": 600.0,
        "confocal_px_nm": 100.0,
        "psf_fwhm_nm": 350.0,
        "n_beads": 40,
        "views": [{"px_nm": 60.0, "size_px": [400, 400], "rotation_deg": 10.0}],
    }
    case = make_fiducial_case(2, 0, params)
    gt = case.ground_truth
    beads = np.array(gt["beads_lm_um"])
    d = np.hypot(*(beads[:, None, :] - beads[None, :, :]).transpose(2, 0, 1))
    assert d[np.triu_indices(len(beads), 1)].min() >= 1.5 * 0.6 - 1e-9  # no touching beads
    lm_xy = case.landmarks[["lm_x_um", "lm_y_um"]].to_numpy()
    em_xy = case.landmarks[["em_x_um", "em_y_um"]].to_numpy()
    assert len(lm_xy) >= 5
    assert np.all(_window_excess(case.lm, lm_xy, case.lm_px_per_um) > 60)
    assert np.all(_window_excess(case.em, em_xy, case.em_px_per_um) > 80)
    lm = detect_beads(case.lm, case.lm_px_per_um, 0.6, 0.35)
    em = detect_beads(case.em, case.em_px_per_um, 0.6, 0.0)
    assert np.median(lm.diameter_um) == pytest.approx(apparent_diameter_um(0.6, 0.35), rel=0.3)
    assert np.median(em.diameter_um) == pytest.approx(0.6, rel=0.3)


@pytest.mark.parametrize(
    "view, match",
    [({"tilt_deg": 85.0}, "tilt_deg"), ({"databar_px": 400}, "databar_px")],
)
def test_stress_view_options_checked(view, match) -> None:
    params = {"views": [{"px_nm": 20.0, "size_px": [300, 400], **view}]}
    with pytest.raises(ValueError, match=match):
        make_fiducial_case(0, 0, params)
