"""The ``clemalign`` command line (clemalign.cli) on small phantom files: each command gives
what the library gives on the same input, the exit codes hold, bad input is named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
from scipy import ndimage

from clemalign import cli
from clemalign.confidence import ConfidenceLimits
from clemalign.formats import (
    read_bigwarp_landmarks,
    read_ecclem_transform,
    read_itk_transform,
)
from clemalign.io import (
    landmark_points,
    read_image,
    read_json,
    read_landmarks,
    write_landmarks,
    write_tiff,
)
from clemalign.metrics import landmark_errors_um, mae_std
from clemalign.phantom import make_analogy_case, make_fiducial_case
from clemalign.preprocess import resample, to_unit_float
from clemalign.register import grid_error_um, register_affine
from clemalign.search import SearchRange
from clemalign.sparse_analogy import JointDictionary, predict_confocal
from clemalign.transforms import (
    DeformationField,
    Transform,
    affine_matrix,
    apply,
    fit_affine,
    fit_similarity,
    warp_image,
)

REPO = Path(__file__).resolve().parents[1]
PPU = 10.0  # px/um of the register pair (100 nm pixels)
MOVING_SHAPE = (100, 100)  # 10 x 10 um
FIXED_SHAPE = (160, 160)  # 16 x 16 um
#: Bound on the recovered affine: mean distance over the moving grid to the truth, um
#: (0.1 px; measured 0.0003 um).
RECOVERY_UM = 0.01


def texture(seed: int, shape: tuple[int, int]) -> np.ndarray:
    """Smooth random field in [0, 1] (as tests/test_register.py)."""
    rng = np.random.default_rng(seed)
    field = sum(ndimage.gaussian_filter(rng.standard_normal(shape), s) * s for s in (1.5, 3.0, 6.0))
    return (field - field.min()) / (field.max() - field.min())


def as_uint16(image: np.ndarray) -> np.ndarray:
    """16-bit grey levels: read back, they are exactly to_unit_float's values."""
    return (np.clip(image, 0.0, 1.0) * 65535).round().astype(np.uint16)


def run(args: list, capsys) -> tuple[int, str, str]:
    """``clemalign.cli.main`` on string arguments: (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict:
    """A fixed texture (16 um) and the moving field (10 um) it shows through a known
    affine (rotation 4 deg, scale 1.04 / 0.97, shear 0.03), a start 4 px off it, an
    unrelated noise image, landmark pairs with 0.05 um of click noise."""
    folder = tmp_path_factory.mktemp("pair")
    fixed = texture(0, FIXED_SHAPE)
    truth = affine_matrix(4.0, (1.04, 0.97), 0.03, (3.4, 2.7), center_um=(5.0, 5.0))
    moving = warp_image(fixed, PPU, np.linalg.inv(truth), MOVING_SHAPE, PPU, order=3)
    files = {name: folder / f"{name}.tif" for name in ("fixed", "moving", "noise")}
    write_tiff(files["fixed"], as_uint16(fixed), PPU)
    write_tiff(files["moving"], as_uint16(moving), PPU)
    write_tiff(files["noise"], as_uint16(np.random.default_rng(5).random(MOVING_SHAPE)), PPU)
    start = affine_matrix(translation_um=(3.0, 3.0))
    Transform(start, "moving", "fixed", "offset").save(folder / "start.json")
    Transform(truth, "moving", "fixed", "truth").save(folder / "truth.json")
    rng = np.random.default_rng(3)
    em_xy = rng.uniform(1.0, 9.0, (8, 2))
    lm_xy = apply(truth, em_xy) + rng.normal(0.0, 0.05, em_xy.shape)
    table = pd.DataFrame(
        {
            "name": [f"P{i}" for i in range(len(em_xy))],
            "em_x_um": em_xy[:, 0],
            "em_y_um": em_xy[:, 1],
            "lm_x_um": lm_xy[:, 0],
            "lm_y_um": lm_xy[:, 1],
        }
    )
    write_landmarks(folder / "landmarks.csv", table)
    table = read_landmarks(folder / "landmarks.csv")  # as written: 6 decimals
    return {**files, "folder": folder, "truth": truth, "start": start, "landmarks": table}


@pytest.fixture(scope="module")
def registered(pair) -> dict:
    """``clemalign register`` from the start file, under MI (run once, checked below)."""
    out = pair["folder"] / "out"
    args = ["register", pair["fixed"], pair["moving"], "--start", pair["folder"] / "start.json"]
    code = cli.main([str(a) for a in [*args, "--px-per-um", PPU, "-o", out, "-q"]])
    return {"code": code, "out": out, "record": read_json(out / "transform.json")}


def test_defaults_are_the_workflow_config():
    """The command line runs with config.yaml's values (and the brief's search range)."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    assert cli.WORKING_PX_PER_UM == config["preprocess"]["px_per_um"]
    assert cli.LEVELS == config["registration"]["levels"]
    assert cli.BINS == config["registration"]["bins"]
    assert cli.SSD_CONTRAST_UM == config["registration"]["ssd_contrast_um"]
    assert cli.SEED == config["seed"]
    assert cli.GLOBAL_MIN_GAP == config["registration"]["global_search"]["min_gap"]
    assert cli.MARGIN_UM == config["preprocess"]["margin_um"]
    limits = config["registration"]["confidence"]
    assert ConfidenceLimits() == ConfidenceLimits.from_config(limits)
    search = SearchRange()
    assert search.rotation_deg == (-180.0, 180.0) and search.scale == (0.85, 1.15)
    assert search.mirror


