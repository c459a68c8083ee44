"""Rule predict_sparse: confocal predicted from TEM (eq. 7 and the decoupled variant),
the prediction spread, and the consistently denoised confocal (sec. 4.7)."""

import numpy as np

from clemalign.io import read_image, write_json, write_tiff
from clemalign.runner import job
from clemalign.sparse_analogy import em_for_coding, predict_decoupled, reconstruct, scale_unit

smk = snakemake  # noqa: F821 - injected by Snakemake

with job(smk) as log:
    opts = smk.params.analogy
    size, lam, gamma = opts["patch_size"], opts["lambda"], opts["gamma"]
    dictionary = np.load(smk.input.dictionary)
    D1, D2 = dictionary["D1"], dictionary["D2"]
    tem, ppu = read_image(smk.input.em)
    tem = em_for_coding(tem, opts["em_intensity"])  # as the dictionary was learned
    confocal, lm_ppu = read_image(smk.input.lm)
    decoupled = predict_decoupled(tem, D1, D2, lam, size)
    log.info(
        "decoupled: %.1f s, %.2f non-zeros per code",
        decoupled.info["seconds"],
        decoupled.info["nnz"],
    )
    joint = reconstruct(tem, D1, D2, lam, gamma, size, opts["eq7_tol"], opts["eq7_max_iter"], log)
    log.info(
        "eq. 7: %d iterations (%d full lasso steps), %.1f s, optimality violation %.2e",
        joint.info["iterations"],
        joint.info["full_steps"],
        joint.info["seconds"],
        joint.info["kkt"],
    )
    denoised = reconstruct(
        confocal, D2, None, lam, gamma, size, opts["eq7_tol"], opts["eq7_max_iter"], log
    )
    meta = {"case": smk.wildcards.case}
    write_tiff(smk.output.predicted, joint.u2.astype(np.float32), ppu, meta)
    tem_denoised = em_for_coding(joint.u1, opts["em_intensity"])  # back to TEM contrast
    write_tiff(smk.output.tem_denoised, tem_denoised.astype(np.float32), ppu, meta)
    write_tiff(smk.output.decoupled, decoupled.u2.astype(np.float32), ppu, meta)
    write_tiff(smk.output.uncertainty, scale_unit(joint.spread).astype(np.float32), ppu, meta)
    write_tiff(smk.output.confocal_denoised, denoised.u1.astype(np.float32), lm_ppu, meta)
    write_json(
        smk.output.info,
        {
            "case": smk.wildcards.case,
            "training_cases": dictionary["training_cases"].tolist(),
            "joint": {k: v for k, v in joint.info.items() if k != "objective"},
            "joint_objective": joint.info["objective"],
            "decoupled": decoupled.info,
            "confocal_denoising": {k: v for k, v in denoised.info.items() if k != "objective"},
        },
    )
