"""The search around a rough start (clemalign.search.StartSearch) against plain local
registration, from the capture range's perturbed starts, on the default data.

For every analogy case of a finished default run (``results/``) and every route
(source x measure), the starts are the workflow's own perturbations of the landmark start
(same seeds: ``capture_range/<protocol>`` by case name). Each start is registered
(a) as the workflow does today, locally from the perturbed start, and (b) after the
search: ``StartSearch`` candidates near the start, each refined by the route's affine
registration, the best local-contrast correlation wins. Printed per protocol and route:
how often the answer comes back within ``success_um`` of the route's unperturbed answer,
the median and the worst ground-truth error (um, mean over the TEM grid), trials more
than 1 um from the truth, and the median seconds per trial.

    python benchmarks/start_search.py [--cases tem01 tem06] [--sources sparse raw]
        [--candidates 3] [--protocols wide]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from clemalign.evaluation import frame_ground_truth, truth_error_um
from clemalign.io import read_json
from clemalign.register import grid_error_um, perturb_affine, register_affine
from clemalign.routes import load_registration_images, moving_image, source_files
from clemalign.search import StartSearch, pick_refined, start_candidates
from clemalign.seeds import rng_for

ROOT = Path(__file__).resolve().parents[1]


def starts_of(
    config: dict, protocol: dict, case: str, start: np.ndarray, shape, ppu, trials=None
) -> list:
    """The workflow's perturbed starts of one case and protocol (same seed, same order;
    ``trials``: how many, default the protocol's)."""
    capture = config["registration"]["capture_range"]
    rng = rng_for(config["seed"], f"capture_range/{protocol['name']}", case)
    centre = (shape[1] / (2 * ppu), shape[0] / (2 * ppu))
    bounds = {k: protocol[k] for k in protocol if k.startswith("max_")}
    n = trials or protocol.get("trials", capture["trials"])
    return [perturb_affine(start, rng, centre, **bounds) for _ in range(n)]


def searched(images, source, measure, begin, options, search: StartSearch, coarse: bool):
    """The route's answer after the search about ``begin`` (``coarse``: candidates
    refined at the coarsest level only, the winner then at every level) and the winner's
    lead in correlation over the best other basin (``gap``, inf when there is none)."""
    probe = moving_image(source, "ssd", images.tem, images.predicted)  # rises with the LM
    found = start_candidates(
        probe,
        images.fixed,
        begin,
        moving_px_per_um=images.px_per_um,
        fixed_px_per_um=images.px_per_um,
        search=search,
    )
    first = {"finest_level": options["levels"] - 1} if coarse else {}
    refined = [local(images, source, measure, c["matrix"], options | first) for c in found]
    best, _, gap = pick_refined(probe, images.fixed, refined, images.px_per_um, search.contrast_um)
    answer = local(images, source, measure, refined[best], options) if coarse else refined[best]
    return answer, gap


