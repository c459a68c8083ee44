#!/usr/bin/env bash
# Snakemake runs this inside the new conda environment, from the workflow's working
# directory; CLEMALIGN_ROOT (exported by the Snakefile) points at this repository.
set -euo pipefail
python -m pip install --no-deps --no-build-isolation -e "${CLEMALIGN_ROOT:-.}"
