"""Rule evaluate: every registration of a case scored against its landmarks (and the
ground truth for synthetic data), with before/after overlays; a route refined by the
B-spline step gets a second row, its measure suffixed ``+bspline``."""

import numpy as np
import pandas as pd

from clemalign.confidence import ConfidenceLimits, consensus, with_consensus
from clemalign.evaluation import LONG_COLUMNS, frame_ground_truth, landmark_fit, score
from clemalign.figures import registration_figure
from clemalign.io import read_image, read_json, read_landmarks
from clemalign.routes import case_answers, moving_image, nonrigid_answer
from clemalign.runner import job
from clemalign.tables import NONRIGID_SUFFIX
from clemalign.transforms import Transform

smk = snakemake  # noqa: F821 - injected by Snakemake

with job(smk) as log:
    case = smk.wildcards.case
    tem, ppu = read_image(smk.input.em)
    fixed, _ = read_image(smk.input.lm)
    landmarks = read_landmarks(smk.input.landmarks)
    frame = read_json(smk.input.frame)
    truth = frame_ground_truth(frame)
    start = Transform.load(smk.input.start_transform).matrix
    rows, answers, errors, shown = [], {}, {}, {}

    def add(source: str, measure: str, mapping, status: str) -> None:
        scored = {"mae_um": np.nan, "std_um": np.nan, "gt_mean_um": np.nan}
        if mapping is not None:
            scored = score(mapping, landmarks, truth, tem.shape, ppu)
        rows.append({"case": case, "source": source, "measure": measure, "status": status} | scored)
        errors[(source, measure)] = scored["mae_um"]

    results = {
        s: read_json(path) for s, path in zip(smk.params.sources, smk.input.results, strict=True)
    }
    limits = ConfidenceLimits.from_config(smk.params.confidence)
    agreed = consensus(case_answers(results), tem.shape, ppu)
    log.info("consensus of the routes: %s", agreed[0] if agreed else "none (fewer than 3 answers)")
    for source, record in results.items():
        answers[source] = {}
        predicted = None
        if source in ("sparse", "sparse_denoised", "hertzmann"):
            key = "hertzmann" if source == "hertzmann" else "sparse"
            predicted = read_image(smk.input[key])[0]
        shown[source] = moving_image(source, "ssd", tem, predicted)
        add(source, "start", start, "ok")
        for measure, result in record["measures"].items():
            matrix = np.asarray(result["matrix"]) if "matrix" in result else None
            status = with_consensus(result["status"], matrix, agreed, tem.shape, ppu, limits)
            answers[source][measure] = matrix
            add(source, measure, matrix, status)
            if "nonrigid" in result:
                refined = nonrigid_answer(result["nonrigid"], status, result["status"])
                add(source, f"{measure}{NONRIGID_SUFFIX}", *refined)
    add("landmark", "fit", landmark_fit(landmarks), "ok")
    table = pd.DataFrame(rows)
    columns = LONG_COLUMNS + [c for c in table.columns if c not in LONG_COLUMNS]
    table[columns].to_csv(smk.output.errors, index=False, float_format="%.6f")
    log.info("\n%s", table.to_string())
    registration_figure(smk.output.figure, case, fixed, shown, start, answers, errors, ppu)