def local(images, source, measure, begin, options) -> np.ndarray:
    """The route's plain local registration from ``begin``."""
    return register_affine(
        moving_image(source, measure, images.tem, images.predicted),
        images.fixed,
        begin,
        moving_px_per_um=images.px_per_um,
        fixed_px_per_um=images.px_per_um,
        measure=measure,
        weights=images.weights if measure == "wssd" else None,
        **options,
    ).matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--cases", nargs="*", default=[f"tem0{i}" for i in range(1, 7)])
    parser.add_argument("--sources", nargs="*", default=["sparse", "raw"])
    parser.add_argument("--measures", nargs="*", default=["ssd", "mi", "wssd"])
    parser.add_argument("--protocols", nargs="*", default=["standard", "wide"])
    parser.add_argument("--candidates", type=int, default=StartSearch.candidates)
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="other StartSearch fields, e.g. rotation_step_deg=2",
    )
    parser.add_argument("--trials", type=int, help="trials per protocol (default: config's)")
    parser.add_argument("--csv", type=Path, help="write every trial here")
    parser.add_argument("--coarse", action="store_true", help="candidates at the coarsest level")
    parser.add_argument("--no-local", action="store_true", help="skip the plain local runs")
    args = parser.parse_args()
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    reg = config["registration"]
    options = {k: reg[k] for k in ("levels", "bins", "ssd_contrast_um")}
    fields = {k: float(v) if "." in v else int(v) for k, v in (a.split("=") for a in args.set)}
    search = StartSearch(candidates=args.candidates, **fields)
    protocols = [p for p in reg["capture_range"]["protocols"] if p["name"] in args.protocols]
    rows = []
    for case in args.cases:
        pre = args.results / "preprocessed" / case
        truth = frame_ground_truth(read_json(pre / "frame.json"))
        files = {
            "lm": pre / "lm.tif",
            "sparse": args.results / "analogy" / case / "sparse_predicted.tif",
            "sparse_uncertainty": args.results / "analogy" / case / "sparse_uncertainty.tif",
        }
        for source in args.sources:
            images = load_registration_images(case, pre / "em.tif", *source_files(source, files))
            record = read_json(args.results / "registration" / case / f"{source}.json")
            shape, ppu = images.tem.shape, images.px_per_um
            for protocol in protocols:
                starts = starts_of(
                    config, protocol, case, np.asarray(record["start"]), shape, ppu, args.trials
                )
                for measure in args.measures:
                    if (
                        measure not in record["measures"]
                        or "matrix" not in record["measures"][measure]
                    ):
                        continue
                    answer = np.asarray(record["measures"][measure]["matrix"])
                    for trial, begin in enumerate(starts):
                        for how in ("search",) if args.no_local else ("local", "search"):
                            t0 = time.perf_counter()
                            gap = np.nan
                            try:
                                if how == "local":
                                    got = local(images, source, measure, begin, options)
                                else:
                                    got, gap = searched(
                                        images, source, measure, begin, options, search, args.coarse
                                    )
                            except (ValueError, np.linalg.LinAlgError, FloatingPointError):
                                got = None
                            seconds = time.perf_counter() - t0
                            back = (
                                got is not None
                                and grid_error_um(got, answer, shape, ppu)
                                <= reg["capture_range"]["success_um"]
                            )
                            error = (
                                truth_error_um(got, truth, shape, ppu)
                                if got is not None
                                else np.nan
                            )
                            rows.append(
                                {
                                    "protocol": protocol["name"],
                                    "case": case,
                                    "route": f"{source}/{measure}",
                                    "how": how,
                                    "trial": trial,
                                    "back": back,
                                    "error_um": error,
                                    "gap": gap,
                                    "s": seconds,
                                }
                            )
            print(f"{case} {source} done", flush=True)
    table = pd.DataFrame(rows)
    if args.csv:
        table.to_csv(args.csv, index=False)
    summary = table.groupby(["protocol", "route", "how"]).agg(
        trials=("back", "size"),
        back=("back", "mean"),
        median_um=("error_um", "median"),
        worst_um=("error_um", "max"),
        over_1um=("error_um", lambda e: int((e > 1).sum())),
        median_s=("s", "median"),
    )
    with pd.option_context("display.width", 160, "display.float_format", "{:.3f}".format):
        print(summary.to_string())
        print(table.groupby(["protocol", "case", "how"])["back"].mean().unstack().to_string())
    print_gap_calibration(table[table["how"] == "search"])


def print_gap_calibration(table: pd.DataFrame, thresholds=(0.01, 0.02, 0.03, 0.05, 0.1)) -> None:
    """How well the search's ``gap`` separates trials that came back from those that did
    not: per threshold, the share of each that a rule "uncertain when gap < threshold"
    would flag."""
    if table.empty:
        return
    back, lost = table[table["back"]], table[~table["back"]]
    print(
        f"\ngap (winner's lead over the best other basin; inf: one basin): came back "
        f"n = {len(back)}, median {back['gap'].median():.3f}; did not n = {len(lost)}, "
        f"median {lost['gap'].median():.3f}"
    )
    for t in thresholds:
        print(
            f"gap < {t:.2f}: flags {np.mean(lost['gap'] < t):.0%} of the lost trials and "
            f"{np.mean(back['gap'] < t):.0%} of those that came back; "
            f"lost trials > 1 um from the truth flagged: "
            f"{int(((lost['gap'] < t) & (lost['error_um'] > 1)).sum())} of "
            f"{int((lost['error_um'] > 1).sum())}"
        )


if __name__ == "__main__":
    main()
