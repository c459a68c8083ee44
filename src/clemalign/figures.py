"""Figures that a person looks at (all axes in um).

Built with the object-oriented API (:class:`matplotlib.figure.Figure`, no pyplot), so
importing this module touches no global state: the user's backend (e.g. in a notebook)
and pyplot's figure registry are left alone, and ``Figure.savefig`` renders through the
output format's own canvas (Agg for PNG) whatever the backend is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from .io import landmark_points
from .transforms import apply, warp_image

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from .fiducials import MethodOutcome


def _extent(shape: tuple[int, ...], px_per_um: float) -> tuple[float, float, float, float]:
    """imshow extent (left, right, bottom, top) in um for the pixel-corner convention."""
    return (0.0, shape[1] / px_per_um, shape[0] / px_per_um, 0.0)


def _display(image: np.ndarray, max_px: int = 1500) -> tuple[np.ndarray, int]:
    """Strided view for display of very large images (the paper's TEM is 8000 px wide)."""
    step = max(1, int(np.ceil(max(image.shape[:2]) / max_px)))
    return image[::step, ::step], step


def _stretch(image: np.ndarray) -> np.ndarray:
    """Percentile contrast stretch to [0, 1] (per channel for RGB)."""
    img = image.astype(np.float32)
    axes = (0, 1)
    lo = np.percentile(img, 0.5, axis=axes, keepdims=True)
    hi = np.percentile(img, 99.8, axis=axes, keepdims=True)
    return np.clip((img - lo) / np.maximum(hi - lo, 1e-6), 0, 1)


def _footprint(matrix: np.ndarray, width: float, height: float) -> np.ndarray:
    """Closed outline (5, 2) of a width x height um field mapped by a 3x3 matrix."""
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height], [0, 0]], dtype=float)
    return apply(matrix, corners)


def _outline(ax: Axes, matrix: np.ndarray, width: float, height: float, **style) -> None:
    mapped = _footprint(matrix, width, height)
    ax.plot(mapped[:, 0], mapped[:, 1], **style)


def _landmarks(ax: Axes, xy: np.ndarray, numbered: bool = True) -> None:
    colours = colormaps["tab20"](np.arange(len(xy)) % 20)
    ax.scatter(xy[:, 0], xy[:, 1], s=40, facecolors="none", edgecolors=colours, linewidths=1.5)
    if numbered:
        for i, (x, y) in enumerate(xy):
            ax.annotate(
                str(i + 1),
                (x, y),
                xytext=(4, 4),
                textcoords="offset points",
                color=colours[i],
                fontsize=7,
            )


