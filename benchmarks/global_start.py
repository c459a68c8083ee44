"""Registration without landmarks: the global search (clemalign.search) on the raw default
cases, against the ground truth and against the landmark-started answer.

For every analogy case under ``<results>/data/<case>/`` (raw TEM, raw confocal, the
ground truth) the TEM is brought to the preprocessing sampling (``--px-per-um``, 14.52)
and the confocal's green channel is kept whole at its own sampling (42 um field: no
crop, no landmarks). The search correlates the inverted TEM with the confocal over
rotation x scale x mirror (``SearchRange`` defaults: +-180 deg by 4 deg, scale 0.85-1.15
in 7 steps, mirror on) and refines the best distinct candidates by affine MI on the raw
TEM. Printed per case: the ground-truth error (mean over the TEM grid, um), the error of
the answer that the workflow's landmark start gives (``registration/<case>/raw.json``,
MI), the distance between the two, the winner's coarse rotation/scale/mirror, the gap to
the runner-up, and seconds.

    python benchmarks/global_start.py [--results results] [--cases tem01 tem02]
        [--probes tem sparse]

With both search images (the default, as the workflow's rule global_search) their
candidates are pooled and every refined placement is scored by the mean correlation
over both; ``--probes tem`` or ``--probes sparse`` shows each alone.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from clemalign.evaluation import truth_error_um
from clemalign.io import read_image, read_json
from clemalign.preprocess import select_channel, to_unit_float
from clemalign.register import grid_error_um
from clemalign.search import SearchRange, global_search
from clemalign.transforms import DeformationField, translation_matrix, warp_image


def raw_case(results: Path, case: str, px_per_um: float):
    """(TEM at px_per_um, confocal green at its own sampling, its px/um, truth field)."""
    data = results / "data" / case
    em, em_ppu = read_image(data / "em.tif")
    lm, lm_ppu = read_image(data / "lm.tif")
    em = to_unit_float(select_channel(em, "gray"))
    h, w = em.shape[0] / em_ppu, em.shape[1] / em_ppu
    shape = (int(round(h * px_per_um)), int(round(w * px_per_um)))
    tem = warp_image(em, em_ppu, np.eye(3), shape, px_per_um)
    confocal = to_unit_float(select_channel(lm, "green"))
    truth = DeformationField.from_dict(read_json(data / "ground_truth.json")["deformation"])
    return tem, confocal, lm_ppu, truth


def landmark_answer(results: Path, case: str) -> np.ndarray | None:
    """The workflow's MI answer for the raw TEM, in raw confocal um (crop offset added)."""
    path = results / "registration" / case / "raw.json"
    if not path.is_file():
        return None
    got = read_json(path)["measures"]["mi"]
    if "matrix" not in got:
        return None
    x0, y0 = read_json(results / "preprocessed" / case / "frame.json")["lm_crop_origin_um"]
    return translation_matrix(x0, y0) @ np.asarray(got["matrix"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default="results")
    parser.add_argument("--cases", nargs="*")
    parser.add_argument("--px-per-um", type=float, default=14.52)
    parser.add_argument(
        "--probes",
        nargs="+",
        choices=["tem", "sparse"],
        default=["tem", "sparse"],
        help="search images: the inverted TEM, the sparse prediction (of a finished run), or both",
    )
    args = parser.parse_args()
    results = Path(args.results)
    cases = args.cases or sorted(p.name for p in (results / "data").glob("tem*"))
    print(
        "| case | global: gt error (um) | landmark start: gt error (um) | global vs landmark (um) "
        "| rotation, scale, mirror | gap | s |"
    )
    print("|---|---|---|---|---|---|---|")
    errors = []
    for case in cases:
        tem, confocal, lm_ppu, truth = raw_case(results, case, args.px_per_um)
        t0 = time.perf_counter()
        images = {"tem": 1.0 - tem}
        predicted = results / "analogy" / case / "sparse_predicted.tif"
        if predicted.is_file():
            images["sparse"] = np.asarray(read_image(predicted)[0], float)
        chosen = [images[k] for k in args.probes if k in images]
        found = global_search(
            chosen[0],
            confocal,
            moving_px_per_um=args.px_per_um,
            fixed_px_per_um=lm_ppu,
            search=SearchRange(),
            measure="mi",
            refine_moving=tem,
            more_probes=chosen[1:],
        )
        seconds = time.perf_counter() - t0
        err = truth_error_um(found.matrix, truth, tem.shape, args.px_per_um)
        errors.append(err)
        ref = landmark_answer(results, case)
        ref_err = (
            truth_error_um(ref, truth, tem.shape, args.px_per_um) if ref is not None else np.nan
        )
        apart = (
            grid_error_um(found.matrix, ref, tem.shape, args.px_per_um)
            if ref is not None
            else np.nan
        )
        best = found.candidates[0]
        print(
            f"| {case} | {err:.3f} | {ref_err:.3f} | {apart:.3f} | "
            f"{best['rotation_deg']:.0f} deg, {best['scale']:.2f}, {best['mirrored']} | "
            f"{found.gap:.4f} | {seconds:.1f} |",
            flush=True,
        )
    errors = np.array(errors)
    print(
        f"\nwithin 0.2 um of the truth: {np.sum(errors <= 0.2)} of {len(errors)}; "
        f"within 0.5 um: {np.sum(errors <= 0.5)}; median {np.median(errors):.3f} um"
    )


if __name__ == "__main__":
    main()
