"""Rule capture_range: a case's sources registered again from seeded random
perturbations of the start; does each measure come back to its unperturbed answer?"""

import numpy as np
import pandas as pd

from clemalign.confidence import ConfidenceLimits, consensus
from clemalign.evaluation import frame_ground_truth
from clemalign.io import read_json, read_landmarks
from clemalign.routes import (
    capture_trials,
    case_answers,
    load_registration_images,
    moving_image,
    source_files,
)
from clemalign.runner import job
from clemalign.search import StartSearch
from clemalign.seeds import rng_for

smk = snakemake  # noqa: F821 - injected by Snakemake


def trials_of(case, source, answer, images, agreed, truth, limits):
    """Every protocol's perturbed registrations of one source, as one table."""
    capture = smk.params.capture
    answers = {  # this route's own answers, the targets of "coming back"
        m: np.asarray(r["matrix"]) for m, r in answer["measures"].items() if "matrix" in r
    }
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
            search=StartSearch.maybe(smk.params.start_search),
        )
        tables.append(table.assign(protocol=protocol["name"]))
    trials = pd.concat(tables, ignore_index=True)
    trials.insert(0, "source", source)
    trials.insert(0, "case", case)
    trials.insert(0, "protocol", trials.pop("protocol"))
    return trials


with job(smk) as log:
    case = smk.wildcards.case
    truth = frame_ground_truth(read_json(smk.input.frame))
    sources = smk.params.sources
    results = {s: read_json(path) for s, path in zip(sources, smk.input.answers, strict=True)}
    limits = ConfidenceLimits.from_config(smk.params.confidence)
    agreed = None
    for source, output in zip(smk.params.tested, smk.output, strict=True):
        files = source_files(source, dict(smk.input.items()))
        images = load_registration_images(case, smk.input.em, *files)
        if agreed is None:  # the consensus of every route's answer, on the TEM grid
            agreed = consensus(case_answers(results), images.tem.shape, images.px_per_um)
        trials = trials_of(case, source, results[source], images, agreed, truth, limits)
        trials.to_csv(output, index=False, float_format="%.6f")
        means = trials.groupby(["protocol", "measure"])[["success", "error_um"]].mean()
        log.info("%s\n%s", source, means.to_string())
