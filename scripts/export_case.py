"""Rule export_case: a case's registration between the raw images' frames, for Fiji
(BigWarp), Icy (ec-CLEM) and ITK (clemalign.export)."""

from pathlib import Path

import pandas as pd

from clemalign.export import choose_answer, export_case, raw_pair
from clemalign.figures import residuals_figure
from clemalign.io import read_json
from clemalign.runner import job

smk = snakemake  # noqa: F821 - injected by Snakemake

with job(smk) as log:
    case = smk.params.case
    settings = dict(smk.params.export)
    frame = read_json(smk.input.frame)
    names, paths = smk.params.names, smk.input.results
    results = {name: read_json(path) for name, path in zip(names, paths, strict=True)}
    choice = choose_answer(case["track"], results, frame, settings, smk.params.confidence)
    log.info("route %s -> %s (%s): %s", choice.requested, choice.route, choice.how, choice.status)
    pair = raw_pair(case)
    record = export_case(
        smk.output.folder,
        case["name"],
        case["track"],
        choice,
        frame.get("lm_crop_origin_um", (0.0, 0.0)),  # fiducial track: the raw LM itself
        pair,
        settings["interpolation_order"],
        settings["images"],
    )
    if record["matrix"] is None:
        log.warning("nothing exported: %s", record["status"])
    else:
        log.info("raw EM um -> raw LM um: %s; %s", record["matrix"][:2], record["summary"])
    for name in record["files"]:
        log.info("wrote %s", name)
    table = Path(smk.output.folder) / "residuals.csv"
    residuals_figure(
        smk.output.figure,
        pair.lm,
        pair.lm_px_per_um,
        pd.read_csv(table) if table.is_file() else None,
        f"{case['name']}: exported {choice.route} ({record['status']})",
    )
