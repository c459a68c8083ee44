"""Rule figure_case: raw and preprocessed images of one case, with landmarks."""

from clemalign.figures import case_figure
from clemalign.io import read_image, read_json, read_landmarks
from clemalign.preprocess import load_case_inputs
from clemalign.runner import job
from clemalign.transforms import Transform, translation_matrix

smk = snakemake  # noqa: F821 - injected by Snakemake

with job(smk):
    case = smk.params.case
    raw = load_case_inputs(case)
    frame = read_json(smk.input.frame)
    em, em_ppu = read_image(smk.input.pre_em)
    lm, lm_ppu = read_image(smk.input.pre_lm)
    start = truth = None
    if "start" in smk.input.keys():  # analogy track: crop frame -> raw confocal frame
        to_raw = translation_matrix(*frame["lm_crop_origin_um"])
        start = to_raw @ Transform.load(smk.input.start).matrix
    if "ground_truth" in smk.input.keys():
        truth = Transform.from_dict(read_json(smk.input.ground_truth)["transform"]).matrix
    case_figure(
        smk.output[0],
        case["name"],
        case["track"],
        raw.em,
        raw.em_px_per_um,
        raw.lm,
        raw.lm_px_per_um,
        raw.landmarks,
        em,
        lm,
        em_ppu,
        lm_ppu,
        read_landmarks(smk.input.pre_landmarks),
        start,
        truth,
    )
