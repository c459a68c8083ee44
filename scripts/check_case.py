"""Checkpoint check_case: can a case be used at all? Its status goes to a JSON that always
exists, so a bad case is reported (and left out of other cases' training) instead of
stopping the run."""

from clemalign.io import write_json
from clemalign.preprocess import case_check
from clemalign.runner import job

smk = snakemake  # noqa: F821 - injected by Snakemake

with job(smk) as log:
    record = case_check(
        smk.params.case, smk.params.patch_size, smk.params.preprocess, smk.params.fiducials
    )
    for note in record["notes"]:
        log.warning(note)
    if record["status"] != "ok":
        log.warning("%s: this case is left out; the other cases go on", record["status"])
    write_json(smk.output[0], record)
