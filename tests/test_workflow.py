"""The Snakemake workflow, run for real in temporary folders."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from workflow_helpers import REPO, TINY, most_jobs_at_once, snakemake

from clemalign.io import read_image, read_json, write_landmarks, write_tiff
from clemalign.phantom import make_analogy_case, make_fiducial_case


def _expected(case: str, track: str) -> list[str]:
    files = [f"data/{case}/{f}" for f in ("em.tif", "lm.tif", "landmarks.csv", "ground_truth.json")]
    files += [
        f"preprocessed/{case}/{f}" for f in ("em.tif", "lm.tif", "landmarks.csv", "frame.json")
    ]
    if track == "analogy":
        files.append(f"preprocessed/{case}/start_transform.json")
    files.append(f"figures/cases/{case}.png")
    files.append(f"checks/{case}.json")
    files += [
        f"export/{case}/{f}"
        for f in ("transform.json", "transform.tfm", "ecclem.xml", "bigwarp_landmarks.csv")
    ]
    files += [f"export/{case}/{f}" for f in ("em_on_lm.tif", "lm_on_em.tif", "residuals.csv")]
    files.append(f"figures/residuals/{case}.png")
    rules = [f"phantom_{track}", "preprocess", "figure_case", "check_case", "export"]
    if track == "fiducial":
        files += [f"fiducials/{case}/{f}" for f in ("summary.json", "pairs.csv")]
        files += [
            f"fiducials/{case}/{m}_transform.json"
            for m in ("algorithm1", "gaussian_baseline", "robust")
        ]
        files.append(f"figures/fiducials/{case}.png")
        rules.append("register_fiducials")
    for rule in rules:
        files += [f"logs/{rule}/{case}.log", f"benchmarks/{rule}/{case}.tsv"]
    return files


TABLES = [f"tables/table1_fiducials{sfx}" for sfx in ("_long.csv", ".csv", ".md", ".tex")]
TABLES.append("tables/prediction_quality.csv")
TABLES += [f"tables/table2_registration{sfx}" for sfx in ("_long.csv", ".csv", ".md", ".tex")]
TABLES += [
    "tables/capture_range.csv",
    "tables/capture_range_trials.csv",
    "tables/global_search.csv",
]
TABLES += [f"tables/nonrigid{sfx}" for sfx in (".csv", ".md", ".tex")]
TABLES += ["figures/table2_errors.png", "figures/capture_range.png"]
SOURCES = ("sparse", "sparse_denoised", "hertzmann", "raw")
CAPTURED = ("sparse", "hertzmann", "raw")  # registration.capture_range.sources
ANALOGY = [
    f"analogy/{case}/{f}"
    for case in ("tem01", "tem02")
    for f in (
        "sparse_predicted.tif",
        "sparse_tem_denoised.tif",
        "sparse_decoupled.tif",
        "sparse_uncertainty.tif",
        "confocal_denoised.tif",
        "sparse_prediction.json",
        "hertzmann_predicted.tif",
        "hertzmann_source.npz",
        "hertzmann_prediction.json",
    )
]
# with one training case each, tem01's training set is tem02 and tem02's is tem01
ANALOGY += [f"analogy/dictionaries/{t}.npz" for t in ("tem01", "tem02")]
ANALOGY += [
    f"figures/{kind}/{case}.png"
    for kind in ("dictionaries", "analogy", "registration")
    for case in ("tem01", "tem02")
]
ANALOGY += [
    f"registration/{case}/{f}"
    for case in ("tem01", "tem02")
    for f in (
        [f"{s}.json" for s in SOURCES]
        + [f"capture_{s}.csv" for s in CAPTURED]
        + ["errors.csv", "global.json"]
    )
]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny config run twice, in two folders, on 2 cores (a) and 1 core (b): the two
    results folders."""
    root = tmp_path_factory.mktemp("tiny")
    runs = []
    for name, cores in (("a", "2"), ("b", "1")):
        # the refined route is exported, so its non-rigid files are written too
        config = TINY + "export: {route: raw/mi}\n"
        result = snakemake(root / name, "--cores", cores, config=config)
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append(root / name / "out")
    return runs[0], runs[1]


