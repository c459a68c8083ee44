"""Rule global_table: every case registered with no start (rule global_search), scored."""

import pandas as pd

from clemalign.io import read_json
from clemalign.runner import job
from clemalign.tables import concat_rows, failed_case_rows

smk = snakemake  # noqa: F821 - injected by Snakemake
COLUMNS = ["case", "gt_mean_um", "mae_um", "std_um", "status", "gap", "rotation_deg", "mirrored"]
# the answer refined by the B-spline step (registration.nonrigid), when the route is refined
BSPLINE = ["bspline_gt_mean_um", "bspline_mae_um", "bspline_std_um", "bspline_status"]

with job(smk) as log:
    rows = []
    for path in smk.input.results:
        got = read_json(path)
        refined = got.get("nonrigid") or {}
        rows.append(
            {k: got[k] for k in ("case", "gt_mean_um", "mae_um", "std_um", "status", "gap")}
            | {"rotation_deg": got["winner"]["rotation_deg"], "mirrored": got["winner"]["mirrored"]}
            | {f"bspline_{k}": refined.get(k) for k in ("gt_mean_um", "mae_um", "std_um", "status")}
        )
    columns = COLUMNS + (BSPLINE if any(r["bspline_status"] for r in rows) else [])
    failed = failed_case_rows([read_json(p) for p in smk.input.checks], [{}], columns)
    table = concat_rows(pd.DataFrame(rows, columns=columns), failed)
    table = table.sort_values("case", kind="stable", ignore_index=True)
    table.to_csv(smk.output[0], index=False, float_format="%.4f")
    log.info("\n%s", table.to_string())
