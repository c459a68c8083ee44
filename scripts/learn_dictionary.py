"""Rule learn_dictionary: joint TEM/confocal dictionary for one test case (paper eq. 8)."""

import json

import numpy as np

from clemalign.dictionary import lasso_lars, learn_dictionary
from clemalign.figures import dictionary_figure
from clemalign.preprocess import load_training_pairs
from clemalign.runner import job
from clemalign.seeds import rng_for
from clemalign.sparse_analogy import training_patches

smk = snakemake  # noqa: F821 - injected by Snakemake

with job(smk) as log:
    opts, size = smk.params.analogy, smk.params.analogy["patch_size"]
    pairs = load_training_pairs(
        smk.input.em,
        smk.input.lm,
        smk.input.landmarks,
        opts["em_intensity"],
        opts["training_alignment"],
    )
    rng = rng_for(smk.params.seed, "dictionary", smk.wildcards.case)
    X = training_patches(pairs, opts["n_patches"], size, rng)
    log.info(
        "training cases %s: %d patch pairs of %dx%d px (TEM %s, confocal raw [0, 1], "
        "pairs aligned by %s)",
        smk.params.training,
        X.shape[1],
        size,
        size,
        opts["em_intensity"],
        opts["training_alignment"],
    )
    learned = learn_dictionary(
        X,
        opts["n_atoms"],
        opts["lambda"],
        rng,
        opts["dictionary_tol"],
        opts["dictionary_max_iter"],
        log,
    )
    usage = (lasso_lars(X, learned.D, opts["lambda"]) != 0).sum(axis=1)
    order = np.argsort(-usage, kind="stable")
    D = learned.D[:, order]
    m = size * size
    np.savez_compressed(
        smk.output.dictionary,
        D1=D[:m],
        D2=D[m:],
        usage=usage[order],
        history=np.array(learned.history),
        converged=learned.converged,
        training_cases=np.array(smk.params.training),
        params=json.dumps({k: opts[k] for k in sorted(opts)}),
    )
    dictionary_figure(smk.output.figure, D[:m], D[m:], size, smk.wildcards.case)
