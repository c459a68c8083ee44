"""Rule predict_sparse: confocal predicted from TEM (eq. 7 and the decoupled variant),
the prediction spread, and the consistently denoised confocal (sec. 4.7)."""

import numpy as np

from clemalign.io import read_image, write_json, write_tiff
from clemalign.runner import job
from clemalign.sparse_analogy import (
    JointDictionary,
    denoise_confocal,
    em_for_coding,
    predict_confocal,
    predict_decoupled,
)

smk = snakemake  # noqa: F821 - injected by Snakemake

with job(smk) as log:
    opts = smk.params.analogy
    solver = {
        "lam": opts["lambda"],
        "gamma": opts["gamma"],
        "tol": opts["eq7_tol"],
        "max_iter": opts["eq7_max_iter"],
        "log": log,
    }
    dictionary = JointDictionary.load(smk.input.dictionary)
    tem, ppu = read_image(smk.input.em)
    confocal, lm_ppu = read_image(smk.input.lm)
    decoupled = predict_decoupled(
        em_for_coding(tem, opts["em_intensity"]),
        dictionary.D1,
        dictionary.D2,
        opts["lambda"],
        dictionary.patch_size,
    )
    log.info(
        "decoupled: %.1f s, %.2f non-zeros per code",
        decoupled.info["seconds"],
        decoupled.info["nnz"],
    )
    predicted = predict_confocal(tem, dictionary, em_intensity=opts["em_intensity"], **solver)
    joint = predicted.joint
    log.info(
        "eq. 7: %d iterations (%d full lasso steps), %.1f s, optimality violation %.2e",
        joint.info["iterations"],
        joint.info["full_steps"],
        joint.info["seconds"],
        joint.info["kkt"],
    )
    denoised = denoise_confocal(confocal, dictionary, **solver)
    meta = {"case": smk.wildcards.case}
    for path, image, px_per_um in (
        (smk.output.predicted, predicted.confocal, ppu),
        (smk.output.tem_denoised, predicted.tem_denoised, ppu),
        (smk.output.decoupled, decoupled.u2, ppu),
        (smk.output.uncertainty, predicted.uncertainty, ppu),
        (smk.output.confocal_denoised, denoised.u1, lm_ppu),
    ):
        write_tiff(path, image.astype(np.float32), px_per_um, meta)
    write_json(
        smk.output.info,
        {
            "case": smk.wildcards.case,
            "training_cases": dictionary.training_cases,
            "joint": {k: v for k, v in joint.info.items() if k != "objective"},
            "joint_objective": joint.info["objective"],
            "decoupled": decoupled.info,
            "confocal_denoising": {k: v for k, v in denoised.info.items() if k != "objective"},
        },
    )