@pytest.mark.workflow
def test_tiny_run_produces_every_output_deterministically(tiny_runs):
    a, b = tiny_runs
    for out in (a, b):
        expected = _expected("tem01", "analogy") + _expected("sem01", "fiducial") + TABLES
        for rel in expected + ANALOGY:
            assert (out / rel).is_file(), f"missing {rel}"
    em, ppu = read_image(a / "preprocessed/tem01/em.tif")
    assert ppu == pytest.approx(14.52)
    assert em.shape == (round(8.0 * 14.52),) * 2
    lm, ppu = read_image(a / "preprocessed/tem01/lm.tif")
    assert ppu == pytest.approx(14.52) and lm.dtype == np.float32
    start = read_json(a / "preprocessed/tem01/start_transform.json")
    assert start["units"] == "um" and start["direction"] == "moving_to_fixed"
    long = pd.read_csv(a / "tables/table1_fiducials_long.csv")
    assert list(long.columns) == ["case", "method", "mae_nm", "std_nm", "n_matched", "status"]
    assert set(long["method"]) == {"algorithm1", "gaussian_baseline", "robust"}
    quality = pd.read_csv(a / "tables/prediction_quality.csv")
    assert list(quality.columns[:4]) == ["case", "predictor", "pearson_r", "nmi"]
    assert set(quality["predictor"]) == {"sparse", "sparse_decoupled", "hertzmann", "inverted_tem"}
    table2 = pd.read_csv(a / "tables/table2_registration_long.csv")
    assert list(table2.columns) == [
        "case",
        "source",
        "measure",
        "mae_um",
        "std_um",
        "status",
        "gt_mean_um",
    ]
    assert set(zip(table2["source"], table2["measure"], strict=True)) == {
        ("sparse", "ssd"),
        ("sparse", "mi"),
        ("sparse", "wssd"),
        ("sparse_denoised", "ssd"),
        ("sparse_denoised", "mi"),
        ("sparse_denoised", "wssd"),
        ("hertzmann", "ssd"),
        ("hertzmann", "mi"),
        ("raw", "ssd"),
        ("raw", "mi"),
        ("raw", "mi+bspline"),  # registration.nonrigid.routes
        ("landmark", "fit"),
    }
    assert len(table2) == 24 and table2["status"].str.fullmatch(r"ok|(uncertain|failed): .+").all()
    assert (table2.loc[table2["source"] == "landmark", "status"] == "ok").all()
    assert table2["gt_mean_um"].notna().all()
    refined = pd.read_csv(a / "tables/nonrigid.csv", index_col=0)
    assert list(refined.index) == ["tem01 raw/mi", "tem02 raw/mi"]
    exported = read_json(a / "export/tem01/transform.json")
    assert exported["route"]["chosen"] == "raw/mi"
    if exported["nonrigid"]["written"]:  # unless the refinement failed, with its reason
        for name in ("deformation.json", "displacement_itk.mha", "em_on_lm_nonrigid.tif"):
            assert name in exported["files"] and (a / "export/tem01" / name).is_file()
    else:
        assert exported["nonrigid"]["status"].startswith("failed: ")
    capture = pd.read_csv(a / "tables/capture_range.csv")
    assert list(capture.columns[:7]) == [
        "protocol",
        "case",
        "source",
        "measure",
        "trials",
        "success_rate",
        "median_um",
    ]
    # 2 cases x 2 protocols x (sparse: 3 measures, hertzmann and raw: 2); no sparse_denoised
    assert len(capture) == 28 and set(capture["protocol"]) == {"standard", "wide"}
    assert set(capture["source"]) == set(CAPTURED)
    no_start = pd.read_csv(a / "tables/global_search.csv")  # raw/mi refined: B-spline too
    assert {"bspline_gt_mean_um", "bspline_mae_um", "bspline_status"} <= set(no_start.columns)
    assert (capture.loc[capture["protocol"] == "wide", "trials"] == 1).all()
    assert (capture.loc[capture["protocol"] == "standard", "trials"] == 2).all()
    # Same config and seed, other folder, 1 core instead of 2: identical data, images
    # and tables (every table file).
    tables = sorted(p.relative_to(a).as_posix() for p in (a / "tables").iterdir())
    assert len(tables) >= 11
    for rel in (
        *tables,
        "tables/prediction_quality.csv",
        "tables/table2_registration_long.csv",
        "tables/capture_range_trials.csv",
        "analogy/tem01/sparse_predicted.tif",
        "analogy/tem01/hertzmann_predicted.tif",
        "tables/table1_fiducials_long.csv",
        "tables/table1_fiducials.tex",
        "data/tem01/em.tif",
        "data/tem01/lm.tif",
        "data/sem01/em.tif",
        "preprocessed/tem01/lm.tif",
        "preprocessed/tem01/landmarks.csv",
    ):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


