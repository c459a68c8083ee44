"""The global search (no start) on more phantom cases than the default six: is the
default data representative, and where should ``registration.global_search.min_gap`` be?

Cases ``tem07`` ... (``--first``, ``--count``) are generated with the workflow's
recipe (config.yaml ``seed`` and ``synthetic.analogy``; a case's phantom is seeded by
its name, so ``tem07`` is the same field as in a workflow run with 7 or more cases) into
``--workdir``. None of them is a training case: the sparse prediction uses one of the
finished default run's dictionaries (``--dictionary``, default the first one under
``results/analogy/dictionaries``) with config.yaml's eq. 7 settings. Per case the search
runs as the rule global_search runs it (``registration.global_search``, refined on the
crop of ``preprocess.margin_um``), once with both search images (the workflow's) and once
with the inverted TEM alone (the CLI's), then the B-spline step of
``registration.nonrigid`` (raw/mi) on the both-image answer.

Printed per case: the best affine any registration can reach (the least-squares affine of
the true field: its mean distance to the truth over the TEM grid, um), the ground-truth
error and gap of each search, the error after the B-spline step; then the gaps of
right (< 0.5 um from the truth) and wrong winners, and how a ``min_gap`` threshold would split them.

    python benchmarks/global_calibration.py [--first 7] [--count 12] [--workdir /tmp/gcal]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import yaml
from global_start import raw_case

from clemalign.cases import synthetic_number
from clemalign.evaluation import map_points, truth_error_um
from clemalign.phantom import make_analogy_case
from clemalign.register import pixel_centres_um
from clemalign.routes import NonrigidOptions, refine_nonrigid_in_field
from clemalign.search import SearchRange, global_search
from clemalign.sparse_analogy import JointDictionary, predict_confocal

ROOT = Path(__file__).resolve().parents[1]


def best_affine_error_um(truth, shape, px_per_um: float) -> float:
    """Mean distance (um) to the truth of the least-squares affine of the true mapping."""
    xy = pixel_centres_um(shape, px_per_um)
    target = map_points(truth, xy)
    design = np.c_[xy, np.ones(len(xy))]
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    return float(np.linalg.norm(design @ coef - target, axis=1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", type=int, default=7)
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gcal"))
    parser.add_argument("--dictionary", type=Path)
    args = parser.parse_args()
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    reg, ana, ppu = config["registration"], config["analogy"], config["preprocess"]["px_per_um"]
    opts = dict(reg["global_search"])
    min_gap, measure = opts.pop("min_gap"), opts.pop("measure")
    search = SearchRange.from_config(opts | {"crop_margin_um": config["preprocess"]["margin_um"]})
    optimiser = {k: reg[k] for k in ("levels", "bins", "ssd_contrast_um")}
    nonrigid = NonrigidOptions.maybe(reg.get("nonrigid"))
    dictionaries = sorted((ROOT / "results" / "analogy" / "dictionaries").glob("*.npz"))
    dictionary = JointDictionary.load(args.dictionary or dictionaries[0])
    solver = {k: ana[v] for k, v in (("lam", "lambda"), ("gamma", "gamma"))}
    solver |= {"tol": ana["eq7_tol"], "max_iter": ana["eq7_max_iter"]}
    print(f"dictionary {args.dictionary or dictionaries[0].name}; min_gap {min_gap}")
    print("| case | best affine | both: error | gap | TEM alone: error | gap | + B-spline | s |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for number in range(args.first, args.first + args.count):
        name = f"tem{number:02d}"
        t0 = time.perf_counter()
        case = make_analogy_case(
            config["seed"], synthetic_number(name), config["synthetic"]["analogy"], name
        )
        case.write(str(args.workdir / "data" / name))
        tem, confocal, lm_ppu, truth = raw_case(args.workdir, name, ppu)
        predicted = predict_confocal(tem, dictionary, em_intensity=ana["em_intensity"], **solver)
        common = {"moving_px_per_um": ppu, "fixed_px_per_um": lm_ppu, "search": search}
        common |= {"measure": measure, "refine_moving": tem, "options": optimiser}
        both = global_search(1.0 - tem, confocal, more_probes=[predicted.confocal], **common)
        alone = global_search(1.0 - tem, confocal, **common)
        record, field = refine_nonrigid_in_field(
            tem,
            confocal,
            both.matrix,
            "ok",
            moving_px_per_um=ppu,
            fixed_px_per_um=lm_ppu,
            crop_margin_um=search.crop_margin_um,
            options=nonrigid,
            measure=measure,
            optimiser=optimiser,
        )
        row = {
            "case": name,
            "floor": best_affine_error_um(truth, tem.shape, ppu),
            "both": truth_error_um(both.matrix, truth, tem.shape, ppu),
            "both_gap": both.gap,
            "alone": truth_error_um(alone.matrix, truth, tem.shape, ppu),
            "alone_gap": alone.gap,
            "bspline": np.nan if field is None else truth_error_um(field, truth, tem.shape, ppu),
        }
        rows.append(row)
        print(
            f"| {name} | {row['floor']:.3f} | {row['both']:.3f} | {row['both_gap']:.3f} | "
            f"{row['alone']:.3f} | {row['alone_gap']:.3f} | {row['bspline']:.3f} | "
            f"{time.perf_counter() - t0:.0f} |",
            flush=True,
        )
    summarise(rows, min_gap)


def summarise(rows: list[dict], min_gap: float) -> None:
    """Within-0.2-um counts, and the gaps of right and wrong winners."""
    n = len(rows)
    labels = {"floor": "best affine", "both": "both images", "bspline": "+ B-spline"}
    for key, label in labels.items():
        values = [r[key] for r in rows]
        within = sum(v <= 0.2 for v in values)
        print(f"{label}: {within} of {n} within 0.2 um, median {np.median(values):.3f}")
    gaps = [(r[f"{k}_gap"], r[k] < 0.5) for r in rows for k in ("both", "alone")]
    right = np.array([g for g, ok in gaps if ok])
    wrong = np.array([g for g, ok in gaps if not ok])
    print(f"gaps of right winners (n = {len(right)}): {np.round(np.sort(right), 3).tolist()}")
    print(f"gaps of wrong winners (n = {len(wrong)}): {np.round(np.sort(wrong), 3).tolist()}")
    for t in sorted({0.03, 0.05, 0.08, min_gap}):
        print(
            f"min_gap {t:g}: flags {int(np.sum(right < t))} of {len(right)} right and "
            f"{int(np.sum(wrong < t))} of {len(wrong)} wrong winners"
        )


if __name__ == "__main__":
    main()
