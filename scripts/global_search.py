"""Rule global_search: a case registered with no start at all (no landmarks), as a user
with only the two images and their pixel sizes would: the TEM (inverted) and the sparse
prediction searched over the whole raw confocal field (clemalign.search.global_search),
then scored against the landmarks and the ground truth, which the search never saw. When
registration.nonrigid refines the route the search ends with (raw TEM under its measure),
the answer is refined by the B-spline step too and scored the same way."""

import time

import numpy as np

from clemalign.confidence import ConfidenceLimits
from clemalign.evaluation import score, truth_error_um
from clemalign.io import landmark_points, read_image, read_json, write_json
from clemalign.metrics import landmark_errors_um, mae_std
from clemalign.preprocess import load_case_inputs, select_channel, to_unit_float
from clemalign.routes import NonrigidOptions, refine_nonrigid_in_field
from clemalign.runner import job
from clemalign.search import SearchRange, global_search, global_status
from clemalign.transforms import DeformationField

smk = snakemake  # noqa: F821 - injected by Snakemake

with job(smk) as log:
    case = smk.params.case
    opts = dict(smk.params.search)
    min_gap, measure = opts.pop("min_gap"), opts.pop("measure")
    tem, ppu = read_image(smk.input.em)  # the raw TEM resampled whole: the raw EM frame
    raw = load_case_inputs(case)
    confocal = to_unit_float(select_channel(raw.lm, case["channel"]))  # the whole field
    probes = []
    if "sparse" in smk.input.keys():
        probes.append(np.asarray(read_image(smk.input.sparse)[0], float))
    started = time.perf_counter()
    found = global_search(
        1.0 - tem,
        confocal,
        moving_px_per_um=ppu,
        fixed_px_per_um=raw.lm_px_per_um,
        search=SearchRange.from_config(opts | {"crop_margin_um": smk.params.crop_margin_um}),
        measure=measure,
        refine_moving=tem if measure == "mi" else None,
        options=dict(smk.params.optimiser),
        more_probes=probes,
    )
    seconds = time.perf_counter() - started
    status = global_status(found, ConfidenceLimits.from_config(smk.params.confidence), min_gap)
    em_xy, lm_xy = landmark_points(raw.landmarks)  # scores only: the search never saw them
    mae, std = mae_std(landmark_errors_um(found.matrix, em_xy, lm_xy))
    truth = None
    if case.get("ground_truth"):
        record = read_json(case["ground_truth"])
        if "deformation" in record:
            truth = DeformationField.from_dict(record["deformation"])
    gt = truth_error_um(found.matrix, truth, tem.shape, ppu) if truth is not None else None
    nonrigid = None
    options = NonrigidOptions.maybe(smk.params.nonrigid)
    if options is not None and f"raw/{measure}" in options.routes and measure == "mi":
        nonrigid, field = refine_nonrigid_in_field(
            tem,
            confocal,
            found.matrix,
            status,
            moving_px_per_um=ppu,
            fixed_px_per_um=raw.lm_px_per_um,
            crop_margin_um=smk.params.crop_margin_um,
            options=options,
            measure=measure,
            optimiser=dict(smk.params.optimiser),
        )
        if field is not None:  # scored in the raw frames (em_* TEM um, lm_* confocal um)
            scored = score(field, raw.landmarks, truth, tem.shape, ppu)
            nonrigid |= {k: v if np.isfinite(v) else None for k, v in scored.items()}
            log.info(
                "B-spline: %s, landmark MAE %.3f um, ground truth %s um",
                nonrigid["status"],
                scored["mae_um"],
                "n/a" if truth is None else f"{scored['gt_mean_um']:.3f}",
            )
    best = found.candidates[0]
    log.info(
        "%s: landmark MAE %.3f um, ground truth %s um, gap %.3f, %.1f s",
        status,
        mae,
        "n/a" if gt is None else f"{gt:.3f}",
        found.gap,
        seconds,
    )
    write_json(
        smk.output[0],
        {
            "case": case["name"],
            "direction": "moving_to_fixed",
            "frames": "raw TEM um -> raw confocal um (whole field)",
            "matrix": np.asarray(found.matrix).tolist(),
            "status": status,
            "probes": ["inverted TEM"] + (["sparse prediction"] if probes else []),
            "measure": measure,
            "similarity": found.similarity,
            "gap": found.gap if np.isfinite(found.gap) else None,
            "winner": {k: best[k] for k in ("rotation_deg", "scale", "mirrored", "ncc")},
            "candidates": len(found.candidates),
            "mae_um": mae,
            "std_um": std,
            "gt_mean_um": gt,
            "seconds": seconds,
            "nonrigid": nonrigid,  # null: the route is not refined (registration.nonrigid)
        },
    )
