"""What the workflow tests share: the tiny config and running Snakemake on it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TINY = """\
results: out
analogy: {n_training_cases: 1, patch_size: 5, n_patches: 400, n_atoms: 30, lambda: 0.05,
          dictionary_lambda: 0.05,
          dictionary_max_iter: 5, eq7_max_iter: 5}
hertzmann: {levels: 2, max_training_px: 3000}
registration:
  levels: 2
  capture_range:
    trials: 2
    protocols:
      - {name: standard, max_rotation_deg: 4.0, max_scale: 0.05, max_shear: 0.03,
         max_translation_um: 0.55}
      - {name: wide, trials: 1, max_rotation_deg: 15.0, max_scale: 0.1, max_shear: 0.03,
         max_translation_um: 2.0}
synthetic:
  analogy:
    n_cases: 2
    tem_px_per_um: 30.0
    tem_field_um: [8.0, 8.0]
    confocal_field_um: [20.0, 20.0]
  fiducial:
    confocal_size_px: 200
    n_beads: 20
    n_crowded: 0
    views:
      - {px_nm: 25, size_px: [240, 240], rotation_deg: 10.0, scale: [1.0, 1.0], shear: 0.0,
         mirror: true}
"""


def snakemake(
    workdir: Path, *args: str, config: str | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run the repository's workflow in ``workdir`` with an optional config file text
    (2 local cores unless ``args`` say otherwise)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        *args,
    ]
    if config is not None:
        (workdir / "test_config.yaml").write_text(config)
        cmd += ["--configfile", str(workdir / "test_config.yaml")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def most_jobs_at_once(log_text: str) -> int:
    """Most jobs running at the same time in a Snakemake log (a job runs from its
    ``jobid: N`` line under ``rule X:``/``checkpoint X:`` to ``Finished jobid: N``)."""
    running: set[str] = set()
    most, in_job = 0, False
    for line in log_text.splitlines():
        if re.match(r"^(local)?(rule|checkpoint) \w+:", line):
            in_job = True
        started = re.match(r"^\s+jobid: (\d+)$", line)
        if started and in_job:
            running.add(started.group(1))
            most, in_job = max(most, len(running)), False
        finished = re.match(r"^Finished jobid: (\d+)", line)
        if finished:
            running.discard(finished.group(1))
    return most