def test_register_recovers_the_affine_as_register_affine_does(pair, registered):
    assert registered["code"] == cli.EXIT_OK
    record = registered["record"]
    assert record["status"] == "ok" and record["units"] == "um"
    matrix = Transform.from_dict(record).matrix
    assert grid_error_um(matrix, pair["truth"], MOVING_SHAPE, PPU) < RECOVERY_UM
    # the same call as the library's, on the same working images
    images = [to_unit_float(read_image(pair[k])[0]) for k in ("moving", "fixed")]
    moving, fixed = (resample(image, PPU, PPU) for image in images)
    direct = register_affine(
        moving,
        fixed,
        pair["start"],
        moving_px_per_um=PPU,
        fixed_px_per_um=PPU,
        measure="mi",
        levels=cli.LEVELS,
        bins=cli.BINS,
    )
    np.testing.assert_allclose(matrix, direct.matrix, rtol=0, atol=1e-12)
    assert record["extra"]["confidence"]["chance_z"] > ConfidenceLimits().uncertain_z


def test_register_writes_exchange_files_and_the_registered_image(pair, registered):
    out, matrix = registered["out"], np.asarray(registered["record"]["matrix"])
    np.testing.assert_allclose(read_itk_transform(out / "transform.tfm", PPU, PPU), matrix)
    np.testing.assert_allclose(read_ecclem_transform(out / "ecclem.xml"), matrix)
    assert not (out / "bigwarp_landmarks.csv").exists()  # no landmarks given
    image, ppu = read_image(out / "registered.tif")
    assert image.shape == FIXED_SHAPE and ppu == pytest.approx(PPU)
    fixed = to_unit_float(read_image(pair["fixed"])[0])
    inside = np.isfinite(image)
    assert inside.mean() > 0.3
    assert np.mean(np.abs(image[inside] - fixed[inside])) < 0.01


def test_register_from_landmarks_writes_them_for_bigwarp(pair, capsys):
    out = pair["folder"] / "out_landmarks"
    args = [
        "register",
        pair["fixed"],
        pair["moving"],
        "--landmarks",
        pair["folder"] / "landmarks.csv",
    ]
    code, stdout, _ = run([*args, "--px-per-um", PPU, "-o", out, "-q"], capsys)
    assert code == cli.EXIT_OK, stdout
    record = read_json(out / "transform.json")
    start = fit_similarity(*landmark_points(pair["landmarks"]))
    np.testing.assert_allclose(record["extra"]["start"]["matrix"], start)
    assert grid_error_um(np.asarray(record["matrix"]), pair["truth"], MOVING_SHAPE, PPU) < 0.01
    back = read_bigwarp_landmarks(out / "bigwarp_landmarks.csv", PPU, PPU)
    np.testing.assert_allclose(
        back[["em_x_um", "lm_y_um"]].to_numpy(), pair["landmarks"][["em_x_um", "lm_y_um"]]
    )
    assert "landmark MAE (registered)" in stdout


