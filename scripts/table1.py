"""Rule table1: Table 1 of the paper (fiducial registration errors, nm) from every case."""

import pandas as pd

from clemalign.fiducials import METHODS
from clemalign.io import read_json
from clemalign.runner import job
from clemalign.tables import status_notes, table1, write_table

smk = snakemake  # noqa: F821 - injected by Snakemake

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
    long = pd.DataFrame(rows)
    pixels_nm = [1000.0 / read_json(path)["lm_px_per_um"] for path in smk.input.frames]
    lo, hi = f"{min(pixels_nm):.3g}", f"{max(pixels_nm):.3g}"
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
