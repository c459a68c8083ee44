#!/usr/bin/env bash
# One command for everything (needs only Python >= 3.11 with venv and pip):
#   ./run.sh                 install into .venv if needed, then run the default workflow
#   ./run.sh [snakemake args]   e.g. ./run.sh --cores 2, ./run.sh -n, ./run.sh --report report.html
#   ./run.sh --profile profiles/slurm [args]   the same on a SLURM cluster (README)
#   ./run.sh test [pytest args] install with test extras if needed, then run the test suite
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

VENV="${CLEMALIGN_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
extras="test"
# A --profile of your own replaces profiles/default, also as Snakemake's workflow profile
# (which would otherwise be profiles/default again, its keys overriding yours).
profile=(--profile profiles/default)
if [ "${1:-}" = "test" ]; then
    extras="test,cluster"  # tests/test_slurm.py runs the workflow through profiles/slurm
else
    for arg in "$@"; do
        case "$arg" in
            --profile | --profile=*) profile=(--workflow-profile none) extras="test,cluster" ;;
        esac
    done
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "clemalign needs Python >= 3.11"'
    "$PYTHON" -m venv "$VENV"
fi
# Reinstall only when pyproject.toml changed since the last install or an extra is
# missing; extras installed before are kept.
stamp="$VENV/.clemalign-installed"
installed_extras=""
{ read -r _ installed_extras < "$stamp"; } 2>/dev/null || true
# shellcheck disable=SC2086  # split the comma-separated lists into words
extras="$(printf '%s\n' ${extras//,/ } ${installed_extras//,/ } | sort -u | paste -sd, -)"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $extras"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".[$extras]"
    echo "$want" > "$stamp"
fi

if [ "${1:-}" = "test" ]; then
    shift
    exec "$VENV/bin/python" -m pytest "$@"
fi
exec "$VENV/bin/snakemake" "${profile[@]}" "$@"
