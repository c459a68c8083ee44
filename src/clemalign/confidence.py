"""How far a registration can be trusted: a status for every answer, never ``ok`` by default.

Three checks, each cheap enough to run on every registration and capture-range trial:

1. **Sanity of the transform** against the start it came from: the determinant keeps its
   sign (a registration must not mirror the image), the singular values stay within
   ``max_scale_change`` of the start's, and the shear stays below ``max_shear``.
2. **Better than chance** (:func:`chance_level`): the similarity of the registered pair
   (Pearson r for SSD and weighted SSD, Studholme's NMI for MI) against the similarity
   the same registration reaches with surrogates of the moving image that keep its
   spectrum and histogram but have no structure in common with the fixed image. ``z``
   is the answer's lead over the surrogates in units of their standard deviation: a
   true match stands out, a moving image with nothing in common with the fixed one does
   not. Below ``uncertain_z`` the answer is uncertain, below ``failed_z`` it failed.
3. **Agreement between routes** (:func:`consensus`): a case registered by several routes
   (sources x measures) has a consensus, the answer with the smallest median distance to
   the others; an answer farther than ``agree_um`` from it, over the moving grid, is
   uncertain. This catches a route whose optimum is consistently in the wrong place,
   which no check of that route alone can see.
4. **A distinct optimum**: a route that searched about its start
   (:class:`clemalign.search.StartSearch`) knows how far its winner's correlation leads
   the best placement that ended in another basin (more than 0.5 um away). Below
   ``min_search_gap`` the images cannot tell the two apart, and the answer is uncertain.

Statuses: ``ok``; ``uncertain: <reason>`` (a transform is given, but do not build on it
unchecked); ``failed: <reason>`` (no transform to use).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from .metrics import normalized_mutual_information, pearson_r
from .register import grid_error_um
from .transforms import warp_image


@dataclass(frozen=True)
class ConfidenceLimits:
    """Thresholds of the checks (config ``registration.confidence``).

    Attributes
    ----------
    max_scale_change : float
        Largest relative change of a singular value of the linear part against the start.
    max_shear : float
        Largest shear of the answer relative to the start (``|cos|`` of the angle between
        the mapped axes).
    uncertain_z, failed_z : float
        Below ``uncertain_z`` standard deviations above the surrogates the answer is
        uncertain, below ``failed_z`` it failed.
    chance_trials : int
        Surrogates registered to measure chance.
    agree_um : float
        Largest mean distance (um, over the moving grid) from the case's consensus.
    min_chance_spread : float
        The surrogates' standard deviation is taken as at least this fraction of their
        mean dependence (NMI - 1 for ``mi``, r for ``ssd``): four surrogates that happen
        to agree closely must not make a small lead look significant (unrelated tissue
        under MI reached z = 17-28 with a lead of 0.003-0.006 NMI; benchmarks/
        negative_controls.py).
    """

    max_scale_change: float = 0.15
    max_shear: float = 0.1
    uncertain_z: float = 2.0
    failed_z: float = 1.0
    chance_trials: int = 4
    agree_um: float = 0.5
    min_chance_spread: float = 0.15
    min_search_gap: float = 0.03

    @classmethod
    def from_config(cls, settings: Mapping | None) -> ConfidenceLimits:
        """From a config mapping (missing keys keep their defaults)."""
        return cls(**dict(settings or {}))


def similarity(
    moving: np.ndarray, fixed: np.ndarray, matrix: np.ndarray, px_per_um: float, measure: str
) -> float:
    """Similarity of ``moving`` and ``fixed`` resampled onto the moving grid by ``matrix``
    (moving um -> fixed um): Pearson r for ``ssd``/``wssd``, NMI for ``mi``; NaN when
    less than half of the moving grid falls inside the fixed image."""
    on_moving = warp_image(fixed, px_per_um, np.linalg.inv(matrix), moving.shape, px_per_um)
    inside = np.isfinite(on_moving) & np.isfinite(moving)
    if inside.mean() < 0.5:
        return float("nan")
    if measure == "mi":
        return normalized_mutual_information(moving, on_moving, inside)
    return pearson_r(moving, on_moving, inside)


def surrogate(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An image with the same power spectrum and the same intensity histogram as
    ``image`` but no structure in common with anything: Fourier phases randomised, then
    the original values put back in the surrogate's rank order (amplitude-adjusted
    surrogate). Non-finite pixels stay where they are."""
    image = np.asarray(image, float)
    finite = np.isfinite(image)
    filled = np.where(finite, image, np.mean(image[finite]))
    phases = np.angle(np.fft.rfft2(rng.standard_normal(image.shape)))
    spectrum = np.abs(np.fft.rfft2(filled - filled.mean())) * np.exp(1j * phases)
    shuffled = np.fft.irfft2(spectrum, s=image.shape)
    out = np.full(image.shape, np.nan)
    ranks = np.argsort(shuffled[finite])
    values = np.empty(ranks.size)
    values[ranks] = np.sort(image[finite])
    out[finite] = values
    return out


