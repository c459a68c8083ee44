"""The workflow's non-rigid step (clemalign.routes.refine_nonrigid): a route's affine answer
refined, scored against a known field, and its status."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from clemalign.evaluation import score, truth_error_um
from clemalign.register import pixel_centres_um
from clemalign.routes import (
    NonrigidOptions,
    nonrigid_answer,
    refine_nonrigid,
    refine_nonrigid_in_field,
)
from clemalign.tables import nonrigid_table, table2
from clemalign.transforms import DeformationField, affine_matrix, apply, xy_um_to_rc_px

PPU = 2.0
AFFINE = affine_matrix(rotation_deg=2.0, scale=(1.02, 0.99), translation_um=(8.0, 9.0))
CONFIG = {
    "routes": ["raw/mi", "raw/ssd"],
    "grid_spacing_um": 5.0,
    "bending_weight": {"mi": 10.0, "ssd": 10.0, "wssd": 10.0},
    "finest_level": 0,
    "max_displacement_rms_um": 0.6,
}


def _truth(points: np.ndarray) -> np.ndarray:
    """Affine + 0.6 um sinusoidal non-affine part (20 um wavelength)."""
    k = 2 * np.pi / 20.0
    x, y = points[:, 0], points[:, 1]
    bend = 0.6 * np.stack([np.sin(k * y + 0.3), np.cos(k * x - 0.5)], axis=1)
    return apply(AFFINE, points) + bend


@pytest.fixture(scope="module")
def pair():
    """(fixed 56 um texture, moving 40 um view of it through the truth)."""
    n = int(56 * PPU)
    fixed = ndimage.gaussian_filter(np.random.default_rng(3).normal(size=(n, n)), 2.0)
    fixed = (fixed - fixed.mean()) / fixed.std()
    m = int(40 * PPU)
    rc = xy_um_to_rc_px(_truth(pixel_centres_um((m, m), PPU)), PPU).T
    return fixed, ndimage.map_coordinates(fixed, rc, order=3).reshape(m, m)


def _affine_results(status: str = "ok") -> dict:
    return {
        "mi": {"status": status, "matrix": AFFINE.tolist()},
        "ssd": {"status": "failed: the optimiser diverged"},
    }


def test_refinement_recovers_a_known_field_and_keeps_the_affine_status(pair):
    fixed, moving = pair
    results = _affine_results()
    opts = NonrigidOptions.maybe(CONFIG)
    refine_nonrigid(results, lambda m: -np.exp(moving), fixed, PPU, opts, "raw")
    refined = results["mi"]["nonrigid"]
    assert refined["status"] == "ok"
    field = DeformationField.from_dict(refined["field"])
    before = truth_error_um(
        AFFINE, DeformationField.from_mapping(_truth, (40, 40), 0.5, 1.0), (80, 80), PPU
    )
    after = truth_error_um(
        field, DeformationField.from_mapping(_truth, (40, 40), 0.5, 1.0), (80, 80), PPU
    )
    assert before > 0.5 and after < 0.3 * before
    # the failed affine gets a failed refinement with the affine's reason
    assert results["ssd"]["nonrigid"]["status"] == "failed: the optimiser diverged"


def test_refinement_in_a_whole_field_frame_recovers_the_field_there(pair):
    """The global search's case: the affine is given in the whole fixed image's um, the
    refinement runs on a crop around it (3 um margin, corner away from the origin) and the
    field comes back in the whole image's um."""
    fixed, moving = pair
    opts = NonrigidOptions.maybe(CONFIG)
    kwargs = {"moving_px_per_um": PPU, "fixed_px_per_um": PPU, "crop_margin_um": 3.0}
    record, field = refine_nonrigid_in_field(
        -np.exp(moving), fixed, AFFINE, "ok", options=opts, **kwargs
    )
    truth = DeformationField.from_mapping(_truth, (40, 40), 0.5, 1.0)
    before = truth_error_um(AFFINE, truth, (80, 80), PPU)
    assert record["status"] == "ok" and "field" not in record
    assert truth_error_um(field, truth, (80, 80), PPU) < 0.3 * before
    failed, none = refine_nonrigid_in_field(
        moving, fixed, AFFINE, "failed: x", options=opts, **kwargs
    )
    assert none is None and failed == {"status": "failed: x"}


