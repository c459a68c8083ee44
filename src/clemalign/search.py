"""A start without landmarks: global search over rotation, scale, mirror and shift.

For every candidate linear map (rotation x isotropic scale x mirror) the moving image is
drawn, at a coarse sampling, in the fixed image's orientation, and its masked normalised
cross-correlation with the fixed image is computed for every shift at once by FFT
(Padfield 2012, "Masked object registration in the Fourier domain"). The best distinct
candidates are refined by the affine registration at full sampling, and the refined
answer with the best correlation of the locally normalised images wins; the gap to the
runner-up says how distinct the winning optimum is.

The correlation needs a moving image whose intensities rise with the fixed image's: the
inverted TEM or a predicted confocal, not the raw TEM (for mutual information the
refinement can then use any of them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import fft as sp_fft

from .confidence import similarity, transform_problems
from .preprocess import crop_box_um, resample
from .register import ContrastCache, grid_error_um, local_contrast, register_affine
from .transforms import affine_matrix, translation_matrix, warp_image


@dataclass(frozen=True)
class SearchRange:
    """What the global search tries (config ``registration.global_search``).

    Attributes
    ----------
    rotation_deg : (float, float)
        Rotations tried, degrees (moving -> fixed), from the first to the second.
    rotation_step_deg : float
        Step between rotations, degrees.
    scale : (float, float)
        Isotropic scales tried (fixed um per moving um), relative to the two pixel sizes.
    scale_steps : int
        Number of scales in that range.
    mirror : bool
        Also try the moving image mirrored (x -> -x).
    coarse_px_per_um : float
        Sampling of the correlation, px/um.
    min_overlap : float
        Fraction of the moving image that must lie inside the fixed one.
    contrast_um : float
        Both images are locally normalised (mean and standard deviation over a Gaussian
        of this sigma, um) before they are correlated, so that fibre-scale structure,
        not the large dark nuclei or the slow background, decides the match.
    candidates : int
        Best distinct candidates refined at full sampling.
    crop_margin_um : float or None
        Each candidate is refined against the fixed image cropped to its footprint plus
        this margin (um) and resampled to the moving image's sampling, as the
        preprocessing prepares a landmark-started pair (config ``preprocess.margin_um``),
        so that an answer found without a start is the one a start at that placement
        would give. None: against the whole fixed image at its own sampling.
    """

    rotation_deg: tuple[float, float] = (-180.0, 180.0)
    rotation_step_deg: float = 4.0
    scale: tuple[float, float] = (0.85, 1.15)
    scale_steps: int = 7
    mirror: bool = True
    coarse_px_per_um: float = 2.0
    min_overlap: float = 0.8
    contrast_um: float = 1.0
    candidates: int = 4
    crop_margin_um: float | None = 3.0

    @classmethod
    def from_config(cls, settings) -> SearchRange:
        """From a config mapping (missing keys keep their defaults)."""
        values = dict(settings or {})
        for key in ("rotation_deg", "scale"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def linear_maps(self) -> list[tuple[float, float, bool]]:
        """(rotation_deg, scale, mirrored) of every candidate."""
        lo, hi = self.rotation_deg
        n = max(1, int(np.floor((hi - lo) / self.rotation_step_deg + 1e-9)))
        if hi - lo >= 360.0 - 1e-9:
            angles = lo + self.rotation_step_deg * np.arange(n)  # the circle, no duplicate
        else:
            angles = np.linspace(lo, hi, n + 1)
        scales = np.linspace(*self.scale, self.scale_steps) if self.scale_steps > 1 else [1.0]
        mirrors = (False, True) if self.mirror else (False,)
        return [(float(a), float(s), m) for m in mirrors for s in scales for a in angles]


@dataclass
class SearchResult:
    """Outcome of :func:`global_search`.

    Attributes
    ----------
    matrix : ndarray, shape (3, 3)
        The refined answer, moving um -> fixed um.
    similarity : float
        Its score: Pearson r of the locally normalised images (:func:`local_contrast`)
        at the refined transform.
    gap : float
        Its lead over the best refined runner-up that ends elsewhere (inf if none).
    candidates : list of dict
        The refined candidates: ``rotation_deg, scale, mirrored, ncc`` (coarse score),
        ``similarity`` after refinement, ``matrix``.
    """

    matrix: np.ndarray
    similarity: float
    gap: float
    candidates: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class FixedSpectra:
    """Fourier transforms of a fixed image's masked sums, shared by every template.

    The FFT correlations of :func:`masked_ncc` against one fixed image (the global
    search correlates 1000-2500 templates with it) need the fixed side's transforms
    only once, at a common padded size that fits the largest template.

    Attributes
    ----------
    fixed_shape : (int, int)
    size : (int, int)
        Padded FFT size: fixed + largest template - 1 per axis, rounded up to a fast length.
    mask, values, squares : ndarray
        ``rfft2`` of the mask, of the masked image and of its square.
    """

    fixed_shape: tuple[int, int]
    size: tuple[int, int]
    mask: np.ndarray
    values: np.ndarray
    squares: np.ndarray

    @classmethod
    def of(
        cls, fixed: np.ndarray, fixed_mask: np.ndarray, largest_template: tuple[int, int]
    ) -> FixedSpectra:
        """The spectra of ``fixed`` (where ``fixed_mask``) for templates up to
        ``largest_template`` (rows, cols)."""
        size = tuple(
            sp_fft.next_fast_len(int(n + m - 1), real=True)
            for n, m in zip(fixed.shape, largest_template, strict=True)
        )
        f = np.where(fixed_mask, fixed, 0.0)
        return cls(
            (int(fixed.shape[0]), int(fixed.shape[1])),
            size,
            sp_fft.rfft2(fixed_mask.astype(float), size),
            sp_fft.rfft2(f, size),
            sp_fft.rfft2(f * f, size),
        )

    def fits(self, template_shape: tuple[int, ...]) -> bool:
        """Whether a template of this shape fits the padded size."""
        return all(
            n + m - 1 <= s
            for n, m, s in zip(self.fixed_shape, template_shape, self.size, strict=True)
        )


def masked_ncc(
    fixed: np.ndarray,
    fixed_mask: np.ndarray,
    moving: np.ndarray,
    moving_mask: np.ndarray,
    spectra: FixedSpectra | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised cross-correlation of ``moving`` over ``fixed`` at every integer shift,
    each over the pixels where both masks are set (Padfield 2012).

    ``spectra``: :class:`FixedSpectra` of the same ``fixed`` and ``fixed_mask``, to reuse
    the fixed side's transforms (computed here when None or too small).

    Returns
    -------
    ncc : ndarray, shape (fixed + moving - 1)
        ``ncc[i, j]``: the moving image's pixel (0, 0) on the fixed image's pixel
        ``(i - moving.shape[0] + 1, j - moving.shape[1] + 1)``; 0 where undefined.
    overlap : ndarray, same shape
        Number of pixels both masks share at that shift.
    """
    if spectra is None or not spectra.fits(moving.shape):
        spectra = FixedSpectra.of(fixed, fixed_mask, moving.shape)
    out = tuple(int(n + m - 1) for n, m in zip(fixed.shape, moving.shape, strict=True))
    mm = moving_mask.astype(float)[::-1, ::-1]
    m = np.where(moving_mask, moving, 0.0)[::-1, ::-1]
    tm, tv, ts = (sp_fft.rfft2(a, spectra.size) for a in (mm, m, m * m))

    def corr(fixed_side: np.ndarray, template: np.ndarray) -> np.ndarray:
        return sp_fft.irfft2(fixed_side * template, spectra.size)[: out[0], : out[1]]

    n = np.maximum(np.round(corr(spectra.mask, tm)), 0.0)
    sf, sff = corr(spectra.values, tm), corr(spectra.squares, tm)
    sm, smm = corr(spectra.mask, tv), corr(spectra.mask, ts)
    sfm = corr(spectra.values, tv)
    safe = np.maximum(n, 1.0)
    cov = sfm - sf * sm / safe
    var = (sff - sf * sf / safe) * (smm - sm * sm / safe)
    ok = (n > 1) & (var > 1e-12 * np.max(np.abs(var)))
    ncc = np.zeros_like(cov)
    ncc[ok] = cov[ok] / np.sqrt(var[ok])
    return ncc, n


