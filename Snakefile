# clemalign: registration of correlative light and electron microscopy images.
# Run: ./run.sh (installs into .venv, then runs this), or `snakemake --cores all`
# in an environment where clemalign is installed (pip install -e .), or add --use-conda.
import os

from snakemake.utils import min_version, validate

min_version("9.17")  # 9.10-9.16 run more jobs at once than --cores (snakemake#3913)


# Defaults from the repository; --configfile/--config override them key by key.
configfile: os.path.join(workflow.basedir, "config.yaml")


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/fiducials.smk"
include: "workflow/rules/analogy.smk"
include: "workflow/rules/registration.smk"
include: "workflow/rules/export.smk"


rule all:
    input:
        all_targets,
    default_target: True