def test_a_field_moving_too_far_is_uncertain(pair):
    fixed, moving = pair
    results = _affine_results()
    opts = NonrigidOptions.maybe(CONFIG | {"max_displacement_rms_um": 0.05})
    refine_nonrigid(results, lambda m: -np.exp(moving), fixed, PPU, opts, "raw")
    status = results["mi"]["nonrigid"]["status"]
    assert status.startswith("uncertain: the non-rigid field moves the TEM by")


def test_only_configured_routes_are_refined(pair):
    fixed, moving = pair
    results = _affine_results()
    refine_nonrigid(results, lambda m: moving, fixed, PPU, NonrigidOptions.maybe(CONFIG), "sparse")
    assert "nonrigid" not in results["mi"]
    assert NonrigidOptions.maybe(None) is None
    assert NonrigidOptions.maybe(CONFIG | {"routes": []}) is None


def test_refinement_inherits_doubt_about_its_affine():
    record = {"status": "ok"}
    assert nonrigid_answer(record, "uncertain: disagrees with the routes")[1] == (
        "uncertain: disagrees with the routes"
    )
    # the affine's reason at refinement time is replaced by its final status, not repeated
    weak = {"status": "uncertain: weak match"}
    final = "uncertain: weak match; 0.6 um from the routes' consensus"
    assert nonrigid_answer(weak, final, "uncertain: weak match")[1] == final
    own = {"status": "uncertain: the non-rigid field moves the TEM by 0.9 um"}
    status = nonrigid_answer(own, "uncertain: disagrees with the routes")[1]
    assert status.startswith("uncertain: the non-rigid field") and "disagrees" in status
    assert nonrigid_answer(own, "failed: no better than chance")[1] == (
        "failed: no better than chance"
    )


def test_score_of_a_field_uses_the_field():
    field = DeformationField.from_mapping(_truth, (40, 40), 0.5, 1.0)
    em = np.array([[5.0, 5.0], [20.0, 30.0], [35.0, 10.0]])
    lm = _truth(em)
    marks = pd.DataFrame(
        {"em_x_um": em[:, 0], "em_y_um": em[:, 1], "lm_x_um": lm[:, 0], "lm_y_um": lm[:, 1]}
    )
    exact = score(field, marks, field, (80, 80), PPU)
    assert exact["mae_um"] < 1e-3 and exact["gt_mean_um"] < 1e-9
    affine = score(AFFINE, marks, field, (80, 80), PPU)
    assert affine["mae_um"] > 0.2 and affine["gt_mean_um"] > 0.3


def test_nonrigid_table_and_table2_columns():
    long = pd.DataFrame(
        [
            ("c1", "raw", "mi", 0.30, 0.1, "ok", 0.20),
            ("c1", "raw", "mi+bspline", 0.25, 0.1, "ok", 0.10),
            ("c2", "raw", "mi", 0.30, 0.1, "ok", 0.20),
            ("c2", "raw", "mi+bspline", 0.90, 0.1, "failed: the non-rigid field folds", 0.9),
        ],
        columns=["case", "source", "measure", "mae_um", "std_um", "status", "gt_mean_um"],
    )
    table = nonrigid_table(long, {"c1": 0.15})
    gt = "ground truth (um)"
    assert table.loc["c1 raw/mi", (gt, "change %")] == pytest.approx(-50.0)
    assert table.loc["c1 raw/mi", (gt, "non-affine RMS")] == 0.15
    assert table.loc["c2 raw/mi", (gt, "B-spline")] == "failed"
    assert np.isnan(table.loc["c2 raw/mi", (gt, "non-affine RMS")])
    wide = table2(long)
    assert ("TEM/confocal MI + B-spline", "MAE") in wide.columns
    assert wide.loc["c2", ("TEM/confocal MI + B-spline", "MAE")] == "failed"
