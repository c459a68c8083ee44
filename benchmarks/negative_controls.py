"""Negative controls: how often a registration of inputs that do not correspond is ``ok``.

Every registration answer carries a status, ``ok``, ``uncertain: <reason>`` or
``failed: <reason>`` (:mod:`clemalign.confidence`, :mod:`clemalign.fiducials`). When the
two images have nothing in common the answer must never be ``ok``. This script counts,
over ``--trials`` seeded trials per control, how often each route returns each status:

``noise``
    "noise vs image": a moving image of uniform noise (64 x 64 px) against a smooth
    random texture (80 x 80 px) at 2 px/um, from a start 4, 3 um off, under SSD and MI,
    through :func:`clemalign.routes.register_measures` with the checks on, as
    ``tests/test_confidence.py::test_noise_against_an_image_fails_as_no_better_than_chance``
    (a new texture and new noise every trial).
``textures``
    "unrelated textures": two independent textures of the same kind, as
    ``tests/test_confidence.py::test_unrelated_images_are_not_ok``.
``tissue``
    "unrelated tissue (phantom)": two small realistic phantom cases A and B
    (:func:`clemalign.phantom.make_analogy_case`, 10 um TEM field, 26 um confocal field,
    TEM at 30 px/um, as ``tests/test_phantom_realistic.py``), preprocessed by
    :func:`clemalign.preprocess.prepare_analogy_pair` with the config's ``preprocess``
    settings; the TEM of A (``raw`` source: inverted for SSD, as it is for MI) registered
    against B's confocal crop from B's landmark start, with the config's optimiser
    settings (levels, bins, ssd_contrast_um). The positive reference "matching tissue (reference)"
    registers A's TEM against A's own crop from A's start: its ``ok`` count shows the
    checks do not simply refuse everything. ``--search`` searches about the start first
    (config ``registration.start_search``), as the workflow does; its routes are then
    named ``searched raw/<measure>``.
``beads``
    "unrelated beads": two images of random blobs (SEM-like 500 x 500 px at 50 px/um,
    confocal-like 400 x 400 px at 25 px/um) as
    ``tests/test_fiducials.py::test_unrelated_bead_images_are_never_ok``, through
    :func:`clemalign.fiducials.register_fiducial_case` with the config's ``fiducials``
    settings, every method it runs. The positive reference "matching beads (reference)"
    registers a default fiducial phantom (:func:`clemalign.phantom.make_fiducial_case`,
    view ``trial % 4``) the same way.

The confidence thresholds are the workflow's (``registration.confidence`` of
``config.yaml``). Every random choice comes from :func:`clemalign.seeds.rng_for`, keyed by
the config seed, a purpose, the control's short name and the trial number, so a run is
deterministic and adding trials never changes the earlier ones.

The output is a markdown table (control, route, trials, ok, uncertain, failed), followed
by the list of ``ok`` answers in negative controls, if any (there should be none).
Times per control go to stderr.

Run from the repository root::

    .venv/bin/python benchmarks/negative_controls.py [--trials 20]
        [--controls noise textures tissue beads] [--search] [--csv trials.csv]
        [--config config.yaml]

One trial takes about 1 s (noise, textures), 8 s (tissue) and 8 s (beads) on one core.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from scipy import ndimage

from clemalign.confidence import ConfidenceLimits
from clemalign.fiducials import FiducialCase, register_fiducial_case
from clemalign.phantom import make_analogy_case, make_fiducial_case
from clemalign.preprocess import PreparedPair, prepare_analogy_pair, to_unit_float
from clemalign.routes import moving_image, register_measures
from clemalign.search import StartSearch
from clemalign.seeds import rng_for
from clemalign.transforms import translation_matrix

ROOT = Path(__file__).resolve().parents[1]
MEASURES = ["ssd", "mi"]
TEXTURE_PPU = 2.0  # px/um of the texture controls (tests/test_confidence.py)
#: Small realistic phantom cases (tests/test_phantom_realistic.py): a few seconds each.
SMALL_TISSUE = {
    "model": "realistic",
    "tem_px_per_um": 30.0,
    "tem_field_um": [10.0, 10.0],
    "confocal_field_um": [26.0, 26.0],
}
STATUSES = ("ok", "uncertain", "failed")

#: One answer: (control, route, status).
Row = tuple[str, str, str]


@dataclass(frozen=True)
class Setup:
    """What every trial needs from the config.

    Attributes
    ----------
    seed : int
        The config seed.
    limits : ConfidenceLimits
        ``registration.confidence``.
    options : dict
        Optimiser options of the workflow's registrations (``levels``, ``bins``).
    preprocess : dict
        ``preprocess`` (channel, px_per_um, margin_um).
    fiducials : dict
        ``fiducials`` settings.
    search : StartSearch or None
        The start search of the tissue control (None: local registration only).
    """

    seed: int
    limits: ConfidenceLimits
    options: dict
    preprocess: dict
    fiducials: dict
    search: StartSearch | None


def load_setup(path: Path, search: bool) -> Setup:
    """Read the workflow's settings from ``config.yaml``.

    Parameters
    ----------
    path : Path
        The config file.
    search : bool
        Whether the tissue control searches about the start first.

    Returns
    -------
    Setup
    """
    config = yaml.safe_load(path.read_text())
    reg = config["registration"]
    return Setup(
        seed=int(config["seed"]),
        limits=ConfidenceLimits.from_config(reg["confidence"]),
        options={key: reg[key] for key in ("levels", "bins", "ssd_contrast_um")},
        preprocess=dict(config["preprocess"]),
        fiducials=dict(config["fiducials"]),
        search=StartSearch.maybe(reg.get("start_search")) if search else None,
    )


def trial_rng(setup: Setup, control: str, trial: int, purpose: str) -> np.random.Generator:
    """The random stream of one purpose in one trial of one control."""
    return rng_for(setup.seed, f"negative_controls/{purpose}", f"{control}/{trial}")


def trial_seed(setup: Setup, control: str, trial: int) -> int:
    """A phantom seed for one trial of one control."""
    return int(trial_rng(setup, control, trial, "phantom").integers(2**31))


def textured(rng: np.random.Generator, shape: tuple[int, int], sigma: float = 1.5) -> np.ndarray:
    """Smoothed Gaussian noise scaled to [0, 1] (``_textured`` of the confidence tests)."""
    image = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return (image - image.min()) / (image.max() - image.min())


def measure_rows(control: str, prefix: str, results: dict[str, dict]) -> list[Row]:
    """One row per measure of a :func:`register_measures` answer."""
    return [(control, f"{prefix}{measure}", r["status"]) for measure, r in results.items()]


def register_texture(
    moving: np.ndarray, fixed: np.ndarray, setup: Setup, rng: np.random.Generator
) -> dict[str, dict]:
    """Register ``moving`` on ``fixed`` as the confidence tests do (start 4, 3 um off)."""
    return register_measures(
        lambda measure: moving,
        fixed,
        translation_matrix(4.0, 3.0),
        MEASURES,
        TEXTURE_PPU,
        confidence=setup.limits,
        rng=rng,
    )


def noise_trial(setup: Setup, trial: int) -> list[Row]:
    """Uniform noise against a texture."""
    fixed = textured(trial_rng(setup, "noise", trial, "fixed"), (80, 80))
    noise = trial_rng(setup, "noise", trial, "moving").random((64, 64))
    checks = trial_rng(setup, "noise", trial, "confidence")
    return measure_rows("noise vs image", "", register_texture(noise, fixed, setup, checks))


def textures_trial(setup: Setup, trial: int) -> list[Row]:
    """Two unrelated textures of the same kind."""
    fixed = textured(trial_rng(setup, "textures", trial, "fixed"), (80, 80))
    other = textured(trial_rng(setup, "textures", trial, "moving"), (64, 64))
    checks = trial_rng(setup, "textures", trial, "confidence")
    return measure_rows("unrelated textures", "", register_texture(other, fixed, setup, checks))


def tissue_case(setup: Setup, seed: int, index: int) -> PreparedPair:
    """One small realistic phantom case, preprocessed as the workflow does."""
    case = make_analogy_case(seed, index, SMALL_TISSUE)
    p = setup.preprocess
    return prepare_analogy_pair(
        case.em,
        case.em_px_per_um,
        case.lm,
        case.lm_px_per_um,
        case.landmarks,
        p["channel"],
        p["px_per_um"],
        p["margin_um"],
    )


def register_tem(
    tem: PreparedPair, target: PreparedPair, setup: Setup, rng: np.random.Generator
) -> dict[str, dict]:
    """The raw route: ``tem``'s TEM against ``target``'s confocal crop from its start."""
    return register_measures(
        lambda measure: moving_image("raw", measure, tem.em, None),
        target.lm,
        target.start.matrix,
        MEASURES,
        target.px_per_um,
        None,
        setup.options,
        confidence=setup.limits,
        rng=rng,
        search=setup.search,
    )


def tissue_trial(setup: Setup, trial: int) -> list[Row]:
    """TEM of case A against the confocal of case B, and A against A as reference."""
    seed = trial_seed(setup, "tissue", trial)
    a, b = tissue_case(setup, seed, 0), tissue_case(setup, seed, 1)
    wrong = register_tem(a, b, setup, trial_rng(setup, "tissue", trial, "confidence/AB"))
    right = register_tem(a, a, setup, trial_rng(setup, "tissue", trial, "confidence/AA"))
    route = "searched raw/" if setup.search else "raw/"
    return measure_rows("unrelated tissue (phantom)", route, wrong) + measure_rows(
        "matching tissue (reference)", route, right
    )


def blob_image(
    rng: np.random.Generator, shape: tuple[int, int], n: int, sigma_px: float
) -> np.ndarray:
    """Random bead-like blobs on a faint noisy background (``_blob_image`` of the
    fiducial tests)."""
    img = np.zeros(shape, np.float32)
    rows, cols = rng.integers(5, shape[0] - 5, n), rng.integers(5, shape[1] - 5, n)
    img[rows, cols] = rng.uniform(0.5, 1.0, n)
    img = ndimage.gaussian_filter(img, sigma_px) * (2 * np.pi * sigma_px**2)
    return img + rng.normal(0.05, 0.01, shape).astype(np.float32)


def method_rows(control: str, result: FiducialCase) -> list[Row]:
    """One row per method of a fiducial registration."""
    return [(control, method, out.status) for method, out in result.outcomes.items()]


def beads_trial(setup: Setup, trial: int) -> list[Row]:
    """Two unrelated blob images, and a matching fiducial phantom as reference."""
    em = blob_image(trial_rng(setup, "beads", trial, "em"), (500, 500), 80, 2.5)
    lm = blob_image(trial_rng(setup, "beads", trial, "lm"), (400, 400), 150, 3.0)
    wrong = register_fiducial_case(em, 50.0, lm, 25.0, setup.fiducials)
    case = make_fiducial_case(trial_seed(setup, "beads", trial), trial % 4, {})
    right = register_fiducial_case(
        to_unit_float(case.em),
        case.em_px_per_um,
        to_unit_float(case.lm),
        case.lm_px_per_um,
        setup.fiducials,
    )
    return method_rows("unrelated beads", wrong) + method_rows("matching beads (reference)", right)


CONTROLS: dict[str, Callable[[Setup, int], list[Row]]] = {
    "noise": noise_trial,
    "textures": textures_trial,
    "tissue": tissue_trial,
    "beads": beads_trial,
}


def run(setup: Setup, controls: list[str], trials: int) -> list[tuple[str, str, int, str]]:
    """Every trial of the chosen controls: ``(control, route, trial, status)`` rows."""
    out = []
    for name in controls:
        began = time.perf_counter()
        for trial in range(trials):
            out += [(c, route, trial, s) for c, route, s in CONTROLS[name](setup, trial)]
        seconds = time.perf_counter() - began
        print(f"{name}: {trials} trials in {seconds:.1f} s", file=sys.stderr)
    return out


def kind(status: str) -> str:
    """``ok``, ``uncertain`` or ``failed``: the status before its reason."""
    return status.split(":", 1)[0].strip()


def table(rows: list[tuple[str, str, int, str]]) -> str:
    """The markdown table of status counts per (control, route), in order of appearance."""
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for control, route, _, status in rows:
        tally = counts.setdefault((control, route), dict.fromkeys(STATUSES, 0))
        tally[kind(status)] += 1
    lines = ["| control | route | trials | ok | uncertain | failed |", "|---|---|---|---|---|---|"]
    for (control, route), n in counts.items():
        cells = [control, route, str(sum(n.values()))] + [str(n[s]) for s in STATUSES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def false_oks(rows: list[tuple[str, str, int, str]]) -> list[str]:
    """Every ``ok`` of a negative control (not a reference): there should be none."""
    return [
        f"{control}, {route}, trial {trial}"
        for control, route, trial, status in rows
        if kind(status) == "ok" and "reference" not in control
    ]


def write_csv(path: Path, rows: list[tuple[str, str, int, str]]) -> None:
    """Every trial's row: control, route, trial, status."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["control", "route", "trial", "status"])
        writer.writerows(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="seeded trials per control")
    parser.add_argument(
        "--controls", nargs="+", choices=list(CONTROLS), default=list(CONTROLS), metavar="NAME"
    )
    parser.add_argument("--search", action="store_true", help="tissue: start search first")
    parser.add_argument("--csv", type=Path, help="write every trial's status here")
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the controls, print the table and any ``ok`` of a negative control."""
    args = parse_args(argv)
    began = time.perf_counter()
    rows = run(load_setup(args.config, args.search), args.controls, args.trials)
    print(f"total: {time.perf_counter() - began:.1f} s", file=sys.stderr)
    if args.csv:
        write_csv(args.csv, rows)
    print(table(rows))
    wrong = false_oks(rows)
    print("\nok in a negative control: " + ("; ".join(wrong) if wrong else "none"))


if __name__ == "__main__":
    main()
