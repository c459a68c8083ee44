#!/usr/bin/env bash
# One command for everything (needs only Python >= 3.11 with venv and pip):
#   ./run.sh                 install into .venv if needed, then run the default workflow
#   ./run.sh [snakemake args]   e.g. ./run.sh --cores 2, ./run.sh -n, ./run.sh --report report.html
#   ./run.sh test [pytest args] install with test extras if needed, then run the test suite
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

VENV="${CLEMALIGN_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
extras="test"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "clemalign needs Python >= 3.11"'
    "$PYTHON" -m venv "$VENV"
fi
# Reinstall only when pyproject.toml changed since the last install.
stamp="$VENV/.clemalign-installed"
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
exec "$VENV/bin/snakemake" --profile profiles/default "$@"