def _coarse(image: np.ndarray, px_per_um: float, coarse_px_per_um: float) -> np.ndarray:
    """The image resampled (anti-aliased) to the coarse sampling."""
    h_um, w_um = image.shape[0] / px_per_um, image.shape[1] / px_per_um
    shape = (
        max(1, int(round(h_um * coarse_px_per_um))),
        max(1, int(round(w_um * coarse_px_per_um))),
    )
    return warp_image(image, px_per_um, np.eye(3), shape, coarse_px_per_um)


def _drawn(
    moving: np.ndarray, px_per_um: float, linear: np.ndarray, coarse_px_per_um: float
) -> tuple[np.ndarray, np.ndarray]:
    """The moving image drawn through ``linear`` (2x2, moving um -> fixed um) on a coarse
    grid in the fixed orientation, and that grid's origin in fixed um (before shifting)."""
    h, w = moving.shape[0] / px_per_um, moving.shape[1] / px_per_um
    corners = linear @ np.array([[0.0, w, 0.0, w], [0.0, 0.0, h, h]])
    origin = corners.min(axis=1)
    size = corners.max(axis=1) - origin
    shape = (int(np.ceil(size[1] * coarse_px_per_um)), int(np.ceil(size[0] * coarse_px_per_um)))
    to_grid = np.eye(3)
    to_grid[:2, :2], to_grid[:2, 2] = linear, -origin
    return warp_image(moving, px_per_um, to_grid, shape, coarse_px_per_um), origin