def test_register_nonrigid_writes_the_field(pair, capsys):
    out = pair["folder"] / "out_nonrigid"
    args = ["register", pair["fixed"], pair["moving"], "--start", pair["folder"] / "truth.json"]
    code, _, _ = run([*args, "--px-per-um", PPU, "--nonrigid", "-o", out, "-q"], capsys)
    assert code == cli.EXIT_OK
    field = DeformationField.from_dict(read_json(out / "deformation.json"))
    xy = np.random.default_rng(0).uniform(0.5, 9.5, (50, 2))
    # the texture moved by an affine only: the field stays within 0.05 um of the truth
    assert np.max(np.hypot(*(field.apply(xy) - apply(pair["truth"], xy)).T)) < 0.05
    image, ppu = read_image(out / "registered_nonrigid.tif")
    assert image.shape == FIXED_SHAPE and ppu == pytest.approx(PPU)


def test_register_without_start_runs_the_global_search(tmp_path, capsys):
    """A 12 um field rotated by 117 deg and scaled by 0.96 in a 30 um texture, at 4 px/um,
    found with no start (the search's default range)."""
    ppu = 4.0
    fixed = ndimage.gaussian_filter(np.random.default_rng(1).normal(size=(120, 120)), 2.0)
    fixed = (fixed - fixed.min()) / (fixed.max() - fixed.min())
    truth = affine_matrix(117.0, (0.96, 0.96), 0.0, (17.0, 12.0))
    moving = warp_image(fixed, ppu, np.linalg.inv(truth), (48, 48), ppu, order=3)
    write_tiff(tmp_path / "fixed.tif", as_uint16(fixed), ppu)
    write_tiff(tmp_path / "moving.tif", as_uint16(moving), ppu)
    args = ["register", tmp_path / "fixed.tif", tmp_path / "moving.tif", "--px-per-um", ppu]
    code, _, err = run([*args, "-o", tmp_path / "out"], capsys)
    assert code == cli.EXIT_OK
    assert "global search" in err  # the progress line of the long step
    record = read_json(tmp_path / "out" / "transform.json")
    assert record["extra"]["start"]["how"] == "global search"
    assert grid_error_um(np.asarray(record["matrix"]), truth, (48, 48), ppu) < 0.05


def test_a_field_found_twice_by_the_global_search_is_uncertain(tmp_path, capsys):
    """The fixed image holds the same 15 um texture twice, side by side: with no start the
    search cannot tell the two placements apart, and the answer says so instead of ok."""
    ppu = 4.0
    texture = ndimage.gaussian_filter(np.random.default_rng(5).normal(size=(120, 60)), 2.0)
    fixed = np.hstack([texture, texture])  # 30 x 30 um
    fixed = (fixed - fixed.min()) / (fixed.max() - fixed.min())
    moving = fixed[30:78, 6:54]  # 12 um, inside one copy
    write_tiff(tmp_path / "fixed.tif", as_uint16(fixed), ppu)
    write_tiff(tmp_path / "moving.tif", as_uint16(moving), ppu)
    args = ["register", tmp_path / "fixed.tif", tmp_path / "moving.tif", "--px-per-um", ppu]
    code, _, _ = run([*args, "-o", tmp_path / "out"], capsys)
    record = read_json(tmp_path / "out" / "transform.json")
    assert record["extra"]["start"]["how"] == "global search"
    assert record["extra"]["start"]["gap_to_runner_up"] < cli.GLOBAL_MIN_GAP
    assert (
        record["status"].startswith("uncertain: ")
        and "correlates nearly as well" in (record["status"])
    )
    assert code != cli.EXIT_OK


def test_unrelated_noise_is_not_ok_and_exits_1(pair, capsys):
    out = pair["folder"] / "out_noise"
    args = ["register", pair["fixed"], pair["noise"], "--start", pair["folder"] / "start.json"]
    code, stdout, err = run([*args, "--px-per-um", PPU, "-o", out, "-q"], capsys)
    assert code == cli.EXIT_NOT_OK
    record = read_json(out / "transform.json")
    assert record["status"] != "ok"
    assert record["status"] in err and record["status"] in stdout  # the reason is printed
    if record["status"].startswith("failed"):  # nothing usable is written
        assert record["matrix"] is None and not (out / "transform.tfm").exists()


