"""Support for the thin rule scripts: logging into the rule's log, clear failures.

A rule script does::

    from clemalign.runner import job

    with job(snakemake) as log:
        ...  # call clemalign, write outputs

Progress goes to the rule's log file. Compiled kernels (numba) use the rule's declared
``threads``, so parallel jobs do not oversubscribe the cores. An error is logged with
its traceback and re-raised as a one-line :class:`~clemalign.errors.CaseError` naming
the case (and the file, when known), which Snakemake prints; other cases go on
(``--keep-going``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import CaseError


@contextmanager
def job(smk: object) -> Iterator[logging.Logger]:
    """Run the body of a rule script with logging and case-named errors.

    Parameters
    ----------
    smk : snakemake.script.Snakemake
        The ``snakemake`` object of a ``script:`` rule.

    Yields
    ------
    logging.Logger
        Writes to the rule's log file (and warnings to stderr).
    """
    # a dictionary's job is named by its training set (e.g. tem04+tem05)
    wildcards = smk.wildcards
    case = getattr(wildcards, "case", None) or getattr(wildcards, "training", None) or smk.rule
    logger = logging.getLogger(f"clemalign.{smk.rule}")
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    trace = logging.getLogger(f"clemalign.{smk.rule}.traceback")  # log file only
    trace.handlers.clear()
    trace.propagate = False
    if smk.log:
        handler = logging.FileHandler(str(smk.log[0]), mode="w")
        handler.setFormatter(fmt)
        logger.addHandler(handler)
        trace.addHandler(handler)
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    err.setFormatter(logging.Formatter(f"[{smk.rule} {case}] %(levelname)s %(message)s"))
    logger.addHandler(err)
    logging.captureWarnings(True)
    start = time.perf_counter()
    threads = max(1, int(getattr(smk, "threads", 1) or 1))
    _limit_numba_threads(threads)
    logger.info("rule %s, case %s, %d thread(s)", smk.rule, case, threads)
    try:
        yield logger
    except CaseError as error:
        trace.exception("failed")
        raise SystemExit(f"ERROR {error}") from None
    except Exception as error:  # noqa: BLE001 - any failure is reported with its case
        trace.exception("failed")
        path = getattr(error, "filename", None)
        raise SystemExit(
            f"ERROR {CaseError(str(case), f'{type(error).__name__}: {error}', path)}"
        ) from None
    logger.info("done in %.2f s", time.perf_counter() - start)


def _limit_numba_threads(threads: int) -> None:
    """Let numba's parallel kernels use at most ``threads`` threads (its default: all)."""
    import numba

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