def _candidate_matrix(linear: np.ndarray, origin: np.ndarray, shift_um: np.ndarray) -> np.ndarray:
    """Moving um -> fixed um: the drawn grid's origin moved to ``shift_um``."""
    matrix = np.eye(3)
    matrix[:2, :2], matrix[:2, 2] = linear, shift_um - origin
    return matrix


def coarse_candidates(
    moving: np.ndarray,
    fixed: np.ndarray,
    *,
    moving_px_per_um: float,
    fixed_px_per_um: float,
    search: SearchRange,
) -> list[dict]:
    """Every candidate linear map with its best shift and score, best first.

    ``moving`` and ``fixed`` are the locally normalised images (:func:`local_contrast`
    with ``search.contrast_um``), each at its own sampling.

    Returns
    -------
    list of dict
        ``rotation_deg, scale, mirrored, ncc, matrix`` (moving um -> fixed um).
    """
    p = search.coarse_px_per_um
    fixed_c = _coarse(fixed, fixed_px_per_um, p)
    maps = list(search.linear_maps())
    diagonal_um = np.hypot(*moving.shape) / moving_px_per_um
    largest = int(np.ceil(diagonal_um * max(s for _, s, _ in maps) * p)) + 2
    spectra = FixedSpectra.of(fixed_c, np.isfinite(fixed_c), (largest, largest))
    out = []
    for angle, scale, mirrored in maps:
        linear = affine_matrix(angle, (scale, scale), 0.0, (0.0, 0.0))[:2, :2]
        if mirrored:
            linear = linear @ np.diag([-1.0, 1.0])
        best = _best_shift(
            moving, moving_px_per_um, fixed_c, linear, p, search.min_overlap, spectra=spectra
        )
        if best is not None:
            out.append({"rotation_deg": angle, "scale": scale, "mirrored": mirrored} | best)
    return sorted(out, key=lambda c: -c["ncc"])


