"""Rule table2: the paper's Table 2 (landmark errors after registration, um) for every case,
and what the B-spline refinement changed (``tables/nonrigid``)."""

import pandas as pd

from clemalign.evaluation import LONG_COLUMNS
from clemalign.figures import registration_errors_plot
from clemalign.io import read_case_table, read_json
from clemalign.runner import job
from clemalign.tables import (
    concat_rows,
    failed_case_rows,
    nonrigid_table,
    status_notes,
    table2,
    write_table,
)

smk = snakemake  # noqa: F821 - injected by Snakemake

with job(smk) as log:
    found = [read_case_table(path) for path in smk.input.errors]
    errors = pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=LONG_COLUMNS)
    long = errors[errors["measure"] != "start"][LONG_COLUMNS]
    keys = [{"source": s, "measure": m} for s, m in smk.params.routes]
    failed = failed_case_rows([read_json(p) for p in smk.input.checks], keys, LONG_COLUMNS)
    long = concat_rows(long, failed)
    long = long.sort_values("case", kind="stable", ignore_index=True)  # by name, as everywhere
    long.to_csv(smk.output.long, index=False, float_format="%.6f")
    write_table(
        table2(long),
        smk.output.csv,
        smk.output.md,
        smk.output.tex,
        "Table 2: landmark errors (um) after registration, TEM to confocal "
        f"({smk.params.px_per_um:g} px/um). MAE and STD of the absolute landmark errors per case; "
        "IA = image analogies; + B-spline = the affine answer refined by the non-rigid step; "
        "Landmark fit = the affine least-squares fit to the landmarks.",
        digits=3,
        notes=status_notes(long, lambda r: f"{r.case} {r.source} {r.measure}"),
    )
    registration_errors_plot(smk.output.plot, long)
    log.info("\n%s", long.to_string())
    frames = [read_json(p) for p in smk.input.frames]
    floors = {f["case"]: f["nonrigid_floor_rms_um"] for f in frames if "nonrigid_floor_rms_um" in f}
    refined = nonrigid_table(long, floors)
    write_table(
        refined,
        smk.output.nonrigid_csv,
        smk.output.nonrigid_md,
        smk.output.nonrigid_tex,
        "Non-rigid refinement (registration.nonrigid): per case and refined route, the RMS "
        "of what no affine explains (synthetic cases), the mean distance (um) over the TEM "
        "grid to the ground truth after the affine and after the B-spline step, its change "
        "(%), and the landmark MAE (um) of both. A refinement that is not ok shows its "
        "status. Without ground truth (your own data) only the landmark columns are filled."
        + ("" if len(refined) else " No route was refined (registration.nonrigid is null)."),
        digits=3,
    )
    log.info("\n%s", refined.to_string())
