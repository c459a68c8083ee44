"""Synthetic correlative datasets with ground truth (the embedded default data).

* :func:`make_analogy_case`: TEM/confocal pairs of myelinated brain tissue.
* :func:`make_fiducial_case`: SEM/confocal views of a field of 100 nm gold beads.

Both are deterministic functions of ``(seed, index, params)``.
"""

from ._common import SyntheticCase
from .analogy import DEFAULT_ANALOGY_PARAMS, make_analogy_case
from .beads import DEFAULT_FIDUCIAL_PARAMS, make_fiducial_case

__all__ = [
    "DEFAULT_ANALOGY_PARAMS",
    "DEFAULT_FIDUCIAL_PARAMS",
    "SyntheticCase",
    "make_analogy_case",
    "make_fiducial_case",
]
