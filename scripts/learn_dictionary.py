"""Rule learn_dictionary: joint TEM/confocal dictionary of one training set (paper eq. 8),
shared by the test cases that drew it."""

from clemalign.figures import dictionary_figure
from clemalign.runner import job
from clemalign.seeds import rng_for
from clemalign.training import learn_joint_dictionary, load_training_pairs

smk = snakemake  # noqa: F821 - injected by Snakemake

with job(smk) as log:
    opts = smk.params.analogy
    pairs = load_training_pairs(
        smk.input.em,
        smk.input.lm,
        smk.input.landmarks,
        opts["em_intensity"],
        opts["training_alignment"],
    )
    for name, status in smk.params.excluded:  # failed their check: never drawn for training
        log.info("case %s is left out of every training set: %s", name, status)
    log.info(
        "training set %s (TEM %s, confocal raw [0, 1], pairs aligned by %s)",
        smk.params.training,
        opts["em_intensity"],
        opts["training_alignment"],
    )
    dictionary = learn_joint_dictionary(
        pairs,
        patch_size=opts["patch_size"],
        n_patches=opts["n_patches"],
        n_atoms=opts["n_atoms"],
        lam=opts["dictionary_lambda"],
        rng=rng_for(smk.params.seed, "dictionary", smk.wildcards.training),
        tol=opts["dictionary_tol"],
        max_iter=opts["dictionary_max_iter"],
        training_cases=smk.params.training,
        log=log,
    )
    dictionary.params = dict(opts)  # the settings as configured
    dictionary.save(smk.output.dictionary)
    training = smk.wildcards.training
    dictionary_figure(
        smk.output.figure, dictionary.D1, dictionary.D2, dictionary.patch_size, training
    )
