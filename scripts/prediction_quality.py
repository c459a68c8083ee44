"""Rule prediction_quality: how well each predictor matches the real confocal image."""

import pandas as pd
from scipy import ndimage

from clemalign.evaluation import confocal_on_tem_grid, inverted_tem_sigmas_um
from clemalign.io import read_image, read_json, read_landmarks
from clemalign.metrics import normalized_mutual_information, pearson_r
from clemalign.runner import job

smk = snakemake  # noqa: F821 - injected by Snakemake

with job(smk) as log:
    tems, ppus, confocals, references = [], [], [], []
    for em_path, lm_path, frame_path, lmk_path in zip(
        smk.input.em, smk.input.lm, smk.input.frame, smk.input.landmarks, strict=True
    ):
        tem, ppu = read_image(em_path)
        confocal, _ = read_image(lm_path)
        # synthetic data: the true confocal on the TEM grid; user data: landmark affine
        truth, reference = confocal_on_tem_grid(
            tem, confocal, ppu, read_json(frame_path), read_landmarks(lmk_path)
        )
        tems.append(tem)
        ppus.append(ppu)
        confocals.append(truth)
        references.append(reference)
    sigmas, best = inverted_tem_sigmas_um(tems, confocals, ppus, smk.params.psf_fwhm_um)
    if best:
        log.info("inverted TEM: best blur per case %s um; leave-one-out %s um", best, sigmas)
    rows = []
    for i, (case, pred_path, dec_path, hz_path) in enumerate(
        zip(
            smk.params.cases,
            smk.input.predicted,
            smk.input.decoupled,
            smk.input.hertzmann,
            strict=True,
        )
    ):
        predictors = {
            "sparse": read_image(pred_path)[0],
            "sparse_decoupled": read_image(dec_path)[0],
            "hertzmann": read_image(hz_path)[0],
            "inverted_tem": 1.0 - ndimage.gaussian_filter(tems[i], sigmas[i] * ppus[i]),
        }
        for name, image in predictors.items():
            rows.append(
                {
                    "case": case,
                    "predictor": name,
                    "pearson_r": pearson_r(image, confocals[i]),
                    "nmi": normalized_mutual_information(image, confocals[i]),
                    "reference": references[i],
                }
            )
    table = pd.DataFrame(rows)
    table.to_csv(smk.output[0], index=False, float_format="%.4f")
    log.info("\n%s", table.to_string())