def case_figure(
    path: str,
    case: str,
    track: str,
    raw_em: np.ndarray,
    raw_em_px_per_um: float,
    raw_lm: np.ndarray,
    raw_lm_px_per_um: float,
    raw_landmarks: pd.DataFrame,
    em: np.ndarray,
    lm: np.ndarray,
    em_px_per_um: float,
    lm_px_per_um: float,
    landmarks: pd.DataFrame,
    start_to_raw_lm: np.ndarray | None = None,
    truth_to_raw_lm: np.ndarray | None = None,
) -> None:
    """Four panels: raw EM, raw LM (with the EM footprint), preprocessed EM and LM.

    Parameters
    ----------
    path : str
        Output PNG.
    case, track : str
        Case name and track, for the titles.
    raw_em, raw_lm : ndarray
        Raw images (LM may be RGB) at ``raw_*_px_per_um`` px/um.
    raw_landmarks : pandas.DataFrame
        Landmarks in the raw frames (um).
    em, lm : ndarray
        Preprocessed images at ``em_px_per_um`` and ``lm_px_per_um`` px/um.
    landmarks : pandas.DataFrame
        Landmarks in the preprocessed frames (um).
    start_to_raw_lm, truth_to_raw_lm : ndarray, optional
        3x3 maps EM um -> raw LM um, drawn as the EM footprint (solid: rough start from
        the landmarks; dashed: ground truth).
    """
    fig = Figure(figsize=(11, 10.5))
    axes = fig.subplots(2, 2)
    em_w = raw_em.shape[1] / raw_em_px_per_um
    em_h = raw_em.shape[0] / raw_em_px_per_um

    shown, step = _display(raw_em)
    axes[0, 0].imshow(_stretch(shown), cmap="gray", extent=_extent(raw_em.shape, raw_em_px_per_um))
    axes[0, 0].set_title(
        f"{case}: raw {'TEM' if track == 'analogy' else 'SEM'} "
        f"{raw_em.shape[1]}x{raw_em.shape[0]} px, {raw_em_px_per_um:.4g} px/um"
        + (f" (shown 1:{step})" if step > 1 else ""),
        fontsize=9,
    )
    _landmarks(axes[0, 0], landmark_points(raw_landmarks)[0])

    lm_shown = _stretch(raw_lm)
    cmap = None if lm_shown.ndim == 3 else "gray"
    axes[0, 1].imshow(lm_shown, cmap=cmap, extent=_extent(raw_lm.shape, raw_lm_px_per_um))
    axes[0, 1].set_title(
        f"raw confocal {raw_lm.shape[1]}x{raw_lm.shape[0]} px, {raw_lm_px_per_um:.4g} px/um",
        fontsize=9,
    )
    if start_to_raw_lm is not None:
        _outline(
            axes[0, 1],
            start_to_raw_lm,
            em_w,
            em_h,
            color="white",
            lw=1.2,
            label="EM field (landmark similarity)",
        )
    if truth_to_raw_lm is not None:
        _outline(
            axes[0, 1],
            truth_to_raw_lm,
            em_w,
            em_h,
            color="yellow",
            lw=1.0,
            ls="--",
            label="EM field (ground truth)",
        )
    if start_to_raw_lm is not None or truth_to_raw_lm is not None:
        axes[0, 1].legend(loc="lower right", fontsize=7)
    _landmarks(axes[0, 1], landmark_points(raw_landmarks)[1], numbered=False)

    what = "resampled" if track == "analogy" else "native sampling"
    axes[1, 0].imshow(em, cmap="gray", extent=_extent(em.shape, em_px_per_um))
    axes[1, 0].set_title(f"preprocessed EM ({what}, {em_px_per_um:.4g} px/um)", fontsize=9)
    _landmarks(axes[1, 0], landmark_points(landmarks)[0])
    axes[1, 1].imshow(lm, cmap="gray", extent=_extent(lm.shape, lm_px_per_um))
    axes[1, 1].set_title(f"preprocessed confocal ({what}, {lm_px_per_um:.4g} px/um)", fontsize=9)
    _landmarks(axes[1, 1], landmark_points(landmarks)[1])
    for ax in axes.ravel():
        ax.set_xlabel("x (um)")
        ax.set_ylabel("y (um)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def fiducial_figure(
    path: str,
    case: str,
    em: np.ndarray,
    em_px_per_um: float,
    lm: np.ndarray,
    lm_px_per_um: float,
    result: object,
    landmarks: pd.DataFrame,
    errors_nm: dict[str, tuple[float, float]],
    method: str | None = None,
) -> None:
    """The paper's Fig. 2 for one case, plus the predicted TRE map and the error bars.

    Panels: (a) SEM with detected beads, (b) confocal with detected beads, (c) overlay of
    the registered SEM (magenta) on the confocal (green), (d) registered landmarks
    (mapped SEM landmarks vs their confocal partners), (e) predicted TRE over the SEM
    footprint, (f) MAE +- STD (nm) of every method against the landmarks.

    Parameters
    ----------
    path : str
        Output PNG.
    case : str
        Case name.
    em, lm : ndarray
        SEM (moving) and confocal (fixed) images at ``*_px_per_um``.
    result : clemalign.fiducials.FiducialCase
        Detections and per-method outcomes.
    landmarks : pandas.DataFrame
        Evaluation landmarks (um; em and lm frames).
    errors_nm : dict
        method -> (MAE, STD) in nm (NaN for a failed method).
    method : str, optional
        Method whose transform panels (c)-(e) show; default the first ``ok`` one in
        table order (Algorithm 1 unless it failed), else the first.
    """
    if method is None:
        ok = [m for m, o in result.outcomes.items() if o.status == "ok"]
        method = ok[0] if ok else next(iter(result.outcomes))
    outcome = result.outcomes[method]
    fig = Figure(figsize=(16, 10.5))
    ax = fig.subplots(2, 3).ravel()
    matched_src = outcome.pairs_src_um if outcome.matrix is not None else np.zeros((0, 2))
    _sem_beads_panel(ax[0], case, em, em_px_per_um, result.em_beads.xy_um, matched_src)
    _confocal_beads_panel(ax[1], lm, lm_px_per_um, result.lm_beads.xy_um)
    em_w, em_h = em.shape[1] / em_px_per_um, em.shape[0] / em_px_per_um
    if outcome.matrix is not None and not outcome.status.startswith("failed"):
        foot = _footprint(outcome.matrix, em_w, em_h)
        _overlay_panel(
            ax[1], ax[2], method, em, em_px_per_um, lm, lm_px_per_um, outcome.matrix, foot
        )
        _registered_landmarks_panel(ax[3], landmarks, outcome.matrix, foot)
        if outcome.pairs_src_um is not None and len(outcome.pairs_src_um) > 3:
            _predicted_tre_panel(fig, ax[4], outcome, em_w, em_h)
    else:
        _failure_panels(ax[2:5], f"{method}\n{outcome.status}")
    words = {m: o.status.split(":", 1)[0] for m, o in result.outcomes.items()}
    _errors_panel(ax[5], errors_nm, words)
    notes = [f"{m}: {o.status}" for m, o in result.outcomes.items() if words[m] != "ok"]
    if notes:
        fig.suptitle("; ".join(notes) + f"\npanels (c)-(e) show {method}", fontsize=9, wrap=True)
    for a in ax[:5]:
        a.set_xlabel("x (um)")
        a.set_ylabel("y (um)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def _sem_beads_panel(
    ax: Axes, case: str, em: np.ndarray, px_per_um: float, beads: np.ndarray, matched: np.ndarray
) -> None:
    """(a) The SEM with its detected beads (yellow rings) and the matched ones (red dots)."""
    ax.imshow(_stretch(em), cmap="gray", extent=_extent(em.shape, px_per_um))
    ax.scatter(beads[:, 0], beads[:, 1], s=60, facecolors="none", edgecolors="yellow", lw=1)
    ax.scatter(matched[:, 0], matched[:, 1], s=12, c="red")
    ax.set_title(
        f"(a) {case}: SEM, {len(beads)} beads detected, {len(matched)} matched", fontsize=9
    )