def test_fiducials_register_a_small_bead_pair(tmp_path, capsys):
    view = {"px_nm": 20, "size_px": [300, 300], "rotation_deg": 14.0, "scale": [1.0, 1.0]}
    params = {"confocal_size_px": 256, "n_beads": 30, "views": [view | {"shear": 0.0}]}
    case = make_fiducial_case(3, 0, params)
    write_tiff(tmp_path / "sem.tif", case.em, case.em_px_per_um)
    write_tiff(tmp_path / "lm.tif", case.lm, case.lm_px_per_um)
    out = tmp_path / "out"
    code, stdout, _ = run(
        ["fiducials", tmp_path / "lm.tif", tmp_path / "sem.tif", "--bead-nm", 100, "-o", out],
        capsys,
    )
    assert code == cli.EXIT_OK, stdout
    truth = Transform.from_dict(case.ground_truth["transform"]).matrix
    for method in ("algorithm1", "gaussian_baseline", "robust"):
        record = read_json(out / f"{method}_transform.json")
        assert record["status"] == "ok", (method, record["status"])
        assert method in stdout
    summary = read_json(out / "summary.json")
    assert summary["methods"]["algorithm1"]["n_matched"] >= 4
    chosen = read_json(out / "transform.json")
    assert chosen["extra"]["fiducial_method"] == "algorithm1"
    assert (
        grid_error_um(np.asarray(chosen["matrix"]), truth, case.em.shape, case.em_px_per_um) < 0.02
    )


@pytest.mark.parametrize(
    ("content", "problem"), [(None, "does not exist"), (b"not a tiff", "cannot read")]
)
def test_missing_or_unreadable_file_exits_2_naming_it(pair, tmp_path, capsys, content, problem):
    bad = tmp_path / "bad.tif"
    if content is not None:
        bad.write_bytes(content)
    code, _, err = run(["register", pair["fixed"], bad, "-o", tmp_path / "x"], capsys)
    assert code == cli.EXIT_BAD_INPUT
    assert str(bad) in err and problem in err and "Traceback" not in err


def test_missing_pixel_size_exits_2_naming_the_file_and_the_option(pair, tmp_path, capsys):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, as_uint16(texture(2, MOVING_SHAPE)))  # no calibration
    assert read_image(plain)[1] is None
    code, _, err = run(["register", pair["fixed"], plain, "-o", tmp_path / "x"], capsys)
    assert code == cli.EXIT_BAD_INPUT
    assert str(plain) in err and "--moving-px-per-um" in err


def test_module_entry_point_exit_code_and_message(pair, tmp_path):
    missing = tmp_path / "nope.tif"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "clemalign.cli",
            "warp",
            pair["folder"] / "truth.json",
            missing,
            pair["fixed"],
            "-o",
            tmp_path / "w.tif",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == cli.EXIT_BAD_INPUT
    assert str(missing) in done.stderr and "Traceback" not in done.stderr


def test_export_itk_reads_back_the_same_matrix(pair, tmp_path, capsys):
    transform = pair["folder"] / "truth.json"
    images = ["--moving", pair["moving"], "--fixed", pair["fixed"]]
    for fmt, name in (("itk", "t.tfm"), ("ecclem", "t.xml"), ("bigwarp", "t.csv")):
        code, _, err = run(
            ["export", transform, "--to", fmt, "-o", tmp_path / name, *images], capsys
        )
        assert code == cli.EXIT_OK, err
    np.testing.assert_allclose(read_itk_transform(tmp_path / "t.tfm", PPU, PPU), pair["truth"])
    np.testing.assert_allclose(read_ecclem_transform(tmp_path / "t.xml"), pair["truth"])
    grid = read_bigwarp_landmarks(tmp_path / "t.csv", PPU, PPU)
    np.testing.assert_allclose(fit_affine(*landmark_points(grid)), pair["truth"], atol=1e-9)
    # without pixel sizes, an ITK file cannot be written: bad input, and what is missing
    code, _, err = run(["export", transform, "--to", "itk", "-o", tmp_path / "u.tfm"], capsys)
    assert code == cli.EXIT_BAD_INPUT and "moving_px_per_um" in err


def test_warp_lands_on_the_fixed_image(pair, tmp_path, capsys):
    output = tmp_path / "warped.tif"
    args = ["warp", pair["folder"] / "truth.json", pair["moving"], pair["fixed"], "-o", output]
    code, _, _ = run(args, capsys)
    assert code == cli.EXIT_OK
    image, ppu = read_image(output)
    assert image.shape == FIXED_SHAPE and ppu == pytest.approx(PPU)
    fixed = to_unit_float(read_image(pair["fixed"])[0])
    overlap = np.isfinite(image)
    assert overlap.sum() > 0.3 * overlap.size
    # mean absolute difference on the overlap, intensities in [0, 1] (measured 0.002)
    assert np.mean(np.abs(image[overlap] - fixed[overlap])) < 0.01


