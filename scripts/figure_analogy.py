"""Rule figure_analogy: the paper's Fig. 7 panel for one case."""

import numpy as np

from clemalign.evaluation import confocal_on_tem_grid
from clemalign.figures import analogy_figure
from clemalign.io import read_image, read_json, read_landmarks
from clemalign.runner import job

smk = snakemake  # noqa: F821 - injected by Snakemake

with job(smk):
    tem, ppu = read_image(smk.input.em)
    confocal, _ = read_image(smk.input.lm)
    frame = read_json(smk.input.frame)
    registered, _ = confocal_on_tem_grid(
        tem, confocal, ppu, frame, read_landmarks(smk.input.landmarks)
    )
    analogy_figure(
        smk.output[0],
        smk.wildcards.case,
        tem,
        registered,
        read_image(smk.input.hertzmann)[0],
        read_image(smk.input.sparse)[0],
        np.load(smk.input.source)["source"],
        ppu,
    )