def _confocal_beads_panel(ax: Axes, lm: np.ndarray, px_per_um: float, beads: np.ndarray) -> None:
    """(b) The confocal with its detected beads (yellow rings)."""
    ax.imshow(_stretch(lm), cmap="gray", extent=_extent(lm.shape, px_per_um))
    ax.scatter(beads[:, 0], beads[:, 1], s=60, facecolors="none", edgecolors="yellow", lw=1)
    ax.set_title(f"(b) confocal, {len(beads)} beads detected", fontsize=9)


def _overlay_panel(
    ax_lm: Axes,
    ax: Axes,
    method: str,
    em: np.ndarray,
    em_px_per_um: float,
    lm: np.ndarray,
    lm_px_per_um: float,
    matrix: np.ndarray,
    foot: np.ndarray,
) -> None:
    """(c) Registered SEM (magenta) on confocal (green), zoomed; footprint also on ``ax_lm``."""
    warped = warp_image(em, em_px_per_um, matrix, lm.shape, lm_px_per_um, cval=0.0)
    rgb = np.zeros(lm.shape + (3,), np.float32)
    rgb[..., 1] = _stretch(lm)
    rgb[..., 0] = rgb[..., 2] = _stretch(warped)
    ax.imshow(rgb, extent=_extent(lm.shape, lm_px_per_um))
    for a in (ax_lm, ax):
        a.plot(foot[:, 0], foot[:, 1], color="white", lw=1)
    ax.set_xlim(foot[:, 0].min() - 0.5, foot[:, 0].max() + 0.5)
    ax.set_ylim(foot[:, 1].max() + 0.5, foot[:, 1].min() - 0.5)
    ax.set_title(f"(c) {method}: SEM (magenta) on confocal (green)", fontsize=9)


