"""Rule table2: the paper's Table 2 (landmark errors after registration, um) for every case."""

import pandas as pd

from clemalign.evaluation import LONG_COLUMNS
from clemalign.figures import registration_errors_plot
from clemalign.runner import job
from clemalign.tables import status_notes, table2, write_table

smk = snakemake  # noqa: F821 - injected by Snakemake

with job(smk) as log:
    errors = pd.concat([pd.read_csv(path) for path in smk.input], ignore_index=True)
    long = errors[errors["measure"] != "start"][LONG_COLUMNS]
    long.to_csv(smk.output.long, index=False, float_format="%.6f")
    write_table(
        table2(long),
        smk.output.csv,
        smk.output.md,
        smk.output.tex,
        "Table 2: landmark errors (um) after affine registration, TEM to confocal "
        f"({smk.params.px_per_um:g} px/um). MAE and STD of the absolute landmark errors per case; "
        "IA = image analogies; Landmark fit = the affine least-squares fit to the landmarks.",
        digits=3,
        notes=status_notes(long, lambda r: f"{r.case} {r.source} {r.measure}"),
    )
    registration_errors_plot(smk.output.plot, long)
    log.info("\n%s", long.to_string())
