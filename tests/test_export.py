"""Exports (clemalign.export): raw-frame composition, the exported route, the files per case
(ITK, ec-CLEM, BigWarp, resampled images, residuals) on a small case with a known transform."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import ndimage

from clemalign import export as ex
from clemalign.cases import Case
from clemalign.evaluation import frame_ground_truth
from clemalign.formats import (
    read_bigwarp_landmarks,
    read_ecclem_transform,
    read_itk_transform,
)
from clemalign.io import landmark_points, read_image, read_json, write_landmarks, write_tiff
from clemalign.preprocess import prepare_analogy_pair, resample
from clemalign.transforms import (
    Transform,
    affine_matrix,
    apply,
    fit_similarity,
    translation_matrix,
    warp_image,
)

REPO = Path(__file__).resolve().parents[1]
EM_PPU, LM_PPU = 20.0, 8.0  # px/um: EM finer than LM, as in CLEM
EM_SHAPE, LM_SHAPE = (160, 160), (160, 176)  # 8 x 8 um EM field, 22 x 20 um LM field
#: Raw EM um -> raw LM um of the test case: rotation, anisotropic scale, shear.
RAW = affine_matrix(5.0, (1.03, 0.97), 0.02, (6.0, 6.5), center_um=(4.0, 4.0))
#: Corner of the LM working frame (the confocal crop) in the raw LM frame, um.
CROP_ORIGIN_UM = (3.25, 2.5)
CROP = translation_matrix(-CROP_ORIGIN_UM[0], -CROP_ORIGIN_UM[1]) @ RAW
#: Mean absolute difference (intensities in [0, 1]) between a resampled image and the image
#: it should reproduce, on their overlap (measured: 0.0023 em_on_lm, 0.0031 lm_on_em).
MAD_BOUND = 0.01


def texture(seed: int, shape: tuple[int, int]) -> np.ndarray:
    """Smooth random field in [0, 1] (as tests/test_cli.py)."""
    rng = np.random.default_rng(seed)
    field = sum(ndimage.gaussian_filter(rng.standard_normal(shape), s) * s for s in (1.5, 3.0, 6.0))
    return (field - field.min()) / (field.max() - field.min())


def shifted(matrix: np.ndarray, dx_um: float, dy_um: float) -> np.ndarray:
    return translation_matrix(dx_um, dy_um) @ matrix


def measure(status: str, matrix: np.ndarray | None) -> dict:
    entry = {"status": status}
    if matrix is not None:
        entry["matrix"] = np.asarray(matrix).tolist()
    return entry


def registrations(**routes: tuple[str, np.ndarray | None]) -> dict:
    """Registration records by source, from ``source__measure=(status, matrix)``."""
    results: dict = {}
    for name, (status, matrix) in routes.items():
        source, measure_name = name.split("__")
        results.setdefault(source, {"measures": {}})["measures"][measure_name] = measure(
            status, matrix
        )
    return results


@pytest.fixture
def answers() -> dict:
    """Five answers around CROP: raw/mi is the centre (median distance 0.02 um), sparse/mi
    is 2 um off (ok by its own checks), hertzmann failed twice (one with a matrix)."""
    return registrations(
        raw__ssd=("ok", shifted(CROP, 0.01, 0.0)),
        raw__mi=("ok", CROP),
        sparse__ssd=("uncertain: weak match (z = 1.8 over surrogates)", shifted(CROP, 0.0, 0.02)),
        sparse__mi=("ok", shifted(CROP, 2.0, 0.0)),
        hertzmann__ssd=("failed: no better than chance (z = 0.2 over surrogates)", None),
        hertzmann__mi=("failed: no better than chance (z = 0.4)", shifted(CROP, 0.1, 0.1)),
    )


def choose(results: dict, route: str) -> ex.ExportChoice:
    return ex.choose_analogy_answer(results, route, EM_SHAPE, EM_PPU, {"agree_um": 0.5})


# ------------------------------------------------------------------------------ frames


def test_raw_frame_matrix_adds_the_crop_origin():
    np.testing.assert_allclose(ex.raw_frame_matrix(CROP, CROP_ORIGIN_UM), RAW, atol=1e-12)
    em_xy = np.random.default_rng(0).uniform(0, 8, (10, 2))
    crop_xy = apply(CROP, em_xy)
    raw_xy = apply(ex.raw_frame_matrix(CROP, CROP_ORIGIN_UM), em_xy)
    np.testing.assert_allclose(raw_xy, crop_xy + CROP_ORIGIN_UM, atol=1e-12)
    # an EM working frame with its own corner: raw EM um = working um + its origin
    em_origin = (1.0, -2.0)
    both = ex.raw_frame_matrix(CROP, CROP_ORIGIN_UM, em_origin)
    np.testing.assert_allclose(apply(both, em_xy + em_origin), raw_xy, atol=1e-12)


def test_preprocessing_crop_composes_back_to_the_raw_frames(small_analogy_case):
    """prepare_analogy_pair's start (TEM um -> crop um) and ground truth, composed with its
    crop origin, are the raw-frame similarity fitted to the raw landmarks and the raw truth."""
    c = small_analogy_case
    pair = prepare_analogy_pair(c.em, c.em_px_per_um, c.lm, c.lm_px_per_um, c.landmarks)
    assert np.all(np.asarray(pair.crop_origin_um) > 0)  # a real crop, not the identity
    raw_start = ex.raw_frame_matrix(pair.start.matrix, pair.crop_origin_um)
    np.testing.assert_allclose(raw_start, fit_similarity(*landmark_points(c.landmarks)), atol=1e-9)
    truth_crop = frame_ground_truth(pair.frame_record(c.ground_truth))
    truth_raw = Transform.from_dict(c.ground_truth["transform"]).matrix
    np.testing.assert_allclose(
        ex.raw_frame_matrix(truth_crop, pair.crop_origin_um), truth_raw, atol=1e-9
    )


def test_resampling_keeps_the_raw_tem_frame():
    """The preprocessed TEM is the raw TEM at another sampling, same origin: a spot at
    (x, y) um of the raw image is at (x, y) um of the resampled one (within 0.01 um)."""
    ppu, spot_um = 30.0, np.array([3.37, 5.81])
    rows, cols = np.indices((240, 240))
    xy = np.stack([cols + 0.5, rows + 0.5], -1) / ppu
    image = np.exp(-np.sum((xy - spot_um) ** 2, -1) / (2 * 0.3**2))
    out = resample(image, ppu, 14.52)
    r, c = np.indices(out.shape)
    centroid = np.array([np.sum(out * (c + 0.5)), np.sum(out * (r + 0.5))]) / out.sum() / 14.52
    np.testing.assert_allclose(centroid, spot_um, atol=0.01)


# ------------------------------------------------------------------------- the route


def test_consensus_is_the_answer_closest_to_the_others(answers):
    choice = choose(answers, "consensus")
    assert choice.route == "raw/mi" and choice.status == "ok"
    np.testing.assert_allclose(choice.matrix_um, CROP)
    assert choice.answers["hertzmann/ssd"].startswith("failed")  # every answer recorded


def test_named_route_keeps_its_status_or_is_downgraded_far_from_the_consensus(answers):
    near = choose(answers, "sparse/ssd")
    assert near.route == "sparse/ssd" and near.status.startswith("uncertain: weak match")
    far = choose(answers, "sparse/mi")  # ok by its own checks, 2 um from the consensus
    assert far.route == "sparse/mi"
    assert far.status == "uncertain: 2.00 um from the routes' consensus (raw/mi)"
    np.testing.assert_allclose(far.matrix_um, shifted(CROP, 2.0, 0.0))


@pytest.mark.parametrize(
    ("route", "words"),
    [
        ("hertzmann/ssd", "the requested route hertzmann/ssd failed"),
        ("hertzmann/mi", "the requested route hertzmann/mi failed"),  # failed with a matrix
        ("raw/wssd", "route raw/wssd is not a registration of this case"),
    ],
)
def test_named_route_without_a_usable_answer_fails(answers, route, words):
    choice = choose(answers, route)
    assert choice.status.startswith(f"failed: {words}") and choice.matrix_um is None


def test_consensus_with_every_route_failed_fails():
    results = registrations(
        raw__ssd=("failed: no better than chance", None),
        raw__mi=("failed: no better than chance", shifted(CROP, 1.0, 0.0)),
    )
    choice = choose(results, "consensus")
    usable = "no registration of this case is usable (raw/ssd failed, raw/mi failed)"
    assert choice.status == f"failed: {usable}"
    assert choice.route is None and choice.matrix_um is None


def test_consensus_of_fewer_than_three_answers_takes_the_first_ok():
    results = registrations(
        raw__ssd=("uncertain: weak match", shifted(CROP, 0.3, 0.0)),
        raw__mi=("ok", CROP),
        hertzmann__mi=("failed: no better than chance", None),
    )
    choice = choose(results, "consensus")
    assert choice.route == "raw/mi" and choice.status == "ok" and "needs 3" in choice.how


def fiducial_records(**statuses: str) -> dict:
    """Fiducial transform records: a matrix unless the status is failed."""
    return {
        m: {"matrix": None if s.startswith("failed") else RAW.tolist(), "status": s}
        for m, s in statuses.items()
    }


@pytest.mark.parametrize(
    ("statuses", "method", "chosen", "status"),
    [
        ({"algorithm1": "ok", "robust": "ok", "gaussian_baseline": "ok"}, "auto", "robust", "ok"),
        (
            {"algorithm1": "ok", "robust": "failed: NFA 3", "gaussian_baseline": "ok"},
            "auto",
            "algorithm1",
            "ok",
        ),
        (
            {"algorithm1": "failed: x", "robust": "uncertain: NFA 0.1", "gaussian_baseline": "ok"},
            "auto",
            "gaussian_baseline",
            "ok",
        ),
        (
            {"algorithm1": "ok", "robust": "ok", "gaussian_baseline": "uncertain: NFA 0.1"},
            "gaussian_baseline",
            "gaussian_baseline",
            "uncertain: NFA 0.1",
        ),
    ],
)
def test_fiducial_method_choice(statuses, method, chosen, status):
    choice = ex.choose_fiducial_answer(fiducial_records(**statuses), method)
    assert choice.route == chosen and choice.status == status
    np.testing.assert_allclose(choice.matrix_um, RAW)


@pytest.mark.parametrize("method", ["auto", "algorithm1"])
def test_fiducial_without_a_usable_method_fails(method):
    records = fiducial_records(algorithm1="failed: implausible", robust="failed: NFA 2")
    choice = ex.choose_fiducial_answer(records, method)
    assert choice.status.startswith("failed: ") and choice.matrix_um is None


# ------------------------------------------------------------------------ residuals


def test_residuals_and_leave_one_out_residuals_by_hand():
    """Four landmarks; the LM of the fourth is the EM point moved by d = (0.3, -0.4).

    The transform adds (0.1, 0): residuals 0.1, 0.1, 0.1 and |(0.1, 0) - d| = sqrt(0.2).
    Leave-one-out: the affine of any three maps the left-out EM point exactly when the
    points are affinely dependent, x4 = sum(l_i x_i) with l = (-2.5, 1.5, 2) (barycentric
    coordinates of (3, 2) in the triangle (0, 0), (2, 0), (0, 1)); leaving out i leaves a
    residual |d| / |l_i| (|d| / 1 for the fourth): 0.2, 1/3, 0.25, 0.5 um.
    """
    em = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0], [3.0, 2.0]])
    lm = em + np.array([[0, 0], [0, 0], [0, 0], [0.3, -0.4]])
    table = pd.DataFrame(
        {
            "name": list("abcd"),
            "em_x_um": em[:, 0],
            "em_y_um": em[:, 1],
            "lm_x_um": lm[:, 0],
            "lm_y_um": lm[:, 1],
        }
    )
    got = ex.residual_table(table, translation_matrix(0.1, 0.0))
    assert list(got.columns) == ex.RESIDUAL_COLUMNS
    assert all(c == "name" or c.endswith("_um") for c in got.columns)  # units in the names
    np.testing.assert_allclose(got["residual_um"], [0.1, 0.1, 0.1, np.sqrt(0.2)], atol=1e-12)
    np.testing.assert_allclose(got["loo_affine_residual_um"], [0.2, 1 / 3, 0.25, 0.5], atol=1e-12)
    np.testing.assert_allclose(got[["mapped_lm_x_um", "mapped_lm_y_um"]], em + [0.1, 0.0])
    # three landmarks: the others (two) fix no affine; collinear others neither
    assert np.isnan(ex.loo_affine_residuals_um(em[:3], lm[:3])).all()
    line = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    assert np.isnan(ex.loo_affine_residuals_um(line, line)[3])


# ---------------------------------------------------------------------- a whole case


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> dict:
    """Raw files of a case with a known transform: the LM (RGB, green = a texture) and the
    EM that shows the same texture through RAW, 8 landmark pairs (0.02 um noise)."""
    folder = tmp_path_factory.mktemp("case")
    green = texture(1, LM_SHAPE)
    lm = np.stack([texture(2, LM_SHAPE), green, texture(3, LM_SHAPE)], -1)
    lm8 = (lm * 255).round().astype(np.uint8)
    em = warp_image(lm8[..., 1] / 255.0, LM_PPU, np.linalg.inv(RAW), EM_SHAPE, EM_PPU, order=3)
    write_tiff(folder / "lm.tif", lm8, LM_PPU)
    write_tiff(folder / "em.tif", np.clip(em, 0, 1).astype(np.float32), EM_PPU)
    rng = np.random.default_rng(4)
    em_xy = rng.uniform(0.5, 7.5, (8, 2))
    lm_xy = apply(RAW, em_xy) + rng.normal(0, 0.02, em_xy.shape)
    table = pd.DataFrame(
        {
            "name": [f"P{i}" for i in range(8)],
            "em_x_um": em_xy[:, 0],
            "em_y_um": em_xy[:, 1],
            "lm_x_um": lm_xy[:, 0],
            "lm_y_um": lm_xy[:, 1],
        }
    )
    write_landmarks(folder / "landmarks.csv", table)
    files = (str(folder / n) for n in ("em.tif", "lm.tif", "landmarks.csv"))
    record = Case("c1", "analogy", *files).as_dict()
    return {"folder": folder, "case": record, "pair": ex.raw_pair(record)}


@pytest.fixture(scope="module")
def exported(case) -> tuple[Path, dict]:
    """The consensus export of the case (raw/mi = CROP, the crop of CROP_ORIGIN_UM)."""
    results = registrations(
        raw__ssd=("ok", shifted(CROP, 0.01, 0.0)),
        raw__mi=("ok", CROP),
        sparse__ssd=("ok", shifted(CROP, 0.0, 0.02)),
    )
    frame = {"em_shape": list(EM_SHAPE), "em_px_per_um": EM_PPU}
    choice = ex.choose_answer("analogy", results, frame, {"route": "consensus"})
    out = case["folder"] / "export"
    record = ex.export_case(out, "c1", "analogy", choice, CROP_ORIGIN_UM, case["pair"])
    return out, record


def test_raw_pair_reads_the_analysis_channel_and_pixel_sizes(case):
    pair = case["pair"]
    assert pair.em_px_per_um == pytest.approx(EM_PPU) and pair.lm_px_per_um == pytest.approx(LM_PPU)
    assert pair.em_shape == EM_SHAPE and pair.lm_shape == LM_SHAPE and pair.lm.dtype == np.float32
    lm8, _ = read_image(case["folder"] / "lm.tif")
    np.testing.assert_array_equal(pair.lm, lm8[..., 1] / np.float32(255))


def test_export_json_states_both_frames_both_directions_status_and_route(exported):
    out, record = exported
    written = read_json(out / "transform.json")
    assert written["status"] == "ok" and written["route"]["chosen"] == "raw/mi"
    assert written["route"]["requested"] == "consensus"
    np.testing.assert_allclose(written["matrix"], RAW, atol=1e-12)  # raw EM um -> raw LM um
    np.testing.assert_allclose(written["lm_to_em"]["matrix"], np.linalg.inv(RAW), atol=1e-12)
    np.testing.assert_allclose(written["working_frames"]["matrix"], CROP, atol=1e-12)
    assert written["working_frames"]["lm_crop_origin_um"] == list(CROP_ORIGIN_UM)
    assert written["direction"] == "moving_to_fixed" and written["units"] == "um"
    assert written["lm_to_em"]["direction"] == "fixed_to_moving"
    assert "raw EM" in written["frames"]["em"] and "raw LM" in written["frames"]["lm"]
    assert written["extra"]["moving_px_per_um"] == EM_PPU
    assert set(written["files"]) == set(ex.EXCHANGE_FILES)
    assert sorted(p.name for p in out.iterdir()) == sorted([*ex.EXCHANGE_FILES, "transform.json"])
    # a clemalign transform file: the command line's reader takes it
    np.testing.assert_allclose(Transform.load(out / "transform.json").matrix, RAW, atol=1e-12)


def test_em_on_lm_lands_on_the_lm_image(case, exported):
    out, _ = exported
    image, ppu = read_image(out / "em_on_lm.tif")
    assert ppu == pytest.approx(LM_PPU) and image.shape == LM_SHAPE and image.dtype == np.float32
    overlap = np.isfinite(image)
    assert 0.1 < overlap.mean() < 0.9  # the EM field covers part of the LM field
    lm = case["pair"].lm
    assert np.mean(np.abs(image[overlap] - lm[overlap])) < MAD_BOUND
    # the identity instead of RAW would land elsewhere: the bound is not trivially met
    wrong = warp_image(case["pair"].em, EM_PPU, np.eye(3), LM_SHAPE, LM_PPU)
    inside = np.isfinite(wrong)
    assert np.mean(np.abs(wrong[inside] - lm[inside])) > 5 * MAD_BOUND


def test_lm_on_em_lands_on_the_em_image(case, exported):
    out, _ = exported
    image, ppu = read_image(out / "lm_on_em.tif")
    assert ppu == pytest.approx(EM_PPU) and image.shape == EM_SHAPE
    overlap = np.isfinite(image)
    assert overlap.mean() > 0.99  # the EM field lies inside the LM field
    assert np.mean(np.abs(image[overlap] - case["pair"].em[overlap])) < MAD_BOUND


def test_exchange_files_read_back_as_the_raw_transform(case, exported):
    out, _ = exported
    np.testing.assert_allclose(read_itk_transform(out / "transform.tfm", EM_PPU, LM_PPU), RAW)
    np.testing.assert_allclose(read_ecclem_transform(out / "ecclem.xml"), RAW)
    back = read_bigwarp_landmarks(out / "bigwarp_landmarks.csv", EM_PPU, LM_PPU)
    landmarks = case["pair"].landmarks
    columns = ["em_x_um", "em_y_um", "lm_x_um", "lm_y_um"]
    np.testing.assert_allclose(back[columns].to_numpy(), landmarks[columns].to_numpy(), atol=1e-9)
    residuals = pd.read_csv(out / "residuals.csv")
    em_xy, lm_xy = landmark_points(landmarks)
    np.testing.assert_allclose(
        residuals["residual_um"], np.hypot(*(apply(RAW, em_xy) - lm_xy).T), atol=2e-6
    )
    assert residuals["loo_affine_residual_um"].max() < 0.1  # 0.02 um noise, exact affine


def test_itk_file_maps_points_as_ours_in_simpleitk(exported):
    """SimpleITK maps an LM point (ITK origin 0: pixel i centred at i / p um) to the EM
    point our inverse gives, with each image's half pixel."""
    sitk = pytest.importorskip("SimpleITK")
    out, _ = exported
    tx = sitk.ReadTransform(str(out / "transform.tfm"))
    lm_itk = np.random.default_rng(0).uniform(0, 20, (20, 2))
    got = np.array([tx.TransformPoint(tuple(map(float, p))) for p in lm_itk])
    expected = apply(np.linalg.inv(RAW), lm_itk + 0.5 / LM_PPU) - 0.5 / EM_PPU
    np.testing.assert_allclose(got, expected, atol=1e-9)
    # and an EM pixel centre, mapped by us, is found by ITK's image geometry
    em_img, lm_img = sitk.Image(*EM_SHAPE[::-1], sitk.sitkUInt8), sitk.Image(*LM_SHAPE[::-1], 1)
    em_img.SetSpacing((1 / EM_PPU, 1 / EM_PPU))
    lm_img.SetSpacing((1 / LM_PPU, 1 / LM_PPU))
    em_col_row = np.array([37.0, 101.0])
    lm_index = apply(RAW, (em_col_row + 0.5) / EM_PPU)[0] * LM_PPU - 0.5
    lm_phys = lm_img.TransformContinuousIndexToPhysicalPoint(tuple(map(float, lm_index)))
    em_index = em_img.TransformPhysicalPointToContinuousIndex(tx.TransformPoint(lm_phys))
    np.testing.assert_allclose(em_index, em_col_row, atol=1e-9)