def _registered_landmarks_panel(
    ax: Axes, landmarks: pd.DataFrame, matrix: np.ndarray, foot: np.ndarray
) -> None:
    """(d) Mapped SEM landmarks vs their confocal partners, errors drawn 100x."""
    em_xy, lm_xy = landmark_points(landmarks)
    mapped = apply(matrix, em_xy)
    ax.scatter(
        lm_xy[:, 0],
        lm_xy[:, 1],
        s=70,
        facecolors="none",
        edgecolors="green",
        label="confocal landmark",
    )
    ax.scatter(
        mapped[:, 0],
        mapped[:, 1],
        marker="+",
        s=60,
        c="magenta",
        label="registered SEM landmark",
    )
    gain = 100.0
    ax.quiver(
        lm_xy[:, 0],
        lm_xy[:, 1],
        (mapped - lm_xy)[:, 0] * gain,
        (mapped - lm_xy)[:, 1] * gain,
        angles="xy",
        scale_units="xy",
        scale=1,
        color="black",
        width=0.003,
        label=f"error x{gain:.0f}",
    )
    ax.plot(foot[:, 0], foot[:, 1], color="grey", lw=0.8)
    ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"(d) registered landmarks ({len(em_xy)})", fontsize=9)


def _predicted_tre_panel(
    fig: Figure, ax: Axes, outcome: MethodOutcome, em_w: float, em_h: float
) -> None:
    """(e) Predicted TRE (nm) over the em_w x em_h um SEM field, with the matched beads."""
    gx, gy = np.meshgrid(np.linspace(0, em_w, 80), np.linspace(0, em_h, 80))
    from .fiducials import predicted_tre_um  # lazy: the other figures need no fiducials

    tre = predicted_tre_um(
        outcome.pairs_src_um, outcome.fre_um, np.stack([gx.ravel(), gy.ravel()], 1)
    ).reshape(gx.shape)
    im = ax.imshow(tre * 1000, extent=(0, em_w, em_h, 0), cmap="viridis")
    ax.scatter(outcome.pairs_src_um[:, 0], outcome.pairs_src_um[:, 1], s=8, c="white")
    fig.colorbar(im, ax=ax, label="predicted TRE (nm)")
    ax.set_title(
        f"(e) predicted TRE over the SEM field, FRE {outcome.fre_um * 1000:.1f} nm",
        fontsize=9,
    )


def _failure_panels(axes: np.ndarray, message: str) -> None:
    """(c)-(e) when the method found no transform: the message, centred."""
    for a in axes:
        a.text(
            0.5,
            0.5,
            message,
            ha="center",
            va="center",
            wrap=True,
            fontsize=8,
            transform=a.transAxes,
        )


