"""Rule register: one source (moving image on the TEM grid) against the confocal crop,
under every configured measure, from the landmark-fitted similarity start (searched about
first when ``registration.start_search`` is set); the routes of ``registration.nonrigid``
are then refined by a B-spline deformation."""

from clemalign.confidence import ConfidenceLimits
from clemalign.io import write_json
from clemalign.routes import (
    NonrigidOptions,
    load_registration_images,
    moving_image,
    refine_nonrigid,
    register_measures,
    source_files,
    source_measures,
)
from clemalign.runner import job
from clemalign.search import StartSearch
from clemalign.seeds import rng_for
from clemalign.transforms import Transform

smk = snakemake  # noqa: F821 - injected by Snakemake

with job(smk) as log:
    case, source = smk.wildcards.case, smk.wildcards.source
    opts = smk.params.registration
    # the uncertainty gives eq. 12's weights: trust where the prediction agrees
    fixed_path, predicted, uncertainty = source_files(source, dict(smk.input.items()))
    images = load_registration_images(case, smk.input.em, fixed_path, predicted, uncertainty)
    start = Transform.load(smk.input.start).matrix
    measures = source_measures(source, opts["measures"], opts["weighted_ssd"])

    def moving_for(measure: str):
        return moving_image(source, measure, images.tem, images.predicted)

    results = register_measures(
        moving_for,
        images.fixed,
        start,
        measures,
        images.px_per_um,
        images.weights,
        opts["optimiser"],
        confidence=ConfidenceLimits.from_config(opts["confidence"]),
        rng=rng_for(smk.params.seed, f"confidence/{source}", case),
        search=StartSearch.maybe(opts["start_search"]),
    )
    nonrigid = NonrigidOptions.maybe(opts["nonrigid"])
    if nonrigid is not None:
        refine_nonrigid(
            results,
            moving_for,
            images.fixed,
            images.px_per_um,
            nonrigid,
            source,
            images.weights,
            opts["optimiser"],
        )
    for measure, result in results.items():
        log.info("%s %s: %s %s", source, measure, result["status"], result.get("info", ""))
        if "nonrigid" in result:
            refined = result["nonrigid"]
            log.info(
                "%s %s + B-spline: %s %s",
                source,
                measure,
                refined["status"],
                refined.get("info", ""),
            )
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
