"""Scoring of registrations (Table 2) and the capture range."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from clemalign.evaluation import inverted_tem_sigmas_um, landmark_fit, score
from clemalign.routes import (
    capture_summary,
    capture_trials,
    moving_image,
    register_measures,
    source_measures,
)
from clemalign.tables import status_notes, table2, to_markdown
from clemalign.transforms import affine_matrix, translation_matrix, warp_image


def _landmarks(em_xy, lm_xy) -> pd.DataFrame:
    em_xy, lm_xy = np.asarray(em_xy, float), np.asarray(lm_xy, float)
    return pd.DataFrame(
        {
            "name": [f"p{i}" for i in range(len(em_xy))],
            "em_x_um": em_xy[:, 0],
            "em_y_um": em_xy[:, 1],
            "lm_x_um": lm_xy[:, 0],
            "lm_y_um": lm_xy[:, 1],
        }
    )


def test_landmark_mae_std_by_hand():
    # A translation of 1 um in x; landmarks off by (0, 0), (0, 1) and (0, 0) um after it.
    lmk = _landmarks([[0, 0], [1, 0], [0, 2]], [[1, 0], [2, 1], [1, 2]])
    got = score(translation_matrix(1.0, 0.0), lmk, None, (10, 10), 1.0)
    # errors 0, 1, 0: mean 1/3; sample STD sqrt(((1/3)² + (2/3)² + (1/3)²) / 2) = sqrt(1/3)
    assert got["mae_um"] == pytest.approx(1 / 3)
    assert got["std_um"] == pytest.approx(np.sqrt(1 / 3))
    assert np.isnan(got["gt_mean_um"])


def test_ground_truth_error_is_the_mean_over_the_grid():
    lmk = _landmarks([[0, 0], [1, 0], [0, 1]], [[0, 0], [1, 0], [0, 1]])
    got = score(translation_matrix(0.3, 0.4), lmk, np.eye(3), (20, 30), 2.0)
    assert got["gt_mean_um"] == pytest.approx(0.5)  # a translation moves every point by 0.5


def test_landmark_fit_recovers_an_affine_exactly():
    matrix = affine_matrix(7.0, (1.03, 0.97), 0.02, (2.0, -1.0), mirror=True)
    em = np.random.default_rng(1).uniform(0, 10, (12, 2))
    lmk = _landmarks(em, (matrix[:2, :2] @ em.T).T + matrix[:2, 2])
    np.testing.assert_allclose(landmark_fit(lmk), matrix, atol=1e-12)
    assert score(landmark_fit(lmk), lmk, None, (5, 5), 1.0)["mae_um"] < 1e-10


def test_sources_and_moving_images():
    assert source_measures("sparse", ["ssd", "mi"], True) == ["ssd", "mi", "wssd"]
    assert source_measures("raw", ["ssd", "mi"], True) == ["ssd", "mi"]
    assert source_measures("sparse", ["mi"], False) == ["mi"]
    with pytest.raises(ValueError, match="unknown registration source"):
        source_measures("tem", ["ssd"], False)
    tem = np.array([[0.2, 0.9]])
    np.testing.assert_allclose(moving_image("raw", "ssd", tem, None), [[0.8, 0.1]])
    np.testing.assert_allclose(moving_image("raw", "mi", tem, None), tem)
    np.testing.assert_allclose(moving_image("hertzmann", "ssd", tem, tem * 2), tem * 2)
    with pytest.raises(ValueError, match="needs a predicted image"):
        moving_image("sparse", "ssd", tem, None)


def test_table2_layout():
    long = pd.DataFrame(
        [
            ("c1", "sparse", "ssd", 0.1, 0.01, "ok"),
            ("c1", "sparse", "mi", 0.2, 0.02, "ok"),
            ("c1", "raw", "ssd", 9.0, 1.0, "failed: no overlap"),
            ("c1", "landmark", "fit", 0.05, 0.02, "ok"),
            ("c2", "sparse", "ssd", 0.3, 0.03, "ok"),
            ("c2", "sparse", "mi", 0.4, 0.04, "ok"),
            ("c2", "raw", "ssd", 0.5, 0.05, "ok"),
            ("c2", "landmark", "fit", 0.06, 0.03, "ok"),
        ],
        columns=["case", "source", "measure", "mae_um", "std_um", "status"],
    )
    wide = table2(long)
    assert list(wide.index) == ["c1", "c2"]
    assert list(dict.fromkeys(wide.columns.get_level_values(0))) == [
        "Proposed IA SSD",
        "Proposed IA MI",
        "TEM/confocal SSD",
        "Landmark fit",
    ]
    assert wide.loc["c2", ("Proposed IA MI", "STD")] == pytest.approx(0.04)
    assert wide.loc["c1", ("TEM/confocal SSD", "MAE")] == "failed"  # the status, not 9.0
    assert "| c1 | 0.100 | 0.010 | 0.200 | 0.020 | failed | -- | 0.050 | 0.020 |" in to_markdown(
        wide, 3
    )
    assert status_notes(long, lambda r: f"{r.case} {r.source} {r.measure}") == [
        "c1 raw ssd: failed: no overlap"
    ]
    bad = pd.DataFrame({"case": ["c3", "c3"], "source": ["raw", "sparse"]})
    bad = bad.assign(measure="ssd", status="failed: case 'c3': the lm file is missing")
    both = pd.concat([long, bad], ignore_index=True)
    assert status_notes(both, lambda r: f"{r.case} {r.source} {r.measure}") == [
        "c1 raw ssd: failed: no overlap",
        "c3 (every column): failed: case 'c3': the lm file is missing",
    ]


def _textured(shape=(64, 64), seed=3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.normal(size=shape), 3.0)
    return (image - image.min()) / (image.max() - image.min())


def test_register_measures_records_failures_and_capture_comes_back():
    ppu = 2.0
    fixed = _textured((80, 80))  # 40 um; the moving field is 32 um inside it
    truth = affine_matrix(2.0, (1.02, 0.99), 0.01, (4.0, 3.0), center_um=(16.0, 16.0))
    moving = warp_image(fixed, ppu, np.linalg.inv(truth), (64, 64), ppu, order=3)
    start = translation_matrix(4.0, 3.0)
    em = np.array([[5.0, 5.0], [25.0, 6.0], [8.0, 27.0], [20.0, 20.0]])
    lmk = _landmarks(em, (truth[:2, :2] @ em.T).T + truth[:2, 2])
    plain = {"ssd_contrast_um": None}  # the texture (1.5 um) is coarser than 1 um local contrast
    got = register_measures(lambda m: moving, fixed, start, ["ssd", "bogus"], ppu, None, plain)
    assert got["bogus"]["status"].startswith("failed:")
    assert got["ssd"]["status"] == "ok"
    answer = np.asarray(got["ssd"]["matrix"])
    assert score(answer, lmk, truth, moving.shape, ppu)["gt_mean_um"] < 0.05
    bounds = {"max_rotation_deg": 2.0, "max_scale": 0.02, "max_shear": 0.01}
    bounds["max_translation_um"] = 1.0
    trials = capture_trials(
        lambda m: moving,
        fixed,
        start,
        {"ssd": answer},
        ppu,
        np.random.default_rng(0),
        3,
        bounds,
        0.2,
        lmk,
        truth,
        options=plain,
    )
    assert len(trials) == 3 and trials["success"].all()
    assert (trials["start_um"] > 0).all() and (trials["reference"] == "ground truth").all()
    assert trials["search_gap"].isna().all()  # no start search: no gap
    trials.insert(0, "source", "raw")
    trials.insert(0, "case", "c1")
    summary = capture_summary(trials)
    assert summary.loc[0, "success_rate"] == 1.0 and summary.loc[0, "trials"] == 3


def test_registration_images_share_one_sampling(tmp_path):
    from clemalign.io import write_tiff
    from clemalign.routes import load_registration_images

    image = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    write_tiff(tmp_path / "em.tif", image, 14.52)
    write_tiff(tmp_path / "lm.tif", image, 14.52)
    write_tiff(tmp_path / "lm_coarse.tif", image, 7.26)
    write_tiff(tmp_path / "unc.tif", image, 14.52)
    got = load_registration_images(
        "c1", tmp_path / "em.tif", tmp_path / "lm.tif", uncertainty=tmp_path / "unc.tif"
    )
    assert got.px_per_um == pytest.approx(14.52) and got.predicted is None
    np.testing.assert_allclose(got.weights, 1.0 - image, atol=1e-7)  # eq. 12: 1 - ω
    with pytest.raises(ValueError, match=r"case c1: .*lm_coarse.tif is at 7.26"):
        load_registration_images("c1", tmp_path / "em.tif", tmp_path / "lm_coarse.tif")


def test_each_source_registers_its_own_files():
    from clemalign.routes import source_files

    files = {
        "lm": "lm.tif",
        "sparse": "sp.tif",
        "sparse_uncertainty": "unc.tif",
        "confocal_denoised": "den.tif",
        "hertzmann": "h.tif",
    }
    assert source_files("raw", {"lm": "lm.tif"}) == ("lm.tif", None, None)
    assert source_files("sparse", files) == ("lm.tif", "sp.tif", "unc.tif")
    assert source_files("sparse_denoised", files) == ("den.tif", "sp.tif", "unc.tif")
    assert source_files("hertzmann", files) == ("lm.tif", "h.tif", None)
    with pytest.raises(ValueError, match="unknown registration source 'tem'"):
        source_files("tem", files)


def test_inverted_tem_blur_is_left_one_out_without_a_psf():
    ppu = 10.0
    rng = np.random.default_rng(0)
    tems, confocals = [], []
    for sigma_um in (0.2, 0.4, 0.6):
        tem = rng.random((80, 80))
        tems.append(tem)
        confocals.append(ndimage.gaussian_filter(1.0 - tem, sigma_um * ppu, mode="nearest"))
    sigmas, best = inverted_tem_sigmas_um(tems, confocals, [ppu] * 3, None)
    assert best == pytest.approx([0.2, 0.4, 0.6])  # each case's own blur is found...
    assert sigmas == pytest.approx([0.5, 0.4, 0.3])  # ...but never used for that case
    given, _ = inverted_tem_sigmas_um(tems, confocals, [ppu] * 3, 0.7)
    assert given == pytest.approx([0.7 / 2.3548] * 3)


def test_the_start_search_brings_back_a_rough_start_that_local_registration_misses():
    """A start 14 deg, 9 % and 2 um off (the wide protocol's size): the search about it
    comes back to the truth under every measure and records its candidates; the local
    registration alone does not come back."""
    from clemalign.confidence import ConfidenceLimits
    from clemalign.search import StartSearch

    ppu = 4.0
    rng = np.random.default_rng(7)
    fixed = ndimage.gaussian_filter(rng.normal(size=(200, 200)), 1.2)  # 50 um, fine texture
    fixed = (fixed - fixed.min()) / (fixed.max() - fixed.min())
    truth = affine_matrix(3.0, (1.02, 0.99), 0.01, (14.0, 12.0), center_um=(0.0, 0.0))
    moving = warp_image(fixed, ppu, np.linalg.inv(truth), (96, 96), ppu, order=3)  # 24 um
    rough = truth @ affine_matrix(14.0, (1.09, 1.09), 0.0, (1.4, -1.4), center_um=(12.0, 12.0))
    shape, lmk = moving.shape, _landmarks([[1, 1], [2, 1], [1, 2]], [[0, 0]] * 3)
    assert score(rough, lmk, truth, shape, ppu)["gt_mean_um"] > 3.0
    args = (lambda m: moving, fixed, rough, ["ssd", "mi"], ppu, None, {"levels": 2})
    local = register_measures(*args)
    searched = register_measures(*args, search=StartSearch())
    for measure in ("ssd", "mi"):
        found = np.asarray(searched[measure]["matrix"])
        assert score(found, lmk, truth, shape, ppu)["gt_mean_um"] < 0.05
        record = searched[measure]["search"]
        assert 1 <= len(record["candidates"]) <= 3 and record["similarity"] > 0.8
        # the true placement leads every other basin clearly: not flagged by its gap
        assert record["gap"] is None or record["gap"] > ConfidenceLimits().min_search_gap
        assert "search" not in local[measure]
    missed = [np.asarray(local[m]["matrix"]) for m in ("ssd", "mi")]
    assert max(score(m, lmk, truth, shape, ppu)["gt_mean_um"] for m in missed) > 0.5


def test_failed_case_rows_keep_the_number_columns_numeric():
    """A table with a failed case's rows still has float columns (its CSV's float format
    applies), and one without failed cases is unchanged."""
    from clemalign.tables import concat_rows, failed_case_rows

    long = pd.DataFrame({"case": ["c1"], "mae_um": [0.123456789], "status": ["ok"]})
    checks = [{"case": "c0", "status": "failed: case 'c0': the lm file is missing"}]
    none = failed_case_rows([{"case": "c1", "status": "ok"}], [{}], list(long.columns))
    assert concat_rows(long, none).equals(long)
    both = concat_rows(long, failed_case_rows(checks, [{}], list(long.columns)))
    assert both["mae_um"].dtype == float and np.isnan(both["mae_um"].iloc[1])
    assert both.to_csv(index=False, float_format="%.3f").splitlines()[1] == "c1,0.123,ok"