def _errors_panel(
    ax: Axes, errors_nm: dict[str, tuple[float, float]], status_words: dict[str, str]
) -> None:
    """(f) Landmark MAE +- STD (nm) of every method as bars. A failed method has no bar
    and says "failed"; an uncertain one has a hatched bar labelled "uncertain"."""
    names = list(errors_nm)
    words = [status_words.get(n, "ok") for n in names]
    failed = np.array([w == "failed" for w in words])
    mae = np.where(failed, np.nan, [errors_nm[n][0] for n in names])
    std = np.where(failed, np.nan, [errors_nm[n][1] for n in names])
    bars = ax.bar(
        names,
        np.nan_to_num(mae, nan=0.0),
        yerr=np.nan_to_num(std, nan=0.0),
        color=["tab:blue", "tab:orange", "tab:green", "tab:purple"][: len(names)],
        capsize=4,
    )
    for k, (value, word) in enumerate(zip(mae, words, strict=True)):
        if word == "uncertain":
            bars[k].set_hatch("//")
        label = f"{value:.1f}" if np.isfinite(value) else "failed"
        ax.annotate(
            label if word == "ok" or not np.isfinite(value) else f"{word} ({label})",
            (k, 0),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    ax.set_ylabel("landmark error, MAE +- STD (nm)")
    ax.set_title("(f) error against the landmarks", fontsize=9)


def dictionary_figure(
    path: str, D1: np.ndarray, D2: np.ndarray, size: int, case: str, max_atoms: int = 400
) -> None:
    """The paper's Fig. 6: atoms of the TEM and the confocal dictionary side by side.

    Atoms appear in the order given (the rule script sorts them by how often the
    training codes use them); each tile is contrast-stretched on its own; the same
    position shows the same atom in both panels.
    """
    k = min(D1.shape[1], max_atoms)
    side = int(np.ceil(np.sqrt(k)))

    def mosaic(D: np.ndarray) -> np.ndarray:
        tiles = np.ones((side * (size + 1) + 1, side * (size + 1) + 1))
        for j in range(k):
            atom = D[:, j].reshape(size, size)
            lo, hi = atom.min(), atom.max()
            atom = (atom - lo) / (hi - lo) if hi > lo else np.zeros_like(atom)
            r, c = divmod(j, side)
            tiles[
                1 + r * (size + 1) : 1 + r * (size + 1) + size,
                1 + c * (size + 1) : 1 + c * (size + 1) + size,
            ] = atom
        return tiles

    fig = Figure(figsize=(12, 6.3))
    axes = fig.subplots(1, 2)
    for ax, D, title in ((axes[0], D1, "TEM dictionary"), (axes[1], D2, "confocal dictionary")):
        ax.imshow(mosaic(D), cmap="gray", interpolation="nearest")
        ax.set_title(f"{case}: {title} ({k} of {D.shape[1]} atoms, {size}x{size} px)", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def analogy_figure(
    path: str,
    case: str,
    tem: np.ndarray,
    confocal_in_tem: np.ndarray,
    hertzmann: np.ndarray | None,
    sparse: np.ndarray,
    source_map: np.ndarray | None,
    px_per_um: float,
) -> None:
    """The paper's Fig. 7 for one case, plus the coherence of the original method.

    Panels: (a) TEM, (b) the confocal registered onto the TEM grid (ground truth or
    landmark affine), (c) the original image-analogy result, (d) the sparse result, and
    (e) where (c) copied each pixel from: the source (row, col) in px coloured by
    position, so coherent copies show as smooth patches of colour.
    """
    panels = [
        ("(a) TEM", tem),
        ("(b) registered confocal", confocal_in_tem),
        ("(c) original IA result", hertzmann),
        ("(d) proposed (sparse) IA result", sparse),
    ]
    fig = Figure(figsize=(18, 3.9))
    axes = fig.subplots(1, 5)
    extent = _extent(tem.shape, px_per_um)
    for ax, (title, image) in zip(axes, panels, strict=False):
        if image is None:
            ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes)
        else:
            shown = np.nan_to_num(np.asarray(image, dtype=float), nan=0.0)
            ax.imshow(_stretch(shown), cmap="gray", extent=extent, interpolation="nearest")
        ax.set_title(f"{case}: {title}", fontsize=9)
        ax.set_xlabel("x (um)")
    ax = axes[4]
    if source_map is None:
        ax.text(0.5, 0.5, "no source map", ha="center", va="center", transform=ax.transAxes)
    else:
        src = np.asarray(source_map, dtype=float)
        rgb = np.zeros((*src.shape[:2], 3))
        n_pairs = max(src[..., 0].max() + 1, 1)
        rgb[..., 0] = src[..., 1] / max(src[..., 1].max(), 1)
        rgb[..., 1] = src[..., 2] / max(src[..., 2].max(), 1)
        rgb[..., 2] = (src[..., 0] + 0.5) / n_pairs
        ax.imshow(rgb, extent=extent, interpolation="nearest")
    ax.set_title("(e) original IA: source position\n(red: row, green: col, blue: pair)", fontsize=9)
    axes[0].set_ylabel("y (um)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def _composite(fixed: np.ndarray, warped: np.ndarray) -> np.ndarray:
    """Colour composite: fixed in magenta, warped moving in green (NaN shows black)."""
    out = np.zeros((*fixed.shape, 3))
    f = _stretch(np.nan_to_num(fixed, nan=0.0))
    valid = np.isfinite(warped)
    m = np.zeros_like(f)
    if valid.any():
        lo, hi = np.percentile(warped[valid], [0.5, 99.8])
        m = np.clip((np.nan_to_num(warped, nan=lo) - lo) / max(hi - lo, 1e-6), 0, 1)
        m[~valid] = 0.0
    out[..., 0], out[..., 1], out[..., 2] = f, m, f
    return out


def registration_figure(
    path: str,
    case: str,
    fixed: np.ndarray,
    moving: dict[str, np.ndarray],
    start: np.ndarray,
    results: dict[str, dict[str, np.ndarray | None]],
    errors: dict[tuple[str, str], float],
    px_per_um: float,
) -> None:
    """Overlays before and after registration for every (source, measure) of a case.

    One row per source: the moving image warped by the start, then by each measure's
    answer, composited over the fixed confocal (magenta) in green; white where they
    agree. The TEM footprint is outlined. Titles give the landmark MAE (um).

    Parameters
    ----------
    fixed : ndarray
        Confocal crop.
    moving : dict
        Source -> moving image on the TEM grid (the one shown; for ``raw`` the inverted
        TEM).
    start : ndarray, shape (3, 3)
        TEM um -> crop um start.
    results : dict
        Source -> measure -> answer matrix (None when the registration failed).
    errors : dict
        (source, measure) -> landmark MAE, um (``(source, "start")`` for the start).
    px_per_um : float
        Sampling of both grids.
    """

    measures = list(dict.fromkeys(m for by in results.values() for m in by))
    rows, cols = len(results), 1 + len(measures)
    fig = Figure(figsize=(3.2 * cols, 3.3 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    extent = _extent(fixed.shape, px_per_um)
    for r, (source, by_measure) in enumerate(results.items()):
        image = moving[source]
        h, w = image.shape[0] / px_per_um, image.shape[1] / px_per_um
        for c, (label, matrix) in enumerate(
            [("start", start)] + [(m, by_measure.get(m)) for m in measures]
        ):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if matrix is None:
                ax.text(0.5, 0.5, "failed" if label in by_measure else "--", ha="center")
                ax.set_title(f"{source} {label}", fontsize=8)
                continue
            warped = warp_image(image, px_per_um, matrix, fixed.shape, px_per_um)
            ax.imshow(_composite(fixed, warped), extent=extent, interpolation="nearest")
            _outline(ax, matrix, w, h, color="yellow", lw=0.8)
            mae = errors.get((source, label), float("nan"))
            ax.set_title(f"{source} {label}: MAE {mae:.3f} um", fontsize=8)
    fig.suptitle(f"{case}: confocal (magenta) and moving image (green) before and after")
    fig.tight_layout()
    fig.savefig(path, dpi=70)


def registration_errors_plot(path: str, long: pd.DataFrame) -> None:
    """Landmark MAE (um, log scale) per case for every (source, measure), Table 2 as a plot."""
    methods = list(dict.fromkeys(zip(long["source"], long["measure"], strict=True)))
    cases = list(dict.fromkeys(long["case"]))
    fig = Figure(figsize=(max(6, 1.4 * len(cases) + 3), 4.2))
    ax = fig.subplots()
    width = 0.8 / max(len(methods), 1)
    colours = colormaps["tab20"](np.linspace(0, 1, max(len(methods), 2)))
    for k, (source, measure) in enumerate(methods):
        sub = long[(long["source"] == source) & (long["measure"] == measure)].set_index("case")
        values = [
            sub.loc[c, "mae_um"] if c in sub.index and sub.loc[c, "status"] == "ok" else np.nan
            for c in cases
        ]
        ax.bar(
            np.arange(len(cases)) + (k - (len(methods) - 1) / 2) * width,
            values,
            width,
            label=f"{source} {measure}",
            color=colours[k],
        )
    ax.set_xticks(np.arange(len(cases)), cases)
    ax.set_yscale("log")
    ax.set_ylabel("landmark MAE (um, log scale)")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("Table 2: landmark error after registration")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def capture_range_plot(path: str, summary: pd.DataFrame, success_um: float) -> None:
    """Success rate per case and (protocol, source, measure) from perturbed starts."""
    if "protocol" not in summary:
        summary = summary.assign(protocol="standard")
    keys = zip(summary["protocol"], summary["source"], summary["measure"], strict=True)
    methods = list(dict.fromkeys(keys))
    cases = list(dict.fromkeys(summary["case"]))
    grid = np.full((len(methods), len(cases)), np.nan)
    for row in summary.itertuples(index=False):
        key = (row.protocol, row.source, row.measure)
        grid[methods.index(key), cases.index(row.case)] = row.success_rate
    fig = Figure(figsize=(1.0 * len(cases) + 4, 0.45 * len(methods) + 1.8))
    ax = fig.subplots()
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(len(methods)):
        for j in range(len(cases)):
            if np.isfinite(grid[i, j]):
                colour = "black" if grid[i, j] > 0.6 else "white"
                ax.text(j, i, f"{grid[i, j]:.0%}", ha="center", va="center", color=colour)
    ax.set_xticks(range(len(cases)), cases)
    ax.set_yticks(range(len(methods)), [f"{p}: {s} {m}" for p, s, m in methods])
    fig.colorbar(im, ax=ax, label="success rate")
    ax.set_title(f"Capture range: back within {success_um} um of the unperturbed answer")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def residuals_figure(
    path: str,
    lm: np.ndarray,
    lm_px_per_um: float,
    residuals: pd.DataFrame | None,
    title: str,
) -> None:
    """Per-landmark residuals of an exported registration (report panel).

    Left: the raw LM image (um) with each LM landmark (circle, numbered) and the EM
    landmark mapped through the exported transform (cross), the residual drawn as an
    arrow magnified so that the largest is 10 % of the field (the factor is in the
    title). Right: per landmark, the residual (um) and the leave-one-out affine residual
    (the distance left by the affine fitted to the *other* landmarks: large when that
    landmark is misplaced or the tissue is not affine there).

    Parameters
    ----------
    path : str
        PNG written.
    lm : ndarray
        Raw LM analysis channel, [0, 1].
    lm_px_per_um : float
        Its sampling.
    residuals : DataFrame or None
        ``residuals.csv`` of :func:`clemalign.export.residual_table`; None when nothing
        was exported (then the title says why).
    title : str
        Case, route and status.
    """
    fig = Figure(figsize=(11, 4.6))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1]})
    shown, _ = _display(lm)
    left.imshow(_stretch(shown), cmap="gray", extent=_extent(lm.shape, lm_px_per_um))
    left.set_xlabel("x (um)")
    left.set_ylabel("y (um)")
    if residuals is None or residuals.empty:
        right.text(0.5, 0.5, "no landmarks or no usable answer", ha="center", va="center")
        right.set_axis_off()
        fig.suptitle(title, fontsize=9)
        fig.savefig(path, dpi=90)
        return
    lm_xy = residuals[["lm_x_um", "lm_y_um"]].to_numpy(float)
    mapped = residuals[["mapped_lm_x_um", "mapped_lm_y_um"]].to_numpy(float)
    field = max(lm.shape[:2]) / lm_px_per_um
    largest = float(np.max(np.hypot(*(mapped - lm_xy).T), initial=0.0))
    gain = 0.1 * field / largest if largest > 0 else 1.0
    _landmarks(left, lm_xy)
    tips = lm_xy + gain * (mapped - lm_xy)
    left.scatter(tips[:, 0], tips[:, 1], marker="x", s=25, color="tab:red", linewidths=1.2)
    for (x, y), (u, v) in zip(lm_xy, tips, strict=True):
        left.annotate("", (u, v), (x, y), arrowprops={"arrowstyle": "->", "color": "tab:red"})
    left.set_title(f"residuals x {gain:.0f} (x: mapped EM landmark)", fontsize=9)
    k = np.arange(len(residuals))
    right.bar(k - 0.2, residuals["residual_um"], 0.4, label="residual", color="tab:red")
    right.bar(
        k + 0.2,
        residuals["loo_affine_residual_um"],
        0.4,
        label="leave-one-out affine",
        color="tab:blue",
    )
    right.set_xticks(k, [str(i + 1) for i in k])
    right.set_xlabel("landmark")
    right.set_ylabel("um")
    right.legend(fontsize=8)
    mean = float(residuals["residual_um"].mean())
    right.set_title(f"mean residual {mean:.3f} um", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