def _best_shift(
    moving: np.ndarray,
    moving_px_per_um: float,
    fixed_c: np.ndarray,
    linear: np.ndarray,
    coarse_px_per_um: float,
    min_overlap: float,
    window: tuple[np.ndarray, float] | None = None,
    spectra: FixedSpectra | None = None,
) -> dict | None:
    """The best shift of the moving image drawn through ``linear`` over the coarse fixed
    image: ``{"ncc", "matrix"}`` (moving um -> fixed um), or None when no shift overlaps
    enough. ``window``: (expected moving-centre position on the fixed image, radius), um;
    only shifts that put the moving centre within the radius of it are considered.
    ``spectra``: the coarse fixed image's :class:`FixedSpectra` (all shifts only)."""
    p = coarse_px_per_um
    drawn, origin = _drawn(np.asarray(moving, float), moving_px_per_um, linear, p)
    drawn_ok = np.isfinite(drawn)
    if drawn_ok.sum() < 16:
        return None
    if window is None:  # every shift at once, by FFT
        ncc, overlap = masked_ncc(fixed_c, np.isfinite(fixed_c), drawn, drawn_ok, spectra)
        rows = np.arange(ncc.shape[0]) - drawn.shape[0] + 1
        cols = np.arange(ncc.shape[1]) - drawn.shape[1] + 1
    else:  # the few shifts of the window, directly
        h, w = moving.shape[0] / moving_px_per_um, moving.shape[1] / moving_px_per_um
        centre_offset = linear @ np.array([w / 2, h / 2]) - origin  # centre, from grid corner
        expected, radius = window
        lo = np.floor((expected - centre_offset - radius) * p).astype(int)
        hi = np.ceil((expected - centre_offset + radius) * p).astype(int)
        rows, cols = np.arange(lo[1], hi[1] + 1), np.arange(lo[0], hi[0] + 1)
        ncc, overlap = windowed_ncc(fixed_c, drawn, drawn_ok, rows, cols)
        dx = cols[None, :] / p + centre_offset[0] - expected[0]
        dy = rows[:, None] / p + centre_offset[1] - expected[1]
        ncc[dx**2 + dy**2 > radius**2] = -np.inf
    ncc[overlap < min_overlap * drawn_ok.sum()] = -np.inf
    i, j = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
    if not np.isfinite(ncc[i, j]):
        return None
    shift_um = np.array([cols[j], rows[i]], float) / p  # the grid's corner on the fixed image
    return {"ncc": float(ncc[i, j]), "matrix": _candidate_matrix(linear, origin, shift_um)}