def test_simpleitk_resamples_the_em_onto_the_lm_with_the_itk_file(case, exported):
    """SimpleITK's own resampling through transform.tfm lands the EM on the LM image."""
    sitk = pytest.importorskip("SimpleITK")
    out, _ = exported
    moving = sitk.GetImageFromArray(case["pair"].em)
    moving.SetSpacing((1 / EM_PPU, 1 / EM_PPU))
    grid = sitk.Image(LM_SHAPE[1], LM_SHAPE[0], sitk.sitkFloat32)
    grid.SetSpacing((1 / LM_PPU, 1 / LM_PPU))
    tx = sitk.ReadTransform(str(out / "transform.tfm"))
    image = sitk.GetArrayFromImage(sitk.Resample(moving, grid, tx, sitk.sitkLinear, np.nan))
    overlap = np.isfinite(image)
    assert overlap.mean() > 0.1
    assert np.mean(np.abs(image[overlap] - case["pair"].lm[overlap])) < MAD_BOUND


def test_failed_case_writes_the_json_only_and_removes_stale_files(case, tmp_path):
    out = tmp_path / "export"
    results = registrations(raw__ssd=("ok", CROP), raw__mi=("ok", CROP), sparse__mi=("ok", CROP))
    good = choose(results, "consensus")
    ex.export_case(out, "c1", "analogy", good, CROP_ORIGIN_UM, case["pair"], images=False)
    assert (out / "transform.tfm").exists()
    bad = choose(results, "hertzmann/mi")
    record = ex.export_case(out, "c1", "analogy", bad, CROP_ORIGIN_UM, case["pair"])
    assert [p.name for p in out.iterdir()] == ["transform.json"]
    written = read_json(out / "transform.json")
    assert written == record and written["matrix"] is None and written["files"] == {}
    assert written["status"].startswith("failed: route hertzmann/mi is not a registration")
    assert written["route"]["chosen"] is None and written["route"]["requested"] == "hertzmann/mi"