def chance_level(
    refine: Callable[[np.ndarray, np.ndarray], np.ndarray],
    moving: np.ndarray,
    fixed: np.ndarray,
    answer: np.ndarray,
    px_per_um: float,
    measure: str,
    rng: np.random.Generator,
    limits: ConfidenceLimits,
) -> dict:
    """The similarity the registration reaches when there is nothing to find.

    ``limits.chance_trials`` surrogates of the moving image (:func:`surrogate`: same
    spectrum and histogram, structure destroyed) are each registered by ``refine``
    (moving, start -> answer) from the answer itself, the most favourable start, and the
    similarity they reach is recorded. The optimiser's freedom to fit noise is thus in
    the chance level: a moving image of pure noise reaches what its surrogates reach and
    does not stand out, while a real match does, by many of their standard deviations.

    Returns
    -------
    dict
        ``values`` (the surrogates' similarities), ``mean``, ``std``, ``best``.
    """
    values = []
    for _ in range(limits.chance_trials):
        fake = surrogate(moving, rng)
        try:
            end = refine(fake, answer)
        except (ValueError, np.linalg.LinAlgError, FloatingPointError):
            continue
        value = similarity(fake, fixed, end, px_per_um, measure)
        if np.isfinite(value):
            values.append(float(value))
    enough = len(values) > 1
    return {
        "values": values,
        "mean": float(np.mean(values)) if enough else float("nan"),
        "std": float(np.std(values)) if enough else float("nan"),
        "best": float(np.max(values)) if values else float("nan"),
    }


def chance_z(value: float, chance: Mapping, measure: str = "ssd", min_spread: float = 0.0) -> float:
    """The answer's lead over the surrogates in their standard deviations (inf when they
    all reach the same value; NaN when the value or the chance level is unknown).

    The standard deviation is taken as at least ``min_spread`` times the surrogates'
    mean dependence: NMI - 1 for ``measure`` ``mi`` (1: independent), r otherwise.
    """
    if not np.isfinite(value):
        return float("nan")
    if not np.isfinite(chance["mean"]):
        return float("nan")
    baseline = 1.0 if measure == "mi" else 0.0
    spread = max(chance["std"], min_spread * abs(chance["mean"] - baseline))
    if not spread > 0:
        return float("inf") if value > chance["mean"] else float("-inf")
    return float((value - chance["mean"]) / spread)


def transform_problems(
    matrix: np.ndarray, start: np.ndarray, limits: ConfidenceLimits
) -> list[str]:
    """What is implausible about ``matrix`` given the ``start`` it was refined from."""
    a, s = np.asarray(matrix, float)[:2, :2], np.asarray(start, float)[:2, :2]
    problems = []
    if np.sign(np.linalg.det(a)) != np.sign(np.linalg.det(s)):
        problems.append("the registration mirrored the image")
    rel = a @ np.linalg.inv(s)  # the change the registration made
    sv = np.linalg.svd(rel, compute_uv=False)
    change = float(np.max(np.abs(sv - 1.0)))
    if change > limits.max_scale_change:
        problems.append(
            f"scale changed by {change:.0%} against the start (limit {limits.max_scale_change:.0%})"
        )
    axes = rel / np.linalg.norm(rel, axis=0, keepdims=True)
    shear = float(abs(axes[:, 0] @ axes[:, 1]))
    if shear > limits.max_shear:
        problems.append(f"shear {shear:.2f} (limit {limits.max_shear:.2f})")
    return problems