def windowed_ncc(
    fixed: np.ndarray,
    moving: np.ndarray,
    moving_mask: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`masked_ncc` at the given placements only: moving pixel (0, 0) on fixed pixel
    ``(rows[i], cols[j])`` (consecutive integers, may lie outside the fixed image), over
    the pixels where the moving mask is set and the fixed image is finite.

    Returns
    -------
    ncc, overlap : ndarray, shape (len(rows), len(cols))
    """
    mh, mw = moving.shape
    top, left = int(rows[0]), int(cols[0])
    region_shape = (len(rows) + mh - 1, len(cols) + mw - 1)
    f = np.full(region_shape, np.nan)  # the fixed pixels any placement can touch
    r0, c0 = max(top, 0), max(left, 0)
    r1 = min(top + region_shape[0], fixed.shape[0])
    c1 = min(left + region_shape[1], fixed.shape[1])
    if r1 > r0 and c1 > c0:
        f[r0 - top : r1 - top, c0 - left : c1 - left] = fixed[r0:r1, c0:c1]
    fm = np.isfinite(f).astype(float)
    f = np.where(fm > 0, f, 0.0)
    mm = moving_mask.astype(float)
    m = np.where(moving_mask, moving, 0.0)

    def corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.einsum("ijkl,kl->ij", sliding_window_view(a, (mh, mw)), b)

    n = np.round(corr(fm, mm))
    sf, sff = corr(f, mm), corr(f * f, mm)
    sm, smm, sfm = corr(fm, m), corr(fm, m * m), corr(f, m)
    safe = np.maximum(n, 1.0)
    cov = sfm - sf * sm / safe
    var = (sff - sf * sf / safe) * (smm - sm * sm / safe)
    ok = (n > 1) & (var > 1e-12 * max(np.max(np.abs(var)), 1e-300))
    ncc = np.zeros_like(cov)
    ncc[ok] = cov[ok] / np.sqrt(var[ok])
    return ncc, n


def _distinct(candidates: Sequence[dict], n: int, shape, px_per_um: float) -> list[dict]:
    """The ``n`` best candidates at least 1 um (mean over the moving grid) apart."""
    kept: list[dict] = []
    # the mean distance over a 1 px/um grid of the moving field: the same to 0.01 um
    coarse = (max(1, round(shape[0] / px_per_um)), max(1, round(shape[1] / px_per_um)))
    for c in candidates:
        if all(grid_error_um(c["matrix"], k["matrix"], coarse, 1.0) > 1.0 for k in kept):
            kept.append(c)
        if len(kept) == n:
            break
    return kept


def global_search(
    moving: np.ndarray,
    fixed: np.ndarray,
    *,
    moving_px_per_um: float,
    fixed_px_per_um: float,
    search: SearchRange | None = None,
    measure: str = "mi",
    refine_moving: np.ndarray | None = None,
    options: dict | None = None,
    more_probes: Sequence[np.ndarray] = (),
) -> SearchResult:
    """Register without a start: coarse global search, then affine refinement.

    Parameters
    ----------
    moving : ndarray
        Moving image whose intensities rise with the fixed image's (inverted TEM, or a
        predicted confocal), at ``moving_px_per_um``; used for the coarse correlation.
    fixed : ndarray
        Fixed image at ``fixed_px_per_um`` (e.g. the whole confocal field).
    search : SearchRange, optional
        Rotations, scales, mirror, coarse sampling, number of candidates refined.
    measure : {"mi", "ssd", "wssd"}
        Measure of the refinement (:func:`clemalign.register.register_affine`).
    refine_moving : ndarray, optional
        Moving image of the refinement (default ``moving``; e.g. the raw TEM for MI).
    options : dict, optional
        Further keyword options of :func:`clemalign.register.register_affine`.
    more_probes : sequence of ndarray
        Further search images on the grid of ``moving`` (e.g. the sparse prediction
        beside the inverted TEM). Each contributes its own best candidates; every
        refined candidate is then scored by the mean correlation over all the probes,
        so that a false match of one probe (a placement where only it correlates) loses
        to the placement where all of them do.

    Returns
    -------
    SearchResult

    Raises
    ------
    ValueError
        When no candidate overlaps the fixed image enough or none can be refined.
    """
    search = search or SearchRange()
    refine_moving = moving if refine_moving is None else refine_moving
    # the refined candidates compete on the same contrast correlation as the coarse search:
    # mutual information, free in six parameters, lifts wrong candidates nearly as high
    fixed_lc = local_contrast(fixed, fixed_px_per_um, search.contrast_um)
    probes = [
        local_contrast(m, moving_px_per_um, search.contrast_um) for m in (moving, *more_probes)
    ]
    starts: list[dict] = []
    for probe in probes:
        ranked = coarse_candidates(
            probe,
            fixed_lc,
            moving_px_per_um=moving_px_per_um,
            fixed_px_per_um=fixed_px_per_um,
            search=search,
        )
        starts += _distinct(ranked, search.candidates, moving.shape, moving_px_per_um)
    if not starts:
        raise ValueError("global search: no candidate places the moving image inside the fixed one")
    refined = []
    for c in _distinct(starts, len(starts), moving.shape, moving_px_per_um):
        try:
            matrix = refine_placement(
                refine_moving,
                fixed,
                c["matrix"],
                moving_px_per_um=moving_px_per_um,
                fixed_px_per_um=fixed_px_per_um,
                crop_margin_um=search.crop_margin_um,
                measure=measure,
                options=options,
            )
        except (ValueError, np.linalg.LinAlgError, FloatingPointError):
            continue
        values = [
            _similarity(p, fixed_lc, matrix, moving_px_per_um, fixed_px_per_um, "ssd")
            for p in probes
        ]
        refined.append(
            c | {"similarity": float(np.mean(values)), "matrix": matrix, "coarse": c["matrix"]}
        )
    refined = [r for r in refined if np.isfinite(r["similarity"])]
    if not refined:
        raise ValueError("global search: no candidate could be refined")
    refined.sort(key=lambda r: -r["similarity"])
    best = refined[0]
    others = [
        r["similarity"]
        for r in refined[1:]
        if grid_error_um(r["matrix"], best["matrix"], moving.shape, moving_px_per_um) > 0.5
    ]
    gap = best["similarity"] - max(others) if others else float("inf")
    return SearchResult(best["matrix"], best["similarity"], gap, refined)


def crop_around(
    fixed: np.ndarray,
    fixed_px_per_um: float,
    placement: np.ndarray,
    moving_shape: tuple[int, int],
    moving_px_per_um: float,
    margin_um: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The fixed image cropped to the footprint of a moving image of ``moving_shape`` under
    ``placement`` (moving um -> fixed um) plus ``margin_um``, and resampled to
    ``moving_px_per_um`` (as :func:`clemalign.preprocess.prepare_analogy_pair` prepares a
    landmark-started pair); and the crop's corner ``(x, y)`` in the fixed image's um.

    Raises
    ------
    ValueError
        When the footprint misses the fixed image.
    """
    h, w = moving_shape[0] / moving_px_per_um, moving_shape[1] / moving_px_per_um
    corners = np.array([[0.0, w, 0.0, w], [0.0, 0.0, h, h], [1.0, 1.0, 1.0, 1.0]])
    footprint = (np.asarray(placement, float) @ corners)[:2].T
    field_um = (fixed.shape[1] / fixed_px_per_um, fixed.shape[0] / fixed_px_per_um)
    lo, _, size = crop_box_um(footprint, margin_um, field_um, moving_px_per_um)
    if np.any(size <= 0):
        raise ValueError("the placement puts the moving image outside the fixed image")
    origin = (float(lo[0]), float(lo[1]))
    return resample(fixed, fixed_px_per_um, moving_px_per_um, origin, tuple(size)), lo


