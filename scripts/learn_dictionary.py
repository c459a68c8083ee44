"""Rule learn_dictionary: joint TEM/confocal dictionary for one test case (paper eq. 8)."""

import json

import numpy as np

from clemalign.dictionary import lasso_lars, learn_dictionary
from clemalign.figures import dictionary_figure
from clemalign.io import read_image, read_landmarks
from clemalign.preprocess import align_training_pair
from clemalign.runner import job
from clemalign.sparse_analogy import em_for_coding, training_patches

smk = snakemake  # noqa: F821 - injected by Snakemake

with job(smk) as log:
    opts, size = smk.params.analogy, smk.params.analogy["patch_size"]
    pairs = []
    for em_path, lm_path, lmk_path in zip(
        smk.input.em, smk.input.lm, smk.input.landmarks, strict=True
    ):
        em, ppu = read_image(em_path)
        lm, _ = read_image(lm_path)
        confocal, _ = align_training_pair(
            em, lm, ppu, read_landmarks(lmk_path), opts["training_alignment"]
        )
        pairs.append((em_for_coding(em, opts["em_intensity"]), confocal))
    rng = np.random.default_rng([smk.params.seed, 300, smk.params.index])
    X = training_patches(pairs, opts["n_patches"], size, rng)
    log.info(
        "training cases %s: %d patch pairs of %dx%d px (TEM %s, confocal raw [0, 1])",
        smk.params.training,
        X.shape[1],
        size,
        size,
        opts["em_intensity"],
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
