"""Rule figure_analogy: the paper's Fig. 7 panel for one case."""

import numpy as np

from clemalign.figures import analogy_figure
from clemalign.io import read_image, read_json, read_landmarks
from clemalign.runner import job
from clemalign.sparse_analogy import confocal_in_em_frame
from clemalign.transforms import Transform, warp_image

smk = snakemake  # noqa: F821 - injected by Snakemake

with job(smk):
    tem, ppu = read_image(smk.input.em)
    confocal, _ = read_image(smk.input.lm)
    frame = read_json(smk.input.frame)
    if "ground_truth" in frame:
        gt = Transform.from_dict(frame["ground_truth"]).matrix
        registered = warp_image(confocal, ppu, np.linalg.inv(gt), tem.shape, ppu)
    else:
        registered = confocal_in_em_frame(tem, confocal, ppu, read_landmarks(smk.input.landmarks))
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
