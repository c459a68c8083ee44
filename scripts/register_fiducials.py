"""Rule register_fiducials: Algorithm 1, the Gaussian-fit baseline and the robust mode."""

import numpy as np
import pandas as pd

from clemalign.fiducials import METHODS, register_fiducial_case
from clemalign.figures import fiducial_figure
from clemalign.io import read_image, read_landmarks, write_json
from clemalign.metrics import landmark_errors_um, mae_std
from clemalign.runner import job
from clemalign.transforms import Transform

smk = snakemake  # noqa: F821 - injected by Snakemake

with job(smk) as log:
    case = smk.wildcards.case
    em, em_ppu = read_image(smk.input.em)
    lm, lm_ppu = read_image(smk.input.lm)
    landmarks = read_landmarks(smk.input.landmarks)
    em_xy = landmarks[["em_x_um", "em_y_um"]].to_numpy(float)
    lm_xy = landmarks[["lm_x_um", "lm_y_um"]].to_numpy(float)
    result = register_fiducial_case(em, em_ppu, lm, lm_ppu, dict(smk.params.settings), em_xy)
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

    summary, errors_nm, pair_rows = {"case": case, "methods": {}}, {}, []
    for method in METHODS:
        out = result.outcomes[method]
        entry = {"status": out.status}
        if out.matrix is not None:
            err = landmark_errors_um(out.matrix, em_xy, lm_xy) * 1000.0
            mae, std = mae_std(err)
            entry.update(
                mae_nm=mae,
                std_nm=std,
                max_nm=float(err.max()),
                n_matched=len(out.pairs_src_um),
                fre_nm=out.fre_um * 1000.0,
                hypothesis_error_nm=out.result.hypothesis_error_um * 1000.0,
                n_hypotheses=out.result.n_hypotheses,
                **out.result.info,
            )
            if out.tre_um is not None:
                entry["predicted_tre_nm_median"] = float(np.median(out.tre_um) * 1000.0)
                entry["predicted_tre_nm_max"] = float(np.max(out.tre_um) * 1000.0)
            transform = Transform(
                out.matrix,
                "em (SEM)",
                "lm (confocal)",
                f"fiducials: {method}",
                {"fre_nm": entry["fre_nm"], "n_matched": entry["n_matched"]},
            )
            transform_json = transform.to_dict()
            for (sx, sy), (tx, ty) in zip(out.pairs_src_um, out.pairs_dst_um, strict=True):
                pair_rows.append((method, sx, sy, tx, ty))
            log.info(
                "%s: %d pairs, FRE %.1f nm, landmark MAE %.1f nm, STD %.1f nm",
                method,
                entry["n_matched"],
                entry["fre_nm"],
                mae,
                std,
            )
        else:
            mae = std = float("nan")
            transform_json = {
                "matrix": None,
                "units": "um",
                "direction": "moving_to_fixed",
                "moving": "em (SEM)",
                "fixed": "lm (confocal)",
                "method": f"fiducials: {method}",
                "status": out.status,
            }
            log.error("%s %s", method, out.status)
        errors_nm[method] = (mae, std)
        summary["methods"][method] = entry
        write_json(getattr(smk.output, f"{method}_transform"), transform_json)
    write_json(smk.output.summary, summary)
    pd.DataFrame(pair_rows, columns=["method", "em_x_um", "em_y_um", "lm_x_um", "lm_y_um"]).to_csv(
        smk.output.pairs, index=False, float_format="%.6f"
    )
    fiducial_figure(smk.output.figure, case, em, em_ppu, lm, lm_ppu, result, landmarks, errors_nm)