def refine_placement(
    moving: np.ndarray,
    fixed: np.ndarray,
    placement: np.ndarray,
    *,
    moving_px_per_um: float,
    fixed_px_per_um: float,
    crop_margin_um: float | None,
    measure: str = "mi",
    options: dict | None = None,
) -> np.ndarray:
    """The affine registration of ``moving`` from ``placement`` (moving um -> fixed um),
    against the fixed image cropped around it (:func:`crop_around` with
    ``crop_margin_um``), or against the whole fixed image when ``crop_margin_um`` is
    None. Returns the answer in the whole fixed image's um."""
    kwargs = {"moving_px_per_um": moving_px_per_um, "measure": measure} | dict(options or {})
    if crop_margin_um is None:
        return register_affine(
            moving, fixed, placement, fixed_px_per_um=fixed_px_per_um, **kwargs
        ).matrix
    crop, lo = crop_around(
        fixed, fixed_px_per_um, placement, moving.shape, moving_px_per_um, crop_margin_um
    )
    got = register_affine(
        moving,
        crop,
        translation_matrix(-lo[0], -lo[1]) @ placement,
        fixed_px_per_um=moving_px_per_um,
        **kwargs,
    )
    return translation_matrix(lo[0], lo[1]) @ got.matrix


def global_status(result: SearchResult, limits, min_gap: float) -> str:
    """``ok``, or ``uncertain: <reasons>``, for a :func:`global_search` answer.

    Uncertain when the refinement changed the winning coarse placement implausibly
    (:func:`clemalign.confidence.transform_problems` against it: scale, shear, mirror)
    or when another placement more than 0.5 um away correlates nearly as well (``gap``
    below ``min_gap``: two basins, the search cannot tell which is right).

    Parameters
    ----------
    result : SearchResult
        The search's answer and its refined candidates (best first).
    limits : ConfidenceLimits
        ``max_scale_change`` and ``max_shear``.
    min_gap : float
        Smallest lead of the winner's correlation over the best other basin's.
    """
    problems = transform_problems(result.matrix, result.candidates[0]["coarse"], limits)
    if np.isfinite(result.gap) and result.gap < min_gap:
        problems.append(
            f"another placement correlates nearly as well (gap {result.gap:.3f} < {min_gap:g})"
        )
    return "uncertain: " + "; ".join(problems) if problems else "ok"


