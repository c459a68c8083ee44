"""Rule global_table: every case registered with no start (rule global_search), scored."""

import pandas as pd

from clemalign.io import read_json
from clemalign.runner import job
from clemalign.tables import concat_rows, failed_case_rows

smk = snakemake  # noqa: F821 - injected by Snakemake
COLUMNS = ["case", "gt_mean_um", "mae_um", "std_um", "status", "gap", "rotation_deg", "mirrored"]

with job(smk) as log:
    rows = []
    for path in smk.input.results:
        got = read_json(path)
        rows.append(
            {k: got[k] for k in ("case", "gt_mean_um", "mae_um", "std_um", "status", "gap")}
            | {"rotation_deg": got["winner"]["rotation_deg"], "mirrored": got["winner"]["mirrored"]}
        )
    failed = failed_case_rows([read_json(p) for p in smk.input.checks], [{}], COLUMNS)
    table = concat_rows(pd.DataFrame(rows, columns=COLUMNS), failed)
    table = table.sort_values("case", kind="stable", ignore_index=True)
    table.to_csv(smk.output[0], index=False, float_format="%.4f")
    log.info("\n%s", table.to_string())
