"""How realistic the synthetic confocal images are, against real TEM/confocal pairs.

For every analogy case under ``<results>/preprocessed/<case>/`` (``frame.json`` track
``analogy``, with ``lm.tif``, ``em.tif``, ``frame.json`` and ``landmarks.csv``) this
computes :func:`clemalign.phantom.realism.confocal_statistics`:

* on the preprocessed confocal crop (``lm.tif``, green channel): the autocorrelation
  half-width (um), the fraction of the power above 1 cycle/um, and median / p99;
* against the preprocessed TEM (``em.tif``) with the confocal resampled onto the TEM grid
  by the ground truth (or the landmark affine, see
  :func:`clemalign.evaluation.confocal_on_tem_grid`): the Gaussian sigma (um) of the
  inverted TEM that best predicts the confocal, and that Pearson r.

It prints a markdown table, one row per case, then the ranges measured on six real
TEM/confocal pairs of mouse white matter kept aside for evaluation (issue 11;
:data:`clemalign.phantom.realism.REAL_PAIR_RANGES`), then how many cases fall inside each
range.

    python benchmarks/phantom_realism.py [--results results] [--cases tem01 tem02]
                                         [--tolerance 0.0] [--csv realism.csv]
                                         [--figure phantoms.png] [--seed 2012]

``--figure`` also draws the first default case with the simple (2D, affine-only) and the
realistic model side by side, preprocessed as the workflow does (TEM, confocal green).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd

from clemalign.evaluation import confocal_on_tem_grid
from clemalign.io import read_image, read_json, read_landmarks
from clemalign.phantom.realism import (
    REAL_PAIR_RANGES,
    confocal_statistics,
    within_real_ranges,
)

REQUIRED = ("lm.tif", "em.tif", "frame.json", "landmarks.csv")
#: Decimal places per statistic in the table.
DIGITS = {
    "acf_half_width_um": 2,
    "power_above_1_per_um": 3,
    "median_over_p99": 2,
    "best_sigma_um": 2,
    "best_pearson_r": 2,
}


def analogy_cases(preprocessed: Path, only: list[str] | None) -> list[Path]:
    """Case folders with all of :data:`REQUIRED` whose ``frame.json`` track is analogy."""
    if only:
        folders = [preprocessed / name for name in only]
        missing = [str(f) for f in folders if not f.is_dir()]
        if missing:
            raise SystemExit(f"no such case folder: {', '.join(missing)}")
    else:
        folders = sorted(p for p in preprocessed.iterdir() if p.is_dir())
    out = []
    for folder in folders:
        if not all((folder / name).exists() for name in REQUIRED):
            continue
        if read_json(folder / "frame.json").get("track") == "analogy":
            out.append(folder)
    return out


def case_statistics(folder: Path) -> dict[str, float]:
    """The realism statistics of one preprocessed case folder."""
    frame = read_json(folder / "frame.json")
    confocal, lm_ppu = read_image(folder / "lm.tif")
    tem, em_ppu = read_image(folder / "em.tif")
    lm_ppu = lm_ppu or frame.get("lm_px_per_um")
    em_ppu = em_ppu or frame.get("em_px_per_um")
    if lm_ppu is None or em_ppu is None:
        raise SystemExit(f"{folder}: no pixel size in the images or frame.json")
    if not math.isclose(lm_ppu, em_ppu, rel_tol=1e-3):
        print(f"warning: {folder.name}: confocal {lm_ppu} px/um, TEM {em_ppu} px/um")
    confocal = confocal.astype(float)
    tem = tem.astype(float)
    landmarks = read_landmarks(folder / "landmarks.csv")
    on_grid = confocal_on_tem_grid(tem, confocal, em_ppu, frame, landmarks)[0]
    return confocal_statistics(confocal, lm_ppu, tem=tem, confocal_on_tem_grid=on_grid)


def _fmt(value: float, digits: int) -> str:
    return "nan" if not np.isfinite(value) else f"{value:.{digits}f}"


def markdown_table(table: pd.DataFrame, tolerance: float) -> str:
    """Per-case rows, the real ranges, and the count of cases inside each range."""
    keys = list(REAL_PAIR_RANGES)
    lines = [
        "| case | " + " | ".join(keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for case, row in table.iterrows():
        cells = [_fmt(row[k], DIGITS[k]) for k in keys]
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    ranges = [f"{lo:g}-{hi:g}" for lo, hi in REAL_PAIR_RANGES.values()]
    lines.append("| real pairs (6) | " + " | ".join(ranges) + " |")
    inside = [within_real_ranges(row.to_dict(), tolerance) for _, row in table.iterrows()]
    counts = [f"{sum(flags[k] for flags in inside)}/{len(table)}" for k in keys]
    label = "cases in range" + (f" (+-{tolerance:.0%})" if tolerance else "")
    lines.append(f"| {label} | " + " | ".join(counts) + " |")
    return "\n".join(lines)


def compare_models_figure(path: Path, seed: int) -> None:
    """The first default case drawn by both phantom models, preprocessed (TEM | green)."""
    import matplotlib

    matplotlib.use("Agg")  # a script: no display
    import matplotlib.pyplot as plt

    from clemalign.phantom import make_analogy_case
    from clemalign.preprocess import prepare_analogy_pair

    fig, axes = plt.subplots(2, 2, figsize=(9, 9))
    for row, model in enumerate(("simple", "realistic")):
        case = make_analogy_case(seed, 0, {"model": model})
        pair = prepare_analogy_pair(
            case.em, case.em_px_per_um, case.lm, case.lm_px_per_um, case.landmarks
        )
        extent_em = (0, pair.em.shape[1] / pair.px_per_um, pair.em.shape[0] / pair.px_per_um, 0)
        extent_lm = (0, pair.lm.shape[1] / pair.px_per_um, pair.lm.shape[0] / pair.px_per_um, 0)
        axes[row, 0].imshow(pair.em, cmap="gray", extent=extent_em)
        axes[row, 0].set_title(f"{model}: TEM (um)")
        axes[row, 1].imshow(pair.lm, cmap="gray", extent=extent_lm)
        axes[row, 1].set_title(f"{model}: confocal green, crop (um)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"figure: {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results", help="results folder (default results)")
    parser.add_argument("--cases", nargs="*", help="case names (default: every analogy case)")
    parser.add_argument(
        "--tolerance", type=float, default=0.0, help="relative widening of the real ranges"
    )
    parser.add_argument("--csv", type=Path, help="write the per-case numbers to this CSV")
    parser.add_argument("--figure", type=Path, help="draw both phantom models to this PNG")
    parser.add_argument("--seed", type=int, default=2012, help="seed of --figure's case")
    args = parser.parse_args(argv)
    if args.figure is not None:
        compare_models_figure(args.figure, args.seed)

    preprocessed = Path(args.results) / "preprocessed"
    if not preprocessed.is_dir():
        raise SystemExit(f"no preprocessed cases under {preprocessed}")
    folders = analogy_cases(preprocessed, args.cases)
    if not folders:
        raise SystemExit(f"no analogy case with {', '.join(REQUIRED)} under {preprocessed}")
    table = pd.DataFrame(
        [case_statistics(folder) for folder in folders],
        index=pd.Index([f.name for f in folders], name="case"),
    )
    print(markdown_table(table, args.tolerance))
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.csv, float_format="%.6g")


if __name__ == "__main__":
    main()