@pytest.mark.workflow
def test_no_more_jobs_run_at_once_than_cores(tiny_runs):
    """--cores is a limit, also after the case checks (checkpoints) update the DAG."""
    for out, cores in zip(tiny_runs, (2, 1), strict=True):
        (log,) = (out.parent / ".snakemake" / "log").glob("*.snakemake.log")
        assert most_jobs_at_once(log.read_text()) <= cores, log


def _planned_rules(workdir: Path, config: str) -> set[str]:
    """Rules a dry run in ``workdir`` would run with ``config``."""
    result = snakemake(workdir, "-n", "--quiet", "rules", config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout + result.stderr
    return {rule for rule in RULES if re.search(rf"^{rule}\s+\d+", text, re.M)}


RULES = (
    "phantom_analogy",
    "preprocess_analogy",
    "learn_dictionary",
    "predict_sparse",
    "predict_hertzmann",
    "register",
    "capture_range",
    "table2",
)


@pytest.mark.workflow
def test_a_changed_setting_reruns_only_the_rules_that_use_it(tiny_runs, tmp_path):
    workdir = tiny_runs[0].parent
    try:
        assert _planned_rules(workdir, TINY) == set()
        # eq. 7's tolerance: the prediction and what follows, not the dictionaries
        eq7 = TINY.replace("eq7_max_iter: 5}", "eq7_max_iter: 5, eq7_tol: 1.0e-3}")
        planned = _planned_rules(workdir, eq7)
        assert {"predict_sparse", "register", "table2"} <= planned
        assert not planned & {"phantom_analogy", "preprocess_analogy", "learn_dictionary"}
        assert "predict_hertzmann" not in planned
        # capture range trials: the capture range only
        trials = TINY.replace("trials: 2\n", "trials: 3\n")
        planned = _planned_rules(workdir, trials)
        assert "capture_range" in planned and "register" not in planned
    finally:
        (workdir / "test_config.yaml").write_text(TINY)


@pytest.mark.workflow
def test_case_sheet_order_does_not_change_tables(tiny_runs, tmp_path):
    """Seeds come from case names: the tiny run's data as a case sheet, rows reversed,
    gives byte-identical tables."""
    a = tiny_runs[0]
    rows = ["case\ttrack\tem\tlm\tlandmarks\tchannel\tground_truth"]
    for case, track, channel in (
        ("sem01", "fiducial", "gray"),
        ("tem02", "analogy", "green"),
        ("tem01", "analogy", "green"),
    ):
        files = [str(a / "data" / case / f) for f in ("em.tif", "lm.tif", "landmarks.csv")]
        gt = str(a / "data" / case / "ground_truth.json")
        rows.append("\t".join([case, track, *files, channel, gt]))
    sheet = tmp_path / "cases.tsv"
    sheet.write_text("\n".join(rows) + "\n")
    # the phantom's PSF for the inverted-TEM baseline, as the synthetic run used
    config = TINY.replace("eq7_max_iter: 5}", "eq7_max_iter: 5, confocal_psf_fwhm_um: 0.7}")
    config += f"data: {{source: sheet, case_sheet: {sheet}}}\n"
    result = snakemake(tmp_path / "wd", config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    c = tmp_path / "wd" / "out"
    for rel in TABLES:
        if rel.endswith((".csv", ".md", ".tex")):
            assert (a / rel).read_bytes() == (c / rel).read_bytes(), rel


@pytest.mark.workflow
def test_lint_is_clean():
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = result.stdout + result.stderr
    assert "Lints for" not in text, text
    assert "good condition" in text


@pytest.mark.workflow
@pytest.mark.parametrize(
    "snippet, key, value",
    [
        ("preprocess: {px_per_um: -14.52, channel: green}", "px_per_um", "-14.52"),
        ("synthetic: {analogy: {tem_px_per_um: -5}}", "tem_px_per_um", "-5"),
        ("preprocess: {px_per_um: 14.52, channel: purple}", "channel", "purple"),
        ("seed: -3", "seed", "-3"),
        ("registration: {capture_range: {sources: [raw, bogus]}}", "sources", "bogus"),
    ],
)
def test_bad_config_value_is_rejected_at_start_up(tmp_path, snippet, key, value):
    result = snakemake(tmp_path, "-n", config=snippet + "\n")
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert key in text and value in text, text[-2000:]
    assert not (tmp_path / "results").exists()


# a small bead case (as the tiny config's): 20 beads, 200 px confocal, one SEM view
FIDUCIAL_SMALL = {
    "confocal_size_px": 200,
    "n_beads": 20,
    "n_crowded": 0,
    "views": [
        {
            "px_nm": 25,
            "size_px": [240, 240],
            "rotation_deg": 10.0,
            "scale": [1.0, 1.0],
            "shear": 0.0,
            "mirror": True,
        }
    ],
}


def _write_case(folder: Path, in_pixels: bool = False, number: int = 5) -> dict[str, str]:
    case = make_analogy_case(
        number,
        0,
        {"tem_px_per_um": 30.0, "tem_field_um": [8.0, 8.0], "confocal_field_um": [20.0, 20.0]},
    )
    paths = case.write(str(folder))
    if in_pixels:  # landmarks given in pixels by mistake
        table = case.landmarks.copy()
        table[["em_x_um", "em_y_um"]] *= case.em_px_per_um
        table[["lm_x_um", "lm_y_um"]] *= case.lm_px_per_um
        write_landmarks(paths["landmarks"], table)
    return paths


@pytest.mark.workflow
def test_too_few_training_cases_are_refused_at_start_up_unless_allowed(tmp_path):
    """Two analogy cases cannot give each test case two training cases: refused before
    any job runs, with the way out; allowed explicitly, the dry run plans the jobs."""
    sheet = tmp_path / "cases.tsv"
    rows = ["case\ttrack\tem\tlm\tlandmarks"]
    for name in ("c1", "c2"):
        p = _write_case(tmp_path / name)
        rows.append(f"{name}\tanalogy\t{p['em']}\t{p['lm']}\t{p['landmarks']}")
    sheet.write_text("\n".join(rows) + "\n")
    config = f"data: {{source: sheet, case_sheet: {sheet}}}\n"
    result = snakemake(tmp_path / "wd", "-n", config=config)
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert "analogy.n_training_cases is 2" in text and "allow_fewer_training_cases" in text
    allowed = config + "analogy: {allow_fewer_training_cases: true}\n"
    result = snakemake(tmp_path / "wd", "-n", config=allowed)
    assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]


@pytest.mark.workflow
def test_missing_case_file_is_named_at_start_up(tmp_path):
    """Named before any job runs, as a warning: that case will fail, the others run."""
    good = _write_case(tmp_path / "good")
    sheet = tmp_path / "cases.tsv"
    sheet.write_text(
        "case\ttrack\tem\tlm\tlandmarks\n"
        f"c1\tanalogy\t{good['em']}\tmissing_confocal.tif\t{good['landmarks']}\n"
    )
    result = snakemake(
        tmp_path / "wd", "-n", config=f"data: {{source: sheet, case_sheet: {sheet}}}\n"
    )
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-2000:]
    assert "WARNING case 'c1': lm file not found" in text and "missing_confocal.tif" in text