def test_fiducial_answer_is_already_in_the_raw_frames(case, tmp_path):
    records = fiducial_records(algorithm1="ok", robust="ok", gaussian_baseline="ok")
    choice = ex.choose_answer("fiducial", records, {}, {"fiducial_method": "auto"})
    record = ex.export_case(tmp_path, "c1", "fiducial", choice, (0.0, 0.0), case["pair"], 1, False)
    np.testing.assert_allclose(record["matrix"], RAW, atol=1e-12)
    assert record["route"]["chosen"] == "robust" and "em_on_lm.tif" not in record["files"]


def test_case_without_landmarks_gives_bigwarp_a_grid_of_the_transform(case, tmp_path):
    pair = copy.copy(case["pair"])
    pair.landmarks = pair.landmarks.iloc[:0]
    choice = ex.choose_fiducial_answer(fiducial_records(robust="ok"))
    record = ex.export_case(tmp_path, "c1", "fiducial", choice, (0.0, 0.0), pair, images=False)
    assert (
        record["bigwarp_points"].startswith("3 x 3 grid") and "residuals.csv" not in record["files"]
    )
    grid = read_bigwarp_landmarks(tmp_path / "bigwarp_landmarks.csv", EM_PPU, LM_PPU)
    em_xy, lm_xy = landmark_points(grid)
    np.testing.assert_allclose(apply(RAW, em_xy), lm_xy, atol=1e-9)


def test_strips_give_the_whole_warp(case):
    em = case["pair"].em
    whole = warp_image(em, EM_PPU, RAW, LM_SHAPE, LM_PPU)
    strips = ex.warp_to_grid(em, EM_PPU, RAW, LM_SHAPE, LM_PPU, max_pixels=1000)
    np.testing.assert_allclose(strips, whole, atol=1e-5, equal_nan=True)


# ---------------------------------------------------------------------------- config


def test_export_config_is_declared_and_checked():
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    schema = str(REPO / "workflow" / "schemas" / "config.schema.yaml")
    assert config["export"] == {
        "route": "consensus",
        "fiducial_method": "auto",
        "images": True,
        "interpolation_order": 1,
        "nonrigid": True,
    }
    validate(copy.deepcopy(config), schema)
    for key, value in (("route", "raw/xyz"), ("fiducial_method", "ransac"), ("rout", "raw/mi")):
        bad = copy.deepcopy(config)
        bad["export"][key] = value
        with pytest.raises(WorkflowError):
            validate(bad, schema)
    named = copy.deepcopy(config)
    named["export"]["route"] = "sparse_denoised/wssd"
    validate(named, schema)
