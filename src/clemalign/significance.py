"""Is a fiducial match better than chance, and is its affine plausible?

A point-matching method always returns its best hypothesis, also on two images that
have nothing in common. Before a fiducial transform is reported ``ok`` it passes
two checks:

* **Significance** (a-contrario, as in ORSA / AC-RANSAC, Moisan & Stival 2004): under
  the background model, the ``M`` target points are uniform over the target field of
  area ``A`` (um^2), so a mapped source point falls within ``eps`` um of some target
  with probability ``p = min(1, M pi eps^2 / A)``. A hypothesis fitted to 3 pairs and
  explaining ``k`` of the ``n`` source points that map inside the target field has a
  *number of false alarms* ``NFA = N_tests P[Bin(n - 3, p) >= k - 3]``, where
  ``N_tests`` is the number of hypotheses the method tried. ``NFA`` is the number of
  matches this good that chance would produce among the method's own tries: far below
  1 means the match is real; about 1 or above means chance explains it.
  As in ORSA, the tolerance is not fixed in advance: ``eps`` is tried at
  :data:`TOLERANCE_FRACTIONS` of the configured tolerance (beads are often localised far
  better than it, and in a crowd a loose tolerance lets chance pairs drown true ones),
  the smallest NFA wins, and ``N_tests`` is multiplied by the number of tolerances
  tried (Bonferroni).
* **Sanity**: both images are in um, so the true linear part has singular values near
  1 (the scale the two pixel sizes imply); a collapsed or strongly anisotropic affine
  is rejected whatever its consensus.

:func:`assess_match` gives the numbers, :meth:`MatchCheck.status` the verdict
(``ok``, ``uncertain: <reason>`` or ``failed: <reason>``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from .transforms import apply

#: Significance thresholds; ``fiducials.significance`` in config.yaml overrides them.
DEFAULT_SIGNIFICANCE: dict = {"min_pairs": 4, "nfa_ok": 0.01, "nfa_failed": 1.0}

#: The plausible SEM -> confocal affine (um / um); ``fiducials.plausible_affine``. The
#: matchers also drop hypotheses outside it.
DEFAULT_PLAUSIBLE: dict = {"scale_range": [0.75, 1.35], "max_anisotropy": 1.35}

_MINIMAL_SAMPLE = 3  # pairs that define an affine: consistent by construction
#: Tolerances tried by the significance test, as fractions of the configured one.
TOLERANCE_FRACTIONS: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class MatchCheck:
    """What supports a fiducial transform, against chance and plausibility.

    Attributes
    ----------
    n_consistent : int
        Mutual nearest pairs within ``tolerance_um`` under the transform.
    n_source_inside : int
        Source points that the transform maps inside the target field.
    n_target : int
        Target points.
    p_chance : float
        Probability that one mapped source point lands within the tolerance of some
        target by chance.
    expected_by_chance : float
        ``n_source_inside * p_chance``: consistent pairs a wrong transform gets.
    log10_nfa : float
        log10 of the number of false alarms (see the module docstring).
    singular_values : tuple of float
        Of the linear part (um / um), largest first.
    tolerance_um : float
        The tolerance (um) at which the NFA is smallest (the numbers above are at it).
    """

    n_consistent: int
    n_source_inside: int
    n_target: int
    p_chance: float
    expected_by_chance: float
    log10_nfa: float
    singular_values: tuple[float, float]
    tolerance_um: float = float("nan")

    def record(self) -> dict:
        """The numbers, JSON-ready."""
        out = asdict(self)
        out["singular_values"] = [float(v) for v in self.singular_values]
        return out

    def status(self, significance: dict | None = None, plausible: dict | None = None) -> str:
        """``ok``, ``uncertain: <reason>`` or ``failed: <reason>`` under the thresholds
        ``significance`` (keys of :data:`DEFAULT_SIGNIFICANCE`) and ``plausible`` (keys
        of :data:`DEFAULT_PLAUSIBLE`)."""
        s = {**DEFAULT_SIGNIFICANCE, **(significance or {})}
        problem = implausible_affine(
            self.singular_values, {**DEFAULT_PLAUSIBLE, **(plausible or {})}
        )
        if problem:
            return f"failed: {problem}"
        support = (
            f"{self.n_consistent} consistent bead pairs of {self.n_source_inside} "
            f"within {self.tolerance_um:.3g} um (chance gives {self.expected_by_chance:.1f}; "
            f"NFA 10^{self.log10_nfa:.1f})"
        )
        if self.n_consistent < s["min_pairs"]:
            return f"failed: {support}, need at least {s['min_pairs']} pairs"
        if self.log10_nfa >= np.log10(s["nfa_failed"]):
            return f"failed: not better than chance: {support}"
        if self.log10_nfa >= np.log10(s["nfa_ok"]):
            return f"uncertain: barely better than chance: {support}"
        return "ok"


def implausible_affine(singular_values: tuple[float, float], plausible: dict) -> str:
    """Why an affine with these singular values (largest first, um / um) is not
    plausible under ``plausible`` (:data:`DEFAULT_PLAUSIBLE` keys), or ``""``."""
    big, small = singular_values
    lo, hi = plausible["scale_range"]
    if not (lo <= small and big <= hi):
        return (
            f"implausible affine: singular values {big:.3g}, {small:.3g} outside "
            f"{lo}-{hi} x the scale the pixel sizes imply"
        )
    if big > plausible["max_anisotropy"] * small:
        return (
            f"implausible affine: anisotropy {big / small:.3g} above "
            f"{plausible['max_anisotropy']} (singular values {big:.3g}, {small:.3g})"
        )
    return ""


def chance_probability(n_target: int, tolerance_um: float, field_area_um2: float) -> float:
    """Probability that a random point lies within ``tolerance_um`` of one of
    ``n_target`` points spread uniformly over ``field_area_um2``."""
    return float(min(1.0, n_target * np.pi * tolerance_um**2 / max(field_area_um2, 1e-12)))


def log10_nfa(n_inside: int, n_consistent: int, p_chance: float, n_tests: int) -> float:
    """log10 of ``n_tests * P[Bin(n_inside - 3, p) >= n_consistent - 3]``."""
    trials = max(n_inside - _MINIMAL_SAMPLE, 0)
    needed = n_consistent - _MINIMAL_SAMPLE
    if needed <= 0:
        tail = 0.0
    elif needed > trials:
        tail = -np.inf
    else:
        tail = stats.binom.logsf(needed - 1, trials, p_chance) / np.log(10.0)
    return float(np.log10(max(n_tests, 1)) + tail)


def assess_match(
    matrix: np.ndarray,
    src_um: np.ndarray,
    dst_um: np.ndarray,
    n_consistent: int,
    n_tests: int,
    tolerance_um: float,
    target_field_um: tuple[float, float],
) -> MatchCheck:
    """Significance and plausibility numbers of a fiducial transform.

    Parameters
    ----------
    matrix : ndarray, shape (3, 3)
        Source (moving) um -> target (fixed) um.
    src_um, dst_um : ndarray, shape (N, 2), (M, 2)
        All candidate points of the two images, (x, y) um.
    n_consistent : int
        Pairs the method's final fit rests on (mutual nearest within the tolerance).
    n_tests : int
        Hypotheses the method tried (the multiple-testing count of the NFA).
    tolerance_um : float
        Distance within which a mapped source point and a target correspond, um.
    target_field_um : (float, float)
        Width and height of the target image, um; points are in ``[0, width] x
        [0, height]``.

    Returns
    -------
    MatchCheck
    """
    src = np.asarray(src_um, dtype=float).reshape(-1, 2)
    dst = np.asarray(dst_um, dtype=float).reshape(-1, 2)
    width, height = target_field_um
    moved = apply(matrix, src)
    inside = int(np.sum((moved >= 0).all(1) & (moved[:, 0] <= width) & (moved[:, 1] <= height)))
    inside = max(inside, int(n_consistent))  # a pair at the border may map just outside
    p = chance_probability(len(dst), tolerance_um, width * height)
    sv = np.linalg.svd(np.asarray(matrix, dtype=float)[:2, :2], compute_uv=False)
    return MatchCheck(
        n_consistent=int(n_consistent),
        n_source_inside=inside,
        n_target=len(dst),
        p_chance=p,
        expected_by_chance=inside * p,
        log10_nfa=log10_nfa(inside, int(n_consistent), p, n_tests),
        singular_values=(float(sv[0]), float(sv[1])),
        tolerance_um=float(tolerance_um),
    )
