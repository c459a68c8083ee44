"""Rule predict_hertzmann: the confocal predicted from the TEM by the original image
analogies (Hertzmann et al. 2001; paper Algorithm 2), trained on the same pairs as the
sparse method."""

import numpy as np

from clemalign.hertzmann import image_analogy
from clemalign.io import read_image, write_json, write_tiff
from clemalign.runner import job
from clemalign.sparse_analogy import em_for_coding
from clemalign.training import load_training_pairs

smk = snakemake  # noqa: F821 - injected by Snakemake

with job(smk) as log:
    opts, hz = smk.params.analogy, smk.params.hertzmann
    pairs = load_training_pairs(
        smk.input.em,
        smk.input.lm,
        smk.input.landmarks,
        opts["em_intensity"],
        opts["training_alignment"],
    )
    tem, ppu = read_image(smk.input.test_em)
    result = image_analogy(
        em_for_coding(tem, opts["em_intensity"]),  # as the sparse method sees it
        pairs,
        patch_size=opts["patch_size"],
        levels=hz["levels"],
        kappa=hz["kappa"],
        max_training_px=hz["max_training_px"],
        seed=smk.params.seed,
    )
    log.info("training cases %s; %s", smk.params.training, result.info)
    meta = {"case": smk.wildcards.case}
    write_tiff(smk.output.predicted, result.image.astype(np.float32), ppu, meta)
    np.savez_compressed(
        smk.output.source,
        source=result.source,
        coherent=result.coherent,
        training_cases=np.array(smk.params.training),
    )
    write_json(
        smk.output.info,
        {"case": smk.wildcards.case, "training_cases": smk.params.training, **result.info},
    )