@dataclass(frozen=True)
class StartSearch:
    """A search around a rough start (config ``registration.start_search``).

    The candidates are the start composed, in the moving frame, with every rotation
    and isotropic scale of the grid below, each at its best shift within ``shift_um``
    of where the start puts the moving image's centre (masked normalised
    cross-correlation of the locally normalised images at a coarse sampling, as in
    :func:`global_search`). It covers a rough manual placement: the wide capture-range
    protocol perturbs the start by up to 15 deg, 10 % scale and 2 um.

    Attributes
    ----------
    rotation_deg : float
        Rotations tried about the start, +- degrees.
    rotation_step_deg : float
        Step between rotations, degrees.
    scale : float
        Relative isotropic scales tried about the start, +- (0.1 = 10 %).
    scale_steps : int
        Number of scales in that range (odd, so the start's own scale is tried).
    shift_um : float
        Radius of the shifts tried about the start's placement of the moving centre, um.
    coarse_px_per_um, contrast_um, min_overlap : float
        As in :class:`SearchRange`.
    candidates : int
        Best distinct candidates refined; the refined answer with the best correlation
        of the locally normalised images wins.
    """

    rotation_deg: float = 18.0
    rotation_step_deg: float = 3.0
    scale: float = 0.12
    scale_steps: int = 5
    shift_um: float = 2.5
    coarse_px_per_um: float = 2.0
    contrast_um: float = 1.0
    min_overlap: float = 0.8
    candidates: int = 3

    @classmethod
    def maybe(cls, settings) -> StartSearch | None:
        """From a config mapping (missing keys keep their defaults); None stays None (no
        search)."""
        return None if settings is None else cls(**dict(settings))

    def offsets(self) -> list[tuple[float, float]]:
        """(rotation_deg, relative scale) of every candidate about the start."""
        n = max(0, int(np.floor(self.rotation_deg / self.rotation_step_deg + 1e-9)))
        angles = self.rotation_step_deg * np.arange(-n, n + 1)
        scales = (
            np.linspace(1 - self.scale, 1 + self.scale, self.scale_steps)
            if self.scale_steps > 1
            else np.array([1.0])
        )
        return [(float(a), float(s)) for s in scales for a in angles]


def start_candidates(
    moving: np.ndarray,
    fixed: np.ndarray,
    start: np.ndarray,
    *,
    moving_px_per_um: float,
    fixed_px_per_um: float,
    search: StartSearch,
    contrast: ContrastCache | None = None,
) -> list[dict]:
    """The best distinct placements near a rough start, best first.

    Parameters
    ----------
    moving : ndarray
        Moving image whose intensities rise with the fixed image's (inverted TEM, or a
        predicted confocal), at ``moving_px_per_um``.
    fixed : ndarray
        Fixed image at ``fixed_px_per_um``.
    start : ndarray, shape (3, 3)
        The rough start, moving um -> fixed um.
    search : StartSearch
        Rotations, scales and shifts tried about the start.
    contrast : ContrastCache, optional
        The registration's, when it normalises ``fixed`` over the search's sigma: the
        locally normalised images are taken from it (and left in it).

    Returns
    -------
    list of dict
        Up to ``search.candidates`` placements at least 1 um apart (mean over the moving
        grid): ``rotation_deg, scale`` (about the start), ``ncc`` (coarse score),
        ``matrix`` (moving um -> fixed um). Empty when none overlaps the fixed image.
    """
    p = search.coarse_px_per_um
    # drawn from twice the coarse sampling: the anti-aliasing blur is paid once, not per
    # candidate (a finer intermediate changes the scores by less than the search's step)
    ppu_mid = min(2.0 * p, moving_px_per_um)
    moving_lc, fixed_lc = _normalised(
        moving, fixed, (moving_px_per_um, fixed_px_per_um), search.contrast_um, contrast
    )
    moving_mid = _coarse(moving_lc, moving_px_per_um, ppu_mid)
    fixed_c = _coarse(fixed_lc, fixed_px_per_um, p)
    start = np.asarray(start, float)
    h, w = moving.shape[0] / moving_px_per_um, moving.shape[1] / moving_px_per_um
    window = ((start @ np.array([w / 2, h / 2, 1.0]))[:2], search.shift_um)
    ranked = []
    for angle, scale in search.offsets():
        linear = start[:2, :2] @ affine_matrix(angle, (scale, scale))[:2, :2]
        best = _best_shift(moving_mid, ppu_mid, fixed_c, linear, p, search.min_overlap, window)
        if best is not None:
            ranked.append({"rotation_deg": angle, "scale": scale} | best)
    ranked.sort(key=lambda c: -c["ncc"])
    return _distinct(ranked, search.candidates, moving.shape, moving_px_per_um)


