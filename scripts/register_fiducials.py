"""Rule register_fiducials: Algorithm 1, the Gaussian-fit baseline and the robust mode."""

from clemalign.fiducials import METHODS, register_fiducial_case
from clemalign.figures import fiducial_figure
from clemalign.io import landmark_points, read_image, read_landmarks, read_mask, write_json
from clemalign.runner import job

smk = snakemake  # noqa: F821 - injected by Snakemake

with job(smk) as log:
    case = smk.wildcards.case
    em, em_ppu = read_image(smk.input.em)
    lm, lm_ppu = read_image(smk.input.lm)
    landmarks = read_landmarks(smk.input.landmarks)
    em_xy, lm_xy = landmark_points(landmarks)
    masks = {
        f"{key}_mask": read_mask(smk.input[f"{key}_mask"], shape, case, key)
        for key, shape in (("em", em.shape), ("lm", lm.shape))
        if f"{key}_mask" in smk.input.keys()
    }
    result = register_fiducial_case(
        em, em_ppu, lm, lm_ppu, dict(smk.params.settings), em_xy, **masks
    )
    if result.em_databar_rows:
        log.info("SEM databar: the bottom %d rows are ignored", result.em_databar_rows)
    log.info(
        "detected %d SEM beads (%d components, threshold %.4g), %d confocal beads "
        "(%d components, threshold %.4g)",
        len(result.em_beads.xy_um),
        result.em_beads.n_components,
        result.em_beads.threshold,
        len(result.lm_beads.xy_um),
        result.lm_beads.n_components,
        result.lm_beads.threshold,
    )

    summary, errors_nm = {"case": case, "methods": {}}, {}
    for method in METHODS:
        out = result.outcomes[method]
        entry = out.summary(em_xy, lm_xy)
        summary["methods"][method] = entry
        errors_nm[method] = (entry.get("mae_nm", float("nan")), entry.get("std_nm", float("nan")))
        write_json(getattr(smk.output, f"{method}_transform"), out.transform_record())
        if out.matrix is None:
            log.error("%s %s", method, out.status)
            continue
        log.info(
            "%s: %d pairs, FRE %.1f nm, landmark MAE %.1f nm, STD %.1f nm",
            method,
            entry["n_matched"],
            entry["fre_nm"],
            entry["mae_nm"],
            entry["std_nm"],
        )
    write_json(smk.output.summary, summary)
    result.pairs_table().to_csv(smk.output.pairs, index=False, float_format="%.6f")
    fiducial_figure(smk.output.figure, case, em, em_ppu, lm, lm_ppu, result, landmarks, errors_nm)
