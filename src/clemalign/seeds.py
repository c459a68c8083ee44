"""Random streams keyed by names, never by positions in a list.

Every random choice of the workflow is drawn from ``numpy.random.default_rng`` seeded
with the dataset seed, a purpose and a case name, so adding, removing or reordering
cases in a case sheet never changes another case's results.
"""

from __future__ import annotations

import hashlib

import numpy as np


def name_key(name: str) -> int:
    """A stable 64-bit integer of a string (first 8 bytes of its SHA-256).

    Python's ``hash`` is salted per process, so it cannot seed anything reproducible.
    """
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")


def rng_for(seed: int, purpose: str, name: str) -> np.random.Generator:
    """The random generator of one purpose (e.g. ``"dictionary"``) for one case.

    Parameters
    ----------
    seed : int
        The dataset seed (config ``seed``).
    purpose : str
        What the stream is for; different purposes give independent streams.
    name : str
        The case name.

    Returns
    -------
    numpy.random.Generator
        Seeded by ``[seed, name_key(purpose), name_key(name)]``.
    """
    return np.random.default_rng([int(seed), name_key(purpose), name_key(name)])