def test_evaluate_gives_the_metrics_numbers(pair, capsys):
    args = ["evaluate", pair["folder"] / "start.json", pair["folder"] / "landmarks.csv"]
    code, stdout, _ = run([*args, "--json"], capsys)
    assert code == cli.EXIT_OK
    got = json.loads(stdout)
    errors = landmark_errors_um(pair["start"], *landmark_points(pair["landmarks"]))
    mae, std = mae_std(errors)
    assert got["n"] == len(errors)
    assert got["mae_um"] == pytest.approx(mae, rel=1e-12)
    assert got["std_um"] == pytest.approx(std, rel=1e-12)
    assert got["max_um"] == pytest.approx(errors.max(), rel=1e-12)
    np.testing.assert_allclose([e["error_um"] for e in got["errors"]], errors, rtol=1e-12)
    code, table, _ = run(args, capsys)
    assert code == cli.EXIT_OK and f"MAE {mae:.3f} um" in table and "P0" in table


def test_help_states_the_units(capsys):
    for command, units in (("register", ("px/um", "um")), ("fiducials", ("nm", "px/um"))):
        code, stdout, _ = run([command, "--help"], capsys)
        assert code == cli.EXIT_OK
        assert all(unit in stdout for unit in units) and "exit codes" in stdout


def test_learn_and_predict_call_the_sparse_analogy(tmp_path, capsys):
    """A small dictionary from one phantom pair, the prediction of a TEM with it: the same
    image as predict_confocal gives on the same working TEM."""
    small = {"model": "simple", "tem_px_per_um": 20.0, "tem_field_um": [6.0, 6.0]}
    case = make_analogy_case(2012, 0, small | {"confocal_field_um": [14.0, 14.0]})
    files = [tmp_path / name for name in ("tem.tif", "confocal.tif", "landmarks.csv")]
    write_tiff(files[0], case.em, case.em_px_per_um)
    write_tiff(files[1], case.lm, case.lm_px_per_um)
    write_landmarks(files[2], case.landmarks)
    sizes = ["--patch-size", 7, "--patches", 500, "--atoms", 16, "--lambda", 0.05]
    dictionary = tmp_path / "dictionary.npz"
    args = ["learn", "--pair", *files, "--px-per-um", 8, *sizes, "--max-iter", 5]
    code, _, err = run([*args, "-o", dictionary], capsys)
    assert code == cli.EXIT_OK, err
    learned = JointDictionary.load(dictionary)
    assert learned.D1.shape == (49, 16) and learned.params["px_per_um"] == 8
    code, _, err = run(["predict", dictionary, files[0], "--lambda", 0.05, "-o", tmp_path], capsys)
    assert code == cli.EXIT_OK, err
    predicted, ppu = read_image(tmp_path / "predicted.tif")
    tem = resample(to_unit_float(case.em), case.em_px_per_um, 8.0)
    assert ppu == pytest.approx(8.0) and predicted.shape == tem.shape
    direct = predict_confocal(tem, learned, lam=0.05, gamma=0.01)
    np.testing.assert_allclose(predicted, direct.confocal, atol=1e-6)


def test_register_searches_about_a_rough_start(pair, tmp_path, capsys):
    """A start 12 deg, 8 % and 1.5 um off: --search-start comes back to the truth."""
    rough = pair["truth"] @ affine_matrix(12.0, (1.08, 1.08), 0.0, (1.0, -1.1), center_um=(5, 5))
    Transform(rough, "moving", "fixed", "rough").save(tmp_path / "rough.json")
    assert grid_error_um(rough, pair["truth"], MOVING_SHAPE, PPU) > 1.0
    args = ["register", pair["fixed"], pair["moving"], "--start", tmp_path / "rough.json"]
    code, _, _ = run(
        [*args, "--search-start", "--px-per-um", PPU, "-o", tmp_path / "o", "-q"], capsys
    )
    record = read_json(tmp_path / "o" / "transform.json")
    assert code == cli.EXIT_OK, record["status"]
    matrix = Transform.from_dict(record).matrix
    assert grid_error_um(matrix, pair["truth"], MOVING_SHAPE, PPU) < RECOVERY_UM
