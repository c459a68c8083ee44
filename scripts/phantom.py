"""Rule phantom_analogy / phantom_fiducial: generate one synthetic case."""

from pathlib import Path

from clemalign.phantom import make_analogy_case, make_fiducial_case
from clemalign.phantom.crowded import make_crowded_case
from clemalign.runner import job

smk = snakemake  # noqa: F821 - injected by Snakemake

with job(smk) as log:
    if smk.rule == "phantom_analogy":
        case = make_analogy_case(
            smk.params.seed, smk.params.index, dict(smk.params.phantom), smk.wildcards.case
        )
    elif smk.params.crowded:
        case = make_crowded_case(smk.params.seed, smk.params.index, smk.wildcards.case)
    else:
        case = make_fiducial_case(
            smk.params.seed, smk.params.index, dict(smk.params.phantom), smk.wildcards.case
        )
    case.write(str(Path(smk.output.em).parent))
    log.info(
        "EM %s at %.4g px/um, LM %s at %.4g px/um, %d landmark pairs",
        case.em.shape,
        case.em_px_per_um,
        case.lm.shape,
        case.lm_px_per_um,
        len(case.landmarks),
    )
