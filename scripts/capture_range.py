"""Rule capture_range: one (case, source) registered again from seeded random
perturbations of its start; does each measure come back to its unperturbed answer?"""

import numpy as np
import pandas as pd

from clemalign.confidence import ConfidenceLimits, consensus
from clemalign.evaluation import frame_ground_truth
from clemalign.io import read_json, read_landmarks
from clemalign.routes import capture_trials, case_answers, load_registration_images, moving_image
from clemalign.runner import job
from clemalign.seeds import rng_for

smk = snakemake  # noqa: F821 - injected by Snakemake

with job(smk) as log:
    case, source = smk.wildcards.case, smk.wildcards.source
    capture = smk.params.capture
    images = load_registration_images(
        case,
        smk.input.em,
        smk.input.get("fixed_denoised", smk.input.lm),
        smk.input.get("predicted"),
        smk.input.get("uncertainty"),
    )
    frame = read_json(smk.input.frame)
    truth = frame_ground_truth(frame)
    results = {
        s: read_json(path) for s, path in zip(smk.params.sources, smk.input.answers, strict=True)
    }
    answer = results[source]
    answers = {  # this route's own answers, the targets of "coming back"
        m: np.asarray(r["matrix"]) for m, r in answer["measures"].items() if "matrix" in r
    }
    limits = ConfidenceLimits.from_config(smk.params.confidence)
    agreed = consensus(case_answers(results), images.tem.shape, images.px_per_um)
    tables = []
    for protocol in capture["protocols"]:
        # The same perturbations for every source of a case: seeded by case and protocol.
        rng = rng_for(smk.params.seed, f"capture_range/{protocol['name']}", case)
        table = capture_trials(
            lambda measure: moving_image(source, measure, images.tem, images.predicted),
            images.fixed,
            np.asarray(answer["start"]),
            answers,
            images.px_per_um,
            rng,
            protocol.get("trials", capture["trials"]),
            protocol,
            capture["success_um"],
            read_landmarks(smk.input.landmarks),
            truth,
            images.weights,
            smk.params.optimiser,
            confidence=limits,
            chance={m: answer["measures"][m]["confidence"]["chance"] for m in answers},
            agreed=agreed,
        )
        tables.append(table.assign(protocol=protocol["name"]))
    trials = pd.concat(tables, ignore_index=True)
    trials.insert(0, "source", source)
    trials.insert(0, "case", case)
    trials.insert(0, "protocol", trials.pop("protocol"))
    trials.to_csv(smk.output[0], index=False, float_format="%.6f")
    means = trials.groupby(["protocol", "measure"])[["success", "error_um"]].mean()
    log.info("\n%s", means.to_string())