def pick_refined(
    moving: np.ndarray,
    fixed: np.ndarray,
    matrices: Sequence[np.ndarray],
    px_per_um: float,
    contrast_um: float,
    contrast: ContrastCache | None = None,
) -> tuple[int, float, float]:
    """Which refined placement wins: the best Pearson r of the locally normalised images.

    Parameters
    ----------
    moving, fixed : ndarray
        The search's moving image (intensities rising with the fixed image's) and the
        fixed image, both at ``px_per_um``.
    matrices : sequence of ndarray
        Refined placements, moving um -> fixed um.
    contrast_um : float
        Sigma of the local normalisation, um.
    contrast : ContrastCache, optional
        The registration's, when it normalises ``fixed`` over the same sigma: the
        images are taken from it instead of normalised again.

    Returns
    -------
    index : int
        Of the winner (-1 when none overlaps enough).
    similarity : float
        Its r.
    gap : float
        Its lead over the best placement that ends more than 0.5 um away (inf if none).
    """
    moving_lc, fixed_lc = _normalised(moving, fixed, (px_per_um, px_per_um), contrast_um, contrast)
    scores = [similarity(moving_lc, fixed_lc, m, px_per_um, "ssd") for m in matrices]
    scores = [s if np.isfinite(s) else -np.inf for s in scores]
    if not scores or not np.isfinite(max(scores)):
        return -1, float("nan"), float("nan")
    best = int(np.argmax(scores))
    others = [
        s
        for k, s in enumerate(scores)
        if k != best
        and np.isfinite(s)
        and grid_error_um(matrices[k], matrices[best], moving.shape, px_per_um) > 0.5
    ]
    gap = scores[best] - max(others) if others else float("inf")
    return best, float(scores[best]), float(gap)


def _normalised(
    moving: np.ndarray,
    fixed: np.ndarray,
    px_per_um: tuple[float, float],
    contrast_um: float,
    contrast: ContrastCache | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Both images locally normalised over ``contrast_um`` (``px_per_um``: moving, fixed);
    taken from ``contrast`` when it normalises this fixed image the same way."""
    if contrast is not None and contrast.serves(fixed, px_per_um[1], contrast_um):
        return contrast(moving, "ssd", px_per_um[0])
    return (
        local_contrast(moving, px_per_um[0], contrast_um),
        local_contrast(fixed, px_per_um[1], contrast_um),
    )


def _similarity(moving, fixed, matrix, moving_ppu, fixed_ppu, measure) -> float:
    """:func:`clemalign.confidence.similarity` with the fixed image at its own sampling."""
    if abs(moving_ppu - fixed_ppu) > 1e-9:
        h, w = fixed.shape[0] / fixed_ppu, fixed.shape[1] / fixed_ppu
        shape = (int(round(h * moving_ppu)), int(round(w * moving_ppu)))
        fixed = warp_image(fixed, fixed_ppu, np.eye(3), shape, moving_ppu)
    return similarity(moving, fixed, matrix, moving_ppu, measure)
