"""Rule table1: Table 1 of the paper (fiducial registration errors, nm) from every case."""

import pandas as pd

from clemalign.fiducials import METHODS
from clemalign.io import read_json
from clemalign.runner import job
from clemalign.tables import concat_rows, failed_case_rows, status_notes, table1, write_table

smk = snakemake  # noqa: F821 - injected by Snakemake
LONG = ["case", "method", "mae_nm", "std_nm", "n_matched", "status"]

with job(smk) as log:
    rows = []
    for path in smk.input.summaries:
        summary = read_json(path)
        for method in METHODS:
            entry = summary["methods"][method]
            rows.append(
                {
                    "case": summary["case"],
                    "method": method,
                    "mae_nm": entry.get("mae_nm", float("nan")),
                    "std_nm": entry.get("std_nm", float("nan")),
                    "n_matched": entry.get("n_matched", 0),
                    "status": entry["status"],
                }
            )
    checks = [read_json(path) for path in smk.input.checks]
    failed = failed_case_rows(checks, [{"method": m} for m in METHODS], LONG, {"n_matched": 0})
    long = concat_rows(pd.DataFrame(rows, columns=LONG), failed)
    long = long.sort_values("case", kind="stable", ignore_index=True)  # by name, as everywhere
    pixels_nm = [1000.0 / read_json(path)["lm_px_per_um"] for path in smk.input.frames]
    lo, hi = f"{min(pixels_nm, default=0):.3g}", f"{max(pixels_nm, default=0):.3g}"
    pixel_text = lo if lo == hi else f"{lo}-{hi}"
    long.to_csv(smk.output.long, index=False, float_format="%.3f")
    write_table(
        table1(long),
        smk.output.csv,
        smk.output.md,
        smk.output.tex,
        "Table 1: landmark-based registration errors (nm), SEM to confocal "
        f"(confocal pixel {pixel_text} nm). MAE and STD of the absolute landmark errors.",
        notes=status_notes(long, lambda r: f"{r.case} {r.method}"),
    )
    log.info("\n%s", long.to_string())
