"""Rule capture_range: one (case, source) registered again from seeded random
perturbations of its start; does each measure come back to its unperturbed answer?"""

import numpy as np

from clemalign.evaluation import capture_trials, moving_image
from clemalign.io import read_image, read_json, read_landmarks
from clemalign.runner import job
from clemalign.transforms import Transform

smk = snakemake  # noqa: F821 - injected by Snakemake

with job(smk) as log:
    case, source = smk.wildcards.case, smk.wildcards.source
    opts, capture = smk.params.registration, smk.params.capture
    tem, ppu = read_image(smk.input.em)
    fixed, _ = read_image(smk.input.get("fixed_denoised", smk.input.lm))
    predicted = read_image(smk.input.predicted)[0] if "predicted" in smk.input.keys() else None
    weights = None
    if "uncertainty" in smk.input.keys():
        weights = 1.0 - read_image(smk.input.uncertainty)[0]
    frame = read_json(smk.input.frame)
    truth = Transform.from_dict(frame["ground_truth"]).matrix if "ground_truth" in frame else None
    answer = read_json(smk.input.answer)
    answers = {
        m: np.asarray(r["matrix"]) for m, r in answer["measures"].items() if r["status"] == "ok"
    }
    # The same perturbations for every source of a case: seeded by the case only.
    rng = np.random.default_rng([smk.params.seed, 600, smk.params.index])
    trials = capture_trials(
        lambda measure: moving_image(source, measure, tem, predicted),
        fixed,
        np.asarray(answer["start"]),
        answers,
        ppu,
        rng,
        capture["trials"],
        capture,
        capture["success_um"],
        read_landmarks(smk.input.landmarks),
        truth,
        weights,
        {"levels": opts["levels"], "bins": opts["bins"]},
    )
    trials.insert(0, "source", source)
    trials.insert(0, "case", case)
    trials.to_csv(smk.output[0], index=False, float_format="%.6f")
    log.info("\n%s", trials.groupby("measure")[["success", "error_um"]].mean().to_string())
