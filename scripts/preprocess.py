"""Rule preprocess_analogy / preprocess_fiducial: bring one case into its working frame."""

import numpy as np

from clemalign.errors import CaseError
from clemalign.io import read_json, write_json, write_landmarks, write_tiff
from clemalign.preprocess import (
    load_case_inputs,
    minimum_size_um,
    prepare_analogy_pair,
    select_channel,
    to_unit_float,
)
from clemalign.runner import job
from clemalign.transforms import Transform

smk = snakemake  # noqa: F821 - injected by Snakemake


with job(smk) as log:
    case = smk.params.case
    minimum = minimum_size_um(
        case, smk.params.patch_size, smk.params.preprocess["px_per_um"], smk.params.fiducials
    )
    raw = load_case_inputs(case, *minimum)
    for note in raw.notes:  # repaired or rescaled input: the log and stderr say what was done
        log.warning(note)
    frame = {
        "case": case["name"],
        "track": case["track"],
        "em_source": case["em"],
        "lm_source": case["lm"],
        "channel": case["channel"],
        "input_notes": raw.notes,
    }
    truth = read_json(smk.input.ground_truth) if "ground_truth" in smk.input.keys() else None
    if case["track"] == "analogy":
        opts = smk.params.preprocess
        try:
            pair = prepare_analogy_pair(
                raw.em,
                raw.em_px_per_um,
                raw.lm,
                raw.lm_px_per_um,
                raw.landmarks,
                case["channel"],
                opts["px_per_um"],
                opts["margin_um"],
            )
        except ValueError as error:  # too few landmarks, or a footprint off the confocal
            raise CaseError(case["name"], str(error), case["landmarks"]) from error
        write_tiff(smk.output.em, pair.em, pair.px_per_um, {"case": case["name"], "frame": "em"})
        write_tiff(
            smk.output.lm, pair.lm, pair.px_per_um, {"case": case["name"], "frame": "lm crop"}
        )
        write_landmarks(smk.output.landmarks, pair.landmarks)
        pair.start.save(smk.output.start)
        frame.update(pair.frame_record(truth))
        log.info(
            "TEM %s -> %s, confocal crop %s um at origin %s um, start det %.4f",
            raw.em.shape,
            pair.em.shape,
            np.round(pair.crop_size_um, 2),
            np.round(pair.crop_origin_um, 2),
            np.linalg.det(pair.start.matrix[:2, :2]),
        )
    else:
        em = to_unit_float(select_channel(raw.em, "gray"))
        lm = to_unit_float(select_channel(raw.lm, case["channel"]))
        write_tiff(smk.output.em, em, raw.em_px_per_um, {"case": case["name"], "frame": "em"})
        write_tiff(smk.output.lm, lm, raw.lm_px_per_um, {"case": case["name"], "frame": "lm"})
        write_landmarks(smk.output.landmarks, raw.landmarks)
        frame.update(
            em_px_per_um=raw.em_px_per_um,
            lm_px_per_um=raw.lm_px_per_um,
            em_shape=em.shape,
            lm_shape=lm.shape,
        )
        if truth is not None:
            frame["ground_truth"] = Transform.from_dict(truth["transform"]).to_dict()
        log.info(
            "SEM %s at %.4g px/um, confocal %s at %.4g px/um, %d landmark pairs",
            em.shape,
            raw.em_px_per_um,
            lm.shape,
            raw.lm_px_per_um,
            len(raw.landmarks),
        )
    write_json(smk.output.frame, frame)