@pytest.mark.workflow
def test_a_user_sheet_runs_and_its_bad_cases_fail_alone(tmp_path):
    """A user's sheet made of phantom files: three TEM/confocal cases and one bead case
    that are fine, and three bad cases (landmarks in pixels, a third of the TEM NaN, a
    missing confocal). The good cases are trained on each other, registered, exported,
    in the tables; each bad case fails its check with its reason, is never trained on
    (the dictionaries' logs say so), and shows as failed in Table 2; the run succeeds."""
    beads = make_fiducial_case(3, 0, FIDUCIAL_SMALL).write(str(tmp_path / "beads"))
    paths = {
        "good1": _write_case(tmp_path / "good1", number=1),
        "good2": _write_case(tmp_path / "good2", number=2),
        "good3": _write_case(tmp_path / "good3", number=6),
        "pixels": _write_case(tmp_path / "pixels", in_pixels=True),
        "holes": _write_case(tmp_path / "holes", number=3),
        "gone": _write_case(tmp_path / "gone", number=4),
    }
    em, px_per_um = read_image(paths["holes"]["em"])
    em = em.astype(np.float32) / 255
    em[:, : em.shape[1] // 3] = np.nan
    write_tiff(paths["holes"]["em"], em, px_per_um)
    paths["gone"]["lm"] = str(tmp_path / "gone" / "nowhere.tif")
    sheet = tmp_path / "cases.tsv"
    rows = ["case\ttrack\tem\tlm\tlandmarks"]
    rows += [f"{n}\tanalogy\t{p['em']}\t{p['lm']}\t{p['landmarks']}" for n, p in paths.items()]
    rows.append(f"beads\tfiducial\t{beads['em']}\t{beads['lm']}\t{beads['landmarks']}")
    sheet.write_text("\n".join(rows) + "\n")
    config = TINY.replace("n_cases: 2", "n_cases: 0").replace("results: out", "results: results")
    config = config.replace("  levels: 2\n", "  levels: 2\n  sources: [sparse, raw]\n")
    config = config.replace("    trials: 2\n", "    trials: 0\n")
    config += f"data: {{source: sheet, case_sheet: {sheet}}}\n"
    result = snakemake(tmp_path / "wd", config=config)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    out = tmp_path / "wd" / "results"
    expected = {"pixels": "um, not pixels", "holes": "NaN", "gone": "lm file is missing"}
    for name, words in expected.items():
        status = read_json(out / f"checks/{name}.json")["status"]
        assert status.startswith(f"failed: case {name!r}") and words in status, status
        assert words in (out / f"logs/check_case/{name}.log").read_text()
        assert not (out / f"preprocessed/{name}/em.tif").exists()
    for name in ("good1", "good2", "good3", "beads"):
        assert read_json(out / f"checks/{name}.json")["status"] == "ok"
        assert read_json(out / f"export/{name}/transform.json")["matrix"] is not None
        assert (out / f"figures/residuals/{name}.png").is_file()
    for name in ("good1", "good2", "good3"):
        assert (out / f"registration/{name}/sparse.json").is_file()
    dictionaries = sorted(p.name for p in (out / "analogy/dictionaries").glob("*.npz"))
    assert dictionaries and all("good" in d for d in dictionaries), dictionaries
    for dictionary in dictionaries:
        log = (out / f"logs/learn_dictionary/{dictionary[:-4]}.log").read_text()
        for name in expected:
            assert f"case {name} is left out of every training set" in log
    table1 = pd.read_csv(out / "tables/table1_fiducials_long.csv")
    assert set(table1["case"]) == {"beads"} and table1["mae_nm"].notna().any()
    table = pd.read_csv(out / "tables/table2_registration_long.csv")
    for name in expected:
        rows = table[table["case"] == name]
        assert len(rows) > 0 and rows["status"].str.startswith("failed").all()
        assert rows["mae_um"].isna().all()
    good = table[table["case"].isin(["good1", "good2", "good3"])]
    good = good[~good["measure"].str.endswith("+bspline")]  # none after a failed affine
    assert good["mae_um"].notna().all()
    assert "failed" in (out / "tables/table2_registration.md").read_text()


def _start_tiny(workdir: Path) -> subprocess.Popen:
    """The tiny config started in the background, in its own process group."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "test_config.yaml").write_text(TINY)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
    cmd += ["--directory", str(workdir), "--cores", "2"]
    cmd += ["--configfile", str(workdir / "test_config.yaml")]
    return subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def _files(out: Path) -> dict[str, int]:
    """Every file under ``out`` (logs and benchmarks aside) with its modification time."""
    return {
        str(p.relative_to(out)): p.stat().st_mtime_ns
        for p in out.rglob("*")
        if p.is_file() and p.relative_to(out).parts[0] not in ("logs", "benchmarks")
    }


@pytest.mark.workflow
def test_a_killed_run_reruns_only_what_was_incomplete(tiny_runs, tmp_path):
    """SIGKILL of the whole run (Snakemake and its jobs: a power cut) while a dictionary
    is being learned; the rerun (after --unlock, as the README says) recomputes only what
    had not finished and gives the uninterrupted run's tables byte for byte."""
    import os
    import signal
    import time

    workdir = tmp_path / "killed"
    out = workdir / "out"
    run = _start_tiny(workdir)
    deadline = time.monotonic() + 300
    learning = out / "logs" / "learn_dictionary"
    while not (learning.is_dir() and any(learning.iterdir())):
        assert run.poll() is None, "the run ended before any dictionary was learned"
        assert time.monotonic() < deadline, "no dictionary job started within 300 s"
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    before = _files(out)
    locked = snakemake(workdir, config=TINY)  # the killed run's lock is still there
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    assert snakemake(workdir, "--unlock", config=TINY).returncode == 0
    # What had finished stays; whatever was being written is not taken as done.
    result = snakemake(workdir, "--rerun-incomplete", config=TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    after = _files(out)
    kept = [f for f, t in before.items() if after.get(f) == t]
    assert "data/tem01/em.tif" in kept and "preprocessed/tem01/em.tif" in kept
    rerun = {f for f in before if f not in kept}
    assert not any(f.startswith(("data/", "preprocessed/")) for f in rerun), rerun
    for rel in TABLES:
        assert (out / rel).read_bytes() == (tiny_runs[0] / rel).read_bytes(), rel


@pytest.mark.workflow
def test_an_analogy_case_with_two_landmarks_is_refused_with_its_file(tmp_path):
    paths = _write_case(tmp_path / "two")
    table = pd.read_csv(paths["landmarks"]).iloc[:2]
    write_landmarks(paths["landmarks"], table)
    sheet = tmp_path / "cases.tsv"
    sheet.write_text(
        f"case\ttrack\tem\tlm\tlandmarks\ntwo\tanalogy\t{paths['em']}\t{paths['lm']}\t"
        f"{paths['landmarks']}\n"
    )
    config = f"data: {{source: sheet, case_sheet: {sheet}}}\n"
    result = snakemake(tmp_path / "wd", "results/preprocessed/two/em.tif", config=config)
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert "case 'two'" in text and "at least 3 landmark pairs, got 2" in text, text[-3000:]
    assert paths["landmarks"] in text
    assert not (tmp_path / "wd/results/preprocessed/two/start_transform.json").exists()
