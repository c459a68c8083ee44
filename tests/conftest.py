"""Shared fixtures: small synthetic cases that are quick to make."""

from __future__ import annotations

import pytest

from clemalign.phantom import make_analogy_case

#: A small analogy case: fields a third of the default, coarser TEM, and the simple
#: (2D, affine-only) phantom, which is fast; tests/test_phantom_realistic.py covers the
#: realistic default.
SMALL_ANALOGY = {
    "model": "simple",
    "tem_px_per_um": 30.0,
    "tem_field_um": [8.0, 8.0],
    "confocal_field_um": [20.0, 20.0],
}


@pytest.fixture(scope="session")
def small_params():
    """Parameters of the small analogy case (a copy per test session)."""
    return dict(SMALL_ANALOGY)


@pytest.fixture(scope="session")
def small_analogy_case():
    """One TEM/confocal case at reduced size (seed 7)."""
    return make_analogy_case(7, 0, SMALL_ANALOGY)