def assess(
    moving: np.ndarray,
    fixed: np.ndarray,
    matrix: np.ndarray,
    start: np.ndarray,
    px_per_um: float,
    measure: str,
    chance: Mapping,
    limits: ConfidenceLimits,
    converged: bool = True,
    search_gap: float | None = None,
) -> tuple[str, dict]:
    """Status of one registration answer and the numbers behind it.

    Parameters
    ----------
    moving, fixed : ndarray
        The registered pair (moving on its grid, fixed on its own), both at ``px_per_um``.
    matrix, start : ndarray, shape (3, 3)
        The answer and the start it came from, moving um -> fixed um.
    measure : {"ssd", "wssd", "mi"}
    chance : mapping
        :func:`chance_level` of this pair and measure (computed once per pair; capture
        trials reuse it).
    limits : ConfidenceLimits
    converged : bool
        Whether the optimiser met its stopping rule at the finest level.
    search_gap : float, optional
        The start search's lead of the winner over the best other basin
        (:func:`clemalign.search.pick_refined`); None when there was no search or no
        other basin.

    Returns
    -------
    status : str
        ``ok``, ``uncertain: <reason>`` or ``failed: <reason>``.
    record : dict
        ``similarity``, ``chance_z``, ``gap`` (to the best surrogate), ``problems``.
    """
    value = similarity(moving, fixed, matrix, px_per_um, measure)
    z = chance_z(value, chance, measure, limits.min_chance_spread)
    problems = transform_problems(matrix, start, limits)
    record = {
        "similarity": value,
        "chance_z": z,
        "gap": value - chance["best"] if np.isfinite(chance["best"]) else float("inf"),
        "problems": problems,
    }
    if np.isnan(z) or z < limits.failed_z:
        return f"failed: no better than chance (z = {z:.1f} over surrogates)", record
    reasons = list(problems)
    if z < limits.uncertain_z:
        reasons.append(f"weak match (z = {z:.1f} over surrogates)")
    if not converged:
        reasons.append("the optimiser stopped before converging")
    if search_gap is not None and search_gap < limits.min_search_gap:
        reasons.append(
            "another placement near the start correlates nearly as well "
            f"(gap {search_gap:.3f} < {limits.min_search_gap:g})"
        )
    return ("uncertain: " + "; ".join(reasons)) if reasons else "ok", record


def consensus(
    answers: Mapping[str, np.ndarray], shape: tuple[int, int], px_per_um: float
) -> tuple[str, np.ndarray] | None:
    """The answer with the smallest median distance (um, over the moving grid of
    ``shape``) to the other answers, and its name; None with fewer than three answers."""
    names = [n for n, m in answers.items() if m is not None]
    if len(names) < 3:
        return None
    dist = np.zeros((len(names), len(names)))
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            d = grid_error_um(answers[a], answers[names[j]], shape, px_per_um)
            dist[i, j] = dist[j, i] = d
    medians = [np.median(np.delete(row, i)) for i, row in enumerate(dist)]
    best = names[int(np.argmin(medians))]
    return best, np.asarray(answers[best], float)


def with_consensus(
    status: str,
    matrix: np.ndarray | None,
    agreed: tuple[str, np.ndarray] | None,
    shape: tuple[int, int],
    px_per_um: float,
    limits: ConfidenceLimits,
) -> str:
    """``status`` downgraded to uncertain when ``matrix`` is far from the consensus."""
    if matrix is None or agreed is None or status.startswith("failed"):
        return status
    distance = grid_error_um(matrix, agreed[1], shape, px_per_um)
    if distance <= limits.agree_um:
        return status
    reason = f"{distance:.2f} um from the routes' consensus ({agreed[0]})"
    return f"uncertain: {reason}" if status == "ok" else f"{status}; {reason}"
