"""Rule register: one source (moving image on the TEM grid) against the confocal crop,
under every configured measure, from the landmark-fitted similarity start."""

from clemalign.evaluation import moving_image, register_measures, source_measures
from clemalign.io import read_image, write_json
from clemalign.runner import job
from clemalign.transforms import Transform

smk = snakemake  # noqa: F821 - injected by Snakemake

with job(smk) as log:
    case, source = smk.wildcards.case, smk.wildcards.source
    opts = smk.params.registration
    tem, ppu = read_image(smk.input.em)
    fixed_path = smk.input.get("fixed_denoised", smk.input.lm)
    fixed, fixed_ppu = read_image(fixed_path)
    if abs(fixed_ppu - ppu) > 1e-6 * ppu:
        raise ValueError(f"case {case}: {fixed_path} is at {fixed_ppu} px/um, the TEM at {ppu}")
    predicted = read_image(smk.input.predicted)[0] if "predicted" in smk.input.keys() else None
    weights = None
    if "uncertainty" in smk.input.keys():  # eq. 12: trust where the prediction agrees
        weights = 1.0 - read_image(smk.input.uncertainty)[0]
    start = Transform.load(smk.input.start).matrix
    measures = source_measures(source, opts["measures"], opts["weighted_ssd"])
    results = register_measures(
        lambda measure: moving_image(source, measure, tem, predicted),
        fixed,
        start,
        measures,
        ppu,
        weights,
        {"levels": opts["levels"], "bins": opts["bins"]},
    )
    for measure, result in results.items():
        log.info("%s %s: %s %s", source, measure, result["status"], result.get("info", ""))
    write_json(
        smk.output[0],
        {
            "case": case,
            "source": source,
            "fixed": fixed_path,
            "units": "um",
            "direction": "moving_to_fixed",
            "moving": "TEM frame",
            "start": start.tolist(),
            "measures": results,
        },
    )
