"""Figures that a person looks at (all axes in um)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .transforms import apply  # noqa: E402


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


def _outline(ax: plt.Axes, matrix: np.ndarray, width: float, height: float, **style) -> None:
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height], [0, 0]], dtype=float)
    mapped = apply(matrix, corners)
    ax.plot(mapped[:, 0], mapped[:, 1], **style)


def _landmarks(ax: plt.Axes, xy: np.ndarray, numbered: bool = True) -> None:
    colours = plt.cm.tab20(np.arange(len(xy)) % 20)
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
    fig, axes = plt.subplots(2, 2, figsize=(11, 10.5))
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
    _landmarks(axes[0, 0], raw_landmarks[["em_x_um", "em_y_um"]].to_numpy(float))

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
    _landmarks(axes[0, 1], raw_landmarks[["lm_x_um", "lm_y_um"]].to_numpy(float), numbered=False)

    what = "resampled" if track == "analogy" else "native sampling"
    axes[1, 0].imshow(em, cmap="gray", extent=_extent(em.shape, em_px_per_um))
    axes[1, 0].set_title(f"preprocessed EM ({what}, {em_px_per_um:.4g} px/um)", fontsize=9)
    _landmarks(axes[1, 0], landmarks[["em_x_um", "em_y_um"]].to_numpy(float))
    axes[1, 1].imshow(lm, cmap="gray", extent=_extent(lm.shape, lm_px_per_um))
    axes[1, 1].set_title(f"preprocessed confocal ({what}, {lm_px_per_um:.4g} px/um)", fontsize=9)
    _landmarks(axes[1, 1], landmarks[["lm_x_um", "lm_y_um"]].to_numpy(float))
    for ax in axes.ravel():
        ax.set_xlabel("x (um)")
        ax.set_ylabel("y (um)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
