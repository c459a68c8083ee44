"""The sparsity weight of eq. 7 (``analogy.lambda``): accuracy and capture range of the
sparse route, with direct MI registration of the TEM as the peer in the same run.

Why: the paper sets lambda = 1 in eq. 7 without stating the intensity scale of its
patches. On [0, 1] intensities lambda = 1 shrinks the codes so much that the prediction
keeps about a fifth of the confocal's contrast (SD 0.02-0.03 against 0.07-0.11 on the
default data), and registering it lands further from the truth than registering the TEM
itself. This benchmark predicts each case's confocal at several lambdas with the
dictionary the workflow learned for it, and registers each prediction.

Data: a results folder of the workflow on synthetic data (ground truth needed):
``preprocessed/temNN/*``, ``analogy/temNN/sparse_prediction.json`` (which dictionary)
and ``analogy/dictionaries/*.npz``.

Per lambda and measure (SSD, MI): the median over the cases of the ground-truth error
(mean distance over the TEM grid to the true deformation, um) from the landmark start,
and the fraction of perturbed starts that come back within 0.2 um of that answer under
the workflow's two capture-range protocols (seeded as the workflow seeds them). The
peer: the TEM itself under MI from the same starts. One run per setting (the registration
is deterministic); the rates carry the binomial noise of 60 (standard) and 36 (wide)
trials.

Run it (about 10 minutes on 2 cores)::

    python benchmarks/eq7_lambda.py [results] [--lambdas 1 0.3 0.1 0.05]
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from clemalign.evaluation import frame_ground_truth, truth_error_um
from clemalign.io import read_image, read_json, read_landmarks
from clemalign.register import register_affine
from clemalign.routes import capture_trials
from clemalign.seeds import rng_for
from clemalign.sparse_analogy import JointDictionary, predict_confocal
from clemalign.transforms import Transform


def case_rows(results: Path, case: str, lambdas: list[float], config: dict) -> list[dict]:
    """Ground-truth error and capture rates of one case: each lambda, and the peer."""
    pre = results / "preprocessed" / case
    tem, ppu = read_image(pre / "em.tif")
    confocal, _ = read_image(pre / "lm.tif")
    truth = frame_ground_truth(read_json(pre / "frame.json"))
    landmarks = read_landmarks(pre / "landmarks.csv")
    start = Transform.load(pre / "start_transform.json").matrix
    training = read_json(results / "analogy" / case / "sparse_prediction.json")["training_cases"]
    dictionary = JointDictionary.load(
        results / "analogy/dictionaries" / f"{'+'.join(training)}.npz"
    )
    analogy, capture = config["analogy"], config["registration"]["capture_range"]
    moving = {"TEM (peer)": tem}
    for lam in lambdas:
        moving[f"sparse, lambda {lam:g}"] = predict_confocal(
            tem,
            dictionary,
            em_intensity=analogy["em_intensity"],
            lam=lam,
            gamma=analogy["gamma"],
            tol=analogy["eq7_tol"],
            max_iter=analogy["eq7_max_iter"],
        ).confocal
    rows = []
    for name, image in moving.items():
        measures = ["mi"] if name.startswith("TEM") else ["ssd", "mi"]
        answers = {
            m: register_affine(
                image, confocal, start, moving_px_per_um=ppu, fixed_px_per_um=ppu, measure=m
            ).matrix
            for m in measures
        }
        row = {
            m: {"error_um": truth_error_um(a, truth, tem.shape, ppu)} for m, a in answers.items()
        }
        for protocol in capture["protocols"]:
            trials = capture_trials(
                lambda _m, im=image: im,
                confocal,
                start,
                answers,
                ppu,
                rng_for(config["seed"], f"capture_range/{protocol['name']}", case),
                protocol.get("trials", capture["trials"]),
                protocol,
                capture["success_um"],
                landmarks,
                truth,
            )
            for m in measures:
                row[m][protocol["name"]] = trials[trials.measure == m].success.to_numpy()
        rows += [{"case": case, "moving": name, "measure": m, **v} for m, v in row.items()]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="?", default="results", type=Path)
    ap.add_argument("--lambdas", nargs="+", type=float, default=[1.0, 0.3, 0.1, 0.05])
    args = ap.parse_args()
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
    cases = sorted(
        p.parent.name for p in (args.results / "analogy").glob("tem*/sparse_prediction.json")
    )
    with ProcessPoolExecutor(2) as pool:
        parts = pool.map(
            case_rows,
            [args.results] * len(cases),
            cases,
            [args.lambdas] * len(cases),
            [config] * len(cases),
        )
        table = pd.DataFrame([row for part in parts for row in part])
    names = [p["name"] for p in config["registration"]["capture_range"]["protocols"]]
    summary = table.groupby(["moving", "measure"], sort=False).agg(
        error_um=("error_um", "median"),
        **{f"{n} back": (n, lambda s: float(np.mean(np.concatenate(s.to_list())))) for n in names},
    )
    print(f"{len(cases)} cases from {args.results}; error: median over the cases (um)")
    print(summary.round(3).to_string())


if __name__ == "__main__":
    main()
