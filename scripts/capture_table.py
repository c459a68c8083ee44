"""Rule capture_table: success rate and median error from perturbed starts, every case."""

import pandas as pd

from clemalign.figures import capture_range_plot
from clemalign.io import read_case_table
from clemalign.routes import capture_summary
from clemalign.runner import job

smk = snakemake  # noqa: F821 - injected by Snakemake

with job(smk) as log:
    trials = pd.concat([read_case_table(path) for path in smk.input], ignore_index=True)
    trials.to_csv(smk.output.trials, index=False, float_format="%.6f")
    summary = capture_summary(trials)
    summary.to_csv(smk.output.summary, index=False, float_format="%.4f")
    capture_range_plot(smk.output.plot, summary, smk.params.success_um)
    overall = summary.groupby(["source", "measure"], sort=False)["success_rate"].mean()
    log.info("\n%s\n\nmean success rate over cases:\n%s", summary.to_string(), overall)
