"""Rule prediction_quality: how well each predictor matches the real confocal image."""

import pandas as pd
from scipy import ndimage

from clemalign.evaluation import confocal_on_tem_grid
from clemalign.io import read_image, read_json, read_landmarks
from clemalign.metrics import normalized_mutual_information, pearson_r
from clemalign.runner import job

smk = snakemake  # noqa: F821 - injected by Snakemake

with job(smk) as log:
    rows = []
    psf_sigma_um = smk.params.psf_fwhm_um / 2.3548
    for case, em_path, lm_path, frame_path, lmk_path, pred_path, dec_path, hz_path in zip(
        smk.params.cases,
        smk.input.em,
        smk.input.lm,
        smk.input.frame,
        smk.input.landmarks,
        smk.input.predicted,
        smk.input.decoupled,
        smk.input.hertzmann,
        strict=True,
    ):
        tem, ppu = read_image(em_path)
        confocal, _ = read_image(lm_path)
        frame = read_json(frame_path)
        # synthetic data: the true confocal on the TEM grid; user data: landmark affine
        truth, reference = confocal_on_tem_grid(tem, confocal, ppu, frame, read_landmarks(lmk_path))
        predictors = {
            "sparse": read_image(pred_path)[0],
            "sparse_decoupled": read_image(dec_path)[0],
            "hertzmann": read_image(hz_path)[0],
            "inverted_tem": 1.0 - ndimage.gaussian_filter(tem, psf_sigma_um * ppu),
        }
        for name, image in predictors.items():
            rows.append(
                {
                    "case": case,
                    "predictor": name,
                    "pearson_r": pearson_r(image, truth),
                    "nmi": normalized_mutual_information(image, truth),
                    "reference": reference,
                }
            )
    table = pd.DataFrame(rows)
    table.to_csv(smk.output[0], index=False, float_format="%.4f")
    log.info("\n%s", table.to_string())
