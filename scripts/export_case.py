"""Rule export_case: a case's registration between the raw images' frames, for Fiji
(BigWarp), Icy (ec-CLEM) and ITK (clemalign.export), with the chosen route's non-rigid
refinement when ``export.nonrigid`` is set and the route has one."""

from pathlib import Path

import pandas as pd

from clemalign.export import choose_answer, export_case, raw_pair
from clemalign.figures import residuals_figure
from clemalign.io import read_json
from clemalign.routes import nonrigid_answer
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
    refined = None  # the chosen route's B-spline refinement, when it has one
    if case["track"] == "analogy" and choice.route is not None and settings["nonrigid"]:
        source, measure = choice.route.split("/", 1)
        entry = results[source]["measures"][measure].get("nonrigid")
        if entry is not None:
            refined = nonrigid_answer(entry, choice.status, choice.answers.get(choice.route, "ok"))
            log.info("non-rigid refinement of %s: %s", choice.route, refined[1])
        else:
            log.info("%s has no non-rigid refinement (registration.nonrigid.routes)", choice.route)
    record = export_case(
        smk.output.folder,
        case["name"],
        case["track"],
        choice,
        frame.get("lm_crop_origin_um", (0.0, 0.0)),  # fiducial track: the raw LM itself
        pair,
        settings["interpolation_order"],
        settings["images"],
        refined,
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
