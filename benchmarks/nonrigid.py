"""Non-rigid refinement (clemalign.nonrigid) after the affine registration, on the default data.

For the default synthetic analogy cases on disk (``results/preprocessed/tem0*``,
``results/registration/tem0*``, ``results/analogy/tem0*``), two routes start from their
affine answer of the registration step and add a cubic B-spline deformation
(:func:`clemalign.nonrigid.register_bspline`) against the confocal crop (``lm.tif``):

* ``raw/mi``: moving = the TEM (raw intensities), measure MI, start = ``raw.json``
  ``measures.mi.matrix``;
* ``sparse/ssd``: moving = the sparse prediction (``sparse_predicted.tif``), measure SSD,
  start = ``sparse.json`` ``measures.ssd.matrix``.

Error of a mapping: mean over the TEM pixel centres of ``|mapping(x) - truth(x)|`` (um),
with ``truth`` the phantom's deformation field (``frame.json`` ``ground_truth_field``);
for the B-spline the mapping is the result's sampled field (``result.field.apply``).
``floor``: the same error for the true field's own least-squares affine, the best any
affine can do (``rms``: ``nonrigid_floor_rms_um``, the RMS of the non-affine part).
``best affine``: the smaller affine error of the two routes for the case.

Targets (issue 13 item 3): lower the error by at least 30 % against the best affine where
the non-affine part is above 0.1 um RMS, and never raise it by more than 5 %.

Sections: (1) the defaults, per case; (1b) elastix's B-spline beside ours (below);
(2) a sweep of the finest grid spacing and the bending weight (median, worst and best
change against the start over the 6 cases); (3) whether the measure points at the
truth: at full sampling, the measure at the affine start and at the true deformation
(the B-spline of the default grid fitted to it), the truth's bending energy, and the
error after registering from the truth instead of from the affine (one level, default
grid; bending weight 0 and default); (4) how good the moving image must be: the B-spline
step under SSD from raw/mi's affine on the phantom's exact analogy
(:func:`clemalign.phantom.make_analogy_case` ``exact_prediction_px_per_um``: the
confocal's expected green on the TEM grid through the true distortion), on mixes of it
with today's sparse prediction, on the same with every fibre at the mean dye uptake,
and the correlation the best linear predictor from the TEM's patches reaches.

Section 1b, elastix (``itk-elastix``; skipped with a message if it does not import),
route raw/mi only: moving = the raw TEM on the TEM grid, fixed = ``lm.tif``, the images
in um and the start passed exactly as ``benchmarks/registration.py`` does (its
``to_itk``, ``_affine_map`` and ``elastix_parameters`` are imported from it: pixel (0, 0)
centred at ``0.5 / p`` um; the moving->fixed start ``S`` given as
``initial_transform_parameter_object``, one AffineTransform map holding ``inv(S)`` about
the centre of the start footprint, composed). Per case:

* ours: :func:`register_bspline` from ``raw.json`` ``measures.mi.matrix`` with the
  defaults (as section 1);
* elastix B-spline from the same affine: ``GetDefaultParameterMap('bspline', 3)`` with
  metric ``AdvancedMattesMutualInformation`` alone (``NumberOfHistogramBins 32``),
  ``FinalGridSpacingInPhysicalUnits 3.5`` (um, as ours), ``MaximumNumberOfThreads 1``,
  the rest elastix's defaults (3 resolutions, smoothing pyramids, grid spacing schedule
  2, 1.41, 1 (ours doubles: 4, 2, 1), ``AdaptiveStochasticGradientDescent`` with
  automatic step sizes, 256 iterations per resolution, linear interpolation while
  registering). Note: that default map is *not* penalty-free: it is a multi-metric map
  with ``TransformBendingEnergyPenalty`` at ``Metric1Weight 1``; the penalty is removed
  unless stated. Variants: ``full`` (``ImageSampler Full``, every fixed pixel, as
  registration.py; no penalty); ``random`` (elastix's default ``RandomCoordinate``
  sampler, 2048 new samples per iteration; no penalty); ``random, bending 1`` (the
  default map's penalty and weight kept); ``random, bending 100`` (weight 100 = our
  default MI weight: elastix's penalty is the mean over its fixed samples of the squared
  Frobenius norms of the transform's spatial Hessians, ``|d_xx|² + 2 |d_xy|² +
  |d_yy|²`` per component in 1/um², the quantity of our :func:`bending_energy`, and both
  MI are in nats, so 100 is about the same trade-off; elastix averages over the fixed
  crop in fixed coordinates, ours over the TEM field in TEM coordinates). The
  penalised runs use the random sampler only: a full-sampling run costs about 30 s
  per case, about 80 times ours, and the section already takes about 5 minutes.
* elastix affine then B-spline from the landmark start (``start_transform.json``): a
  parameter object of registration.py's MI affine map (``elastix_parameters('mi')``:
  full sampling, 200 iterations per level) followed by the ``random`` B-spline map
  above. ``elastix affine``: the error of its affine stage alone.

The grid: elastix places its control grid over the fixed crop's bounding box mapped by
the preceding transforms, i.e. in TEM um (9 x 9 or 10 x 10 nodes over the 21 um crop;
spacing 3.4-3.8 um, printed), ours over the TEM field (13.8 um, 7 x 7 nodes).

Scoring elastix: its transforms map fixed points to moving points, ``T(y) = x``. ``T``
is sampled at every fixed pixel centre by transformix (``ComputeDeformationField``) and
interpolated by cubic splines; for each TEM pixel centre ``x`` the fixed point ``y``
with ``T(y) = x`` is found by the fixed-point iteration ``y <- y - G (T(y) - x)`` (``G``
the linear part of the least-squares affine of the ``(T(y), y)`` pairs; iterated to
1e-6 um), and ``y`` is scored by :func:`field_error_um` as ours. Verified per run: ``x``
recomputed from ``y`` by elastix's own combination transform (``TransformPoint``) at
every 97th TEM pixel, max discrepancy printed (below 1e-6 um);
and once (:func:`elastix_selfcheck`): zero iterations give back the start affine to
1e-3 um (from our affine; and registration.py's affine map then the B-spline map from
the landmark start), and the ``random`` variant run twice on the first case (its
random draw is fixed: the same answer). Times: one run each (no repeats: the
full-sampling runs are too slow for more), seconds of wall clock of the registration
call alone (images to ITK included; transformix and the inversion not); ours as in
section 1.

What section 1b shows (one run, 2-core machine, 5 minutes): ours lowers the error
against our affine in every case (-6 % in median, 0.164 -> 0.157 um); elastix's
B-spline from the same affine raises it, with full sampling most (+85 % in median,
0.33 um; -0 % to +160 %), with its random sampler +61 %, with the bending penalty
+32 % (weight 1) and +14 % (weight 100, the best elastix variant: -12 % to +46 %);
elastix's affine then B-spline from the landmarks +43 % (its affine stage alone +4 %).
Times per case: ours 0.4 s, elastix 0.8 s (random), 3 s (random with the penalty),
30 s (full), 10 s (affine at full sampling + B-spline). Like ours, elastix's MI has no
optimum at the truth on these images (section 3); without our stronger regulariser it
fits spurious displacement.

    python benchmarks/nonrigid.py [--quick] [--elastix | --no-elastix | --exact]

``--quick`` skips the sweep; ``--elastix`` runs section 1b only, ``--no-elastix`` skips it,
``--exact`` runs section 4 only.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from clemalign.cases import synthetic_number
from clemalign.evaluation import frame_ground_truth, truth_error_um
from clemalign.io import read_image, read_json
from clemalign.nonrigid import (
    DEFAULT_BENDING_WEIGHT,
    ControlGrid,
    bending_energy,
    make_bspline_cost,
    register_bspline,
)
from clemalign.phantom import make_analogy_case
from clemalign.register import pixel_centres_um
from clemalign.transforms import apply

ROOT = Path(__file__).resolve().parents[1] / "results"
CASES = [f"tem0{i}" for i in range(1, 7)]
ROUTES = (("raw", "mi"), ("sparse", "ssd"))
SPACING_UM = 3.5  # the default finest grid spacing of register_bspline
SWEEP_SPACINGS_UM = (3.5, 7.0)
SWEEP_WEIGHTS = {"mi": (0.0, 10.0, 30.0, 100.0, 300.0), "ssd": (10.0, 100.0, 300.0, 1000.0)}
ELASTIX_BINS = 32
#: elastix B-spline variants from our affine: label, image sampler, bending-penalty weight
ELASTIX_VARIANTS = (
    ("full", "full", 0.0),
    ("random", "random", 0.0),
    ("random, bending 1", "random", 1.0),
    ("random, bending 100", "random", DEFAULT_BENDING_WEIGHT["mi"]),
)
INVERSE_TOL_UM = 1e-6  # the fixed-point iteration's stop (um)
EXACT_MIX = (0.0, 0.5, 0.75, 1.0)  # share of the exact analogy in section 4's moving image
EXACT_WEIGHTS = (DEFAULT_BENDING_WEIGHT["ssd"], 100.0, 10.0)  # section 4's bending weights


def load_case(case: str) -> dict:
    """Images, truth and affine starts of one case."""
    pre, reg, ana = (
        ROOT / "preprocessed" / case,
        ROOT / "registration" / case,
        ROOT / "analogy" / case,
    )
    em, ppu = read_image(pre / "em.tif")
    lm, ppu_f = read_image(pre / "lm.tif")
    frame = read_json(pre / "frame.json")
    truth = frame_ground_truth(frame)
    moving = {"raw": em, "sparse": read_image(ana / "sparse_predicted.tif")[0]}
    starts = {
        source: np.asarray(read_json(reg / f"{source}.json")["measures"][measure]["matrix"])
        for source, measure in ROUTES
    }
    return {
        "case": case,
        "moving": moving,
        "fixed": lm,
        "ppu": ppu,
        "ppu_f": ppu_f,
        "truth": truth,
        "floor_rms": frame["nonrigid_floor_rms_um"],
        "starts": starts,
        "shape": em.shape,
    }


def field_error_um(mapping, data: dict) -> float:
    """Mean |mapping(x) - truth(x)| (um) over the TEM pixel centres."""
    xy = pixel_centres_um(data["shape"], data["ppu"])
    return float(np.mean(np.hypot(*(mapping(xy) - data["truth"].apply(xy)).T)))


def run(data: dict, source: str, measure: str, **options):
    """register_bspline of one route: (result, seconds)."""
    t0 = time.perf_counter()
    result = register_bspline(
        data["moving"][source],
        data["fixed"],
        data["starts"][source],
        moving_px_per_um=data["ppu"],
        fixed_px_per_um=data["ppu_f"],
        measure=measure,
        **options,
    )
    return result, time.perf_counter() - t0


def defaults_table(cases: list[dict]) -> list[dict]:
    """Section 1: every case and route with the default settings."""
    rows = []
    print("## 1. Defaults\n")
    print(
        f"grid spacing {SPACING_UM} um at the finest level (doubling per coarser level), "
        f"3 levels, bending weight {DEFAULT_BENDING_WEIGHT['mi']:g} (MI) / "
        f"{DEFAULT_BENDING_WEIGHT['ssd']:g} (SSD), 32 bins, tol 1e-3 um.\n"
    )
    print(
        "| case | floor rms | floor mean | route | affine | B-spline | change | "
        "vs best affine | disp. rms | min det ratio | iterations | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for data in cases:
        floor = truth_error_um(data["truth"].affine, data["truth"], data["shape"], data["ppu"])
        affine_err = {
            s: truth_error_um(data["starts"][s], data["truth"], data["shape"], data["ppu"])
            for s, _ in ROUTES
        }
        best = min(affine_err.values())
        for source, measure in ROUTES:
            result, seconds = run(data, source, measure)
            err = field_error_um(result.field.apply, data)
            row = {
                "case": data["case"],
                "route": f"{source}/{measure}",
                "floor_rms": data["floor_rms"],
                "affine": affine_err[source],
                "bspline": err,
                "change": 100 * (err - affine_err[source]) / affine_err[source],
                "vs_best": 100 * (err - best) / best,
                "seconds": seconds,
            }
            rows.append(row)
            its = "/".join(str(r["iterations"]) for r in result.info["levels"])
            print(
                f"| {data['case']} | {data['floor_rms']:.3f} | {floor:.3f} | {row['route']} | "
                f"{row['affine']:.3f} | {err:.3f} | {row['change']:+.0f} % | "
                f"{row['vs_best']:+.0f} % | {result.info['displacement_rms_um']:.3f} | "
                f"{result.info['min_jacobian_ratio']:.2f} | {its} | {seconds:.2f} |"
            )
    print()
    for source, measure in ROUTES:
        mine = [r for r in rows if r["route"] == f"{source}/{measure}"]
        eligible = [r for r in mine if r["floor_rms"] > 0.1]
        met = sum(r["vs_best"] <= -30 for r in eligible)
        harm = sum(r["change"] > 5 for r in mine)
        print(
            f"- {source}/{measure}: median change {np.median([r['change'] for r in mine]):+.1f} %"
            f" (worst {max(r['change'] for r in mine):+.1f} %); at least 30 % below the best "
            f"affine in {met} of {len(eligible)} cases with a non-affine part above 0.1 um "
            f"RMS; more than 5 % worse than the start in {harm} of {len(mine)}; "
            f"{np.median([r['seconds'] for r in mine]):.2f} s median per registration."
        )
    print()
    return rows


def sweep_table(cases: list[dict]) -> None:
    """Section 2: finest grid spacing x bending weight."""
    print("## 2. Settings sweep (change of the error against the affine start, 6 cases)\n")
    print("| route | spacing um | bending weight | median | worst | best | per case | s/run |")
    print("|---|---|---|---|---|---|---|---|")
    for source, measure in ROUTES:
        for spacing in SWEEP_SPACINGS_UM:
            for weight in SWEEP_WEIGHTS[measure]:
                changes, seconds = [], []
                for data in cases:
                    start = truth_error_um(
                        data["starts"][source], data["truth"], data["shape"], data["ppu"]
                    )
                    result, sec = run(
                        data, source, measure, grid_spacing_um=spacing, bending_weight=weight
                    )
                    err = field_error_um(result.field.apply, data)
                    changes.append(100 * (err - start) / start)
                    seconds.append(sec)
                c = np.array(changes)
                print(
                    f"| {source}/{measure} | {spacing:g} | {weight:g} | {np.median(c):+.0f} % | "
                    f"{c.max():+.0f} % | {c.min():+.0f} % | {' '.join(f'{v:+.0f}' for v in c)} | "
                    f"{np.mean(seconds):.2f} |"
                )
    print()


def truth_table(cases: list[dict]) -> None:
    """Section 3: does the measure's optimum lie at the true deformation?"""
    print("## 3. Does the measure point at the truth? (full sampling, default grid)\n")
    print(
        "`fit`: error of the default grid's B-spline fitted to the truth (what the model "
        "can reach); `measure`: at the affine start and at that fit; `bending`: the fit's "
        "mean bending energy (1/um²), and `Δ cost`: its cost minus the start's under the "
        "default weight (positive: the default regulariser prefers the affine); then the "
        "error after one full-sampling level started from the truth (weight 0, default) "
        "and from the affine (weight 0).\n"
    )
    print(
        "| case | route | fit | measure: affine | truth | bending | Δ cost | "
        "from truth, w 0 | from truth, default w | from affine, w 0 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for data in cases:
        shape, ppu = data["shape"], data["ppu"]
        grid = ControlGrid.over_field((shape[1] / ppu, shape[0] / ppu), SPACING_UM)
        for source, measure in ROUTES:
            start = data["starts"][source]

            def residual(p, start=start, truth=data["truth"]):
                return truth.apply(p) - apply(start, p)

            coef = grid.fit(residual)
            cost = make_bspline_cost(
                data["moving"][source],
                data["fixed"],
                start,
                grid,
                moving_px_per_um=ppu,
                fixed_px_per_um=data["ppu_f"],
                measure=measure,
            )
            at_affine = cost(np.zeros(grid.size))[0]
            at_truth = cost(coef.ravel())[0]
            bending = bending_energy(coef, grid)
            delta = at_truth + DEFAULT_BENDING_WEIGHT[measure] * bending - at_affine
            fit = field_error_um(
                lambda p, s=start, c=coef, g=grid: apply(s, p) + g.displacement(c, p), data
            )
            one = {"levels": 1, "grid_spacing_um": SPACING_UM}
            errors = [
                field_error_um(run(data, source, measure, **opts, **one)[0].field.apply, data)
                for opts in (
                    {"initial_displacement": residual, "bending_weight": 0.0},
                    {"initial_displacement": residual},
                    {"bending_weight": 0.0},
                )
            ]
            print(
                f"| {data['case']} | {source}/{measure} | {fit:.3f} | {at_affine:.4f} | "
                f"{at_truth:.4f} | {bending:.4f} | {delta:+.3f} | "
                + " | ".join(f"{e:.3f}" for e in errors)
                + " |"
            )
    print()


def _standardised(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return (image - image[mask].mean()) / image[mask].std()


def exact_predictions(case: str, ppu: float) -> dict[str, np.ndarray]:
    """The phantom's exact analogies of ``case`` on the TEM grid (``exact``, ``mean_stain``)."""
    config = yaml.safe_load((ROOT.parent / "config.yaml").read_text())
    synthetic = make_analogy_case(
        config["seed"],
        synthetic_number(case),
        dict(config["synthetic"]["analogy"]),
        case,
        exact_prediction_px_per_um=ppu,
    )
    return synthetic.exact_predictions


def linear_patch_ceiling(em: np.ndarray, target: np.ndarray, patch: int = 15) -> float:
    """Correlation with ``target`` of the best linear predictor from the TEM's patches.

    Features per pixel: the ``patch`` x ``patch`` neighbourhood of the standardised TEM,
    of its dark mask (below -0.5 SD: myelin) and of the TEM blurred by 3 px; ridge
    regression (weight 10) fitted to ``target`` on the same image, so an upper bound for
    predictors of this kind.
    """
    em = np.asarray(em, float)
    em = (em - em.mean()) / em.std()
    channels = (em, (em < -0.5).astype(float), ndimage.gaussian_filter(em, 3.0))
    half = patch // 2
    columns = [
        sliding_window_view(np.pad(c, half, mode="reflect"), (patch, patch)).reshape(em.size, -1)
        for c in channels
    ]
    x = np.hstack([*columns, np.ones((em.size, 1))])
    y = np.asarray(target, float).ravel()
    w = np.linalg.solve(x.T @ x + 10.0 * np.eye(x.shape[1]), x.T @ y)
    return float(np.corrcoef(x @ w, y)[0, 1])


def _moving_images(data: dict, exact: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """Section 4's moving images, from today's prediction to the exact analogy."""
    sparse = data["moving"]["sparse"]
    mask = np.isfinite(sparse)
    images = []
    for a in EXACT_MIX:
        mixed = a * _standardised(exact["exact"], mask)
        mixed = mixed + (1 - a) * _standardised(np.where(mask, sparse, 0.0), mask)
        images.append((f"a {a:g}", np.where(mask, mixed, np.nan)))
    images.insert(-1, ("mean stain", exact["mean_stain"]))
    return images


def exact_analogy_table(cases: list[dict]) -> None:
    """Section 4: how good must the prediction be for the B-spline step to pay?"""
    print("## 4. What an exact analogy would allow (SSD on local contrast, from raw/mi's affine)\n")
    print(
        "moving `a x`: (1 - a) x the sparse prediction + a x the phantom's exact analogy "
        "(the confocal's expected green on the TEM grid through the true distortion; both "
        "standardised): `a 0` is today's prediction, `a 1` a perfect one. `mean stain`: "
        "the exact analogy with every fibre at the mean dye uptake, the best a predictor "
        "that knew the whole 3D tissue but not each fibre's uptake could draw. `r`: "
        "correlation with the exact analogy. Cells: error against the truth after the "
        "B-spline step, in % against the best affine of the two routes (as section 1).\n"
    )
    changes: dict[tuple[str, float], list[float]] = {}
    ceilings: list[float] = []
    weights = " | ".join(f"w {w:g}" for w in EXACT_WEIGHTS)
    print(f"| case | best affine | moving | r | {weights} |")
    print("|---|---|---|---|" + "---|" * len(EXACT_WEIGHTS))
    for data in cases:
        best = min(
            truth_error_um(data["starts"][s], data["truth"], data["shape"], data["ppu"])
            for s, _ in ROUTES
        )
        exact_images = exact_predictions(data["case"], data["ppu"])
        images = _moving_images(data, exact_images)
        exact = exact_images["exact"]
        ceilings.append(linear_patch_ceiling(data["moving"]["raw"], exact))
        for label, moving in images:
            mask = np.isfinite(moving) & np.isfinite(exact)
            r = np.corrcoef(moving[mask], exact[mask])[0, 1]
            cells = []
            for w in EXACT_WEIGHTS:
                result = register_bspline(
                    moving,
                    data["fixed"],
                    data["starts"]["raw"],
                    moving_px_per_um=data["ppu"],
                    fixed_px_per_um=data["ppu_f"],
                    measure="ssd",
                    bending_weight=w,
                )
                change = 100 * (field_error_um(result.field.apply, data) - best) / best
                changes.setdefault((label, w), []).append(change)
                cells.append(f"{change:+.0f} %")
            row = " | ".join(cells)
            print(f"| {data['case']} | {best:.3f} | {label} | {r:.2f} | {row} |")
    print()
    for (label, w), values in changes.items():
        met = sum(v <= -30 for v in values)
        print(
            f"- {label}, weight {w:g}: median {np.median(values):+.0f} %, at least 30 % below "
            f"the best affine in {met} of {len(values)} cases"
        )
    print(
        "- the best linear predictor from the TEM's 15x15 patches (fitted in-sample to the "
        "exact analogy; TEM, its dark mask and its 3 px blur): r = "
        + ", ".join(f"{r:.2f}" for r in ceilings)
    )
    print()


def _elastix_module():
    """``benchmarks/registration.py`` (elastix's helpers and conventions) and None, or None
    and why elastix is unavailable."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        import registration
    except Exception as exc:  # any failure: skip the section
        return None, f"benchmarks/registration.py does not import: {type(exc).__name__}: {exc}"
    if registration.itk is None:
        return None, registration.ELASTIX_ERROR
    return registration, None


def _as_dict(parameter_map) -> dict:
    """An elastix parameter map as a plain dict of lists of strings."""
    return {key: list(parameter_map[key]) for key in parameter_map.keys()}


def elastix_bspline_map(bench, sampler: str, bending_weight: float, iterations=None) -> dict:
    """elastix's default 3-resolution B-spline map with the changes of the docstring."""
    default = bench.itk.ParameterObject.New().GetDefaultParameterMap("bspline", 3)
    pm = _as_dict(default)
    pm["Metric"] = ["AdvancedMattesMutualInformation"]
    pm["Metric0Weight"] = ["1.0"]
    pm.pop("Metric1Weight", None)
    if bending_weight > 0:
        pm["Metric"].append("TransformBendingEnergyPenalty")
        pm["Metric1Weight"] = [repr(float(bending_weight))]
    pm["NumberOfHistogramBins"] = [str(ELASTIX_BINS)]
    pm["FinalGridSpacingInPhysicalUnits"] = [repr(SPACING_UM)]
    if sampler == "full":
        pm["ImageSampler"] = ["Full"]
        pm["NewSamplesEveryIteration"] = ["false"]
    elif sampler != "random":
        raise ValueError(f"unknown sampler {sampler!r}")
    if iterations is not None:
        pm["MaximumNumberOfIterations"] = [str(iterations)]
    pm["MaximumNumberOfThreads"] = ["1"]
    pm["WriteResultImage"] = ["false"]
    return pm


class ElastixInverse:
    """Moving (TEM) um -> fixed um: the inverse of elastix's fixed -> moving ``T``.

    ``field`` (rows, cols, 2): ``T(y) - y`` (x, y) um at the fixed pixel centres
    (transformix's deformation field), interpolated by cubic splines. ``__call__`` solves
    ``T(y) = x`` by ``y <- y - G (T(y) - x)`` from ``y = g(x)``, with ``g`` the
    least-squares affine of the ``(T(y), y)`` pairs and ``G`` its linear part.
    """

    def __init__(self, field: np.ndarray, px_per_um: float):
        self.field = np.asarray(field, dtype=np.float64)
        self.ppu = px_per_um
        y = pixel_centres_um(self.field.shape[:2], px_per_um)
        t = y + self.field.reshape(-1, 2)
        design = np.column_stack([t, np.ones(len(t))])
        solution = np.linalg.lstsq(design, y, rcond=None)[0]  # (3, 2): [t, 1] -> y
        self.guess = np.eye(3)
        self.guess[:2] = solution.T
        self.residual_um = np.nan  # max |T(y) - x| of the last call

    def forward(self, y: np.ndarray) -> np.ndarray:
        """``T(y)``, fixed um -> moving um, from the sampled field."""
        rc = y[:, ::-1] * self.ppu - 0.5
        d = [
            ndimage.map_coordinates(self.field[..., k], rc.T, order=3, mode="nearest")
            for k in (0, 1)
        ]
        return y + np.stack(d, axis=1)

    def __call__(self, x: np.ndarray, max_iter: int = 100) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        y = apply(self.guess, x)
        lin = self.guess[:2, :2]
        for _ in range(max_iter):
            r = self.forward(y) - x
            self.residual_um = float(np.abs(r).max())
            if self.residual_um < INVERSE_TOL_UM:
                break
            y = y - r @ lin.T
        else:
            raise RuntimeError(
                f"inversion did not converge: max residual {self.residual_um:.1e} um"
            )
        rows, cols = self.field.shape[:2]
        if np.any((y < 0) | (y > np.array([cols, rows]) / self.ppu)):
            raise RuntimeError("inverse outside the fixed crop")
        return y


def elastix_bspline(data: dict, start: np.ndarray, maps: list[dict], bench) -> dict:
    """elastix from ``start`` (moving->fixed, passed as registration.py does) with the
    parameter maps ``maps`` on the raw/mi pair of a case.

    Returns ``mapping`` (:class:`ElastixInverse`, TEM um -> fixed um), ``seconds`` (the
    registration call), ``affines`` (moving->fixed matrices after the initial and after
    each further AffineTransform map: ``inv(M_k @ ... @ M_0)``), ``grid_um`` (the last
    map's GridSpacing, if a B-spline; ``grid_nodes`` its GridSize) and ``check_um`` (max
    ``|T(y) - x|`` with ``T`` elastix's combination transform, every 97th TEM pixel).
    """
    itk = bench.itk
    moving, fixed = data["moving"]["raw"], data["fixed"]
    ppu, ppu_f = data["ppu"], data["ppu_f"]
    inverse = np.linalg.inv(start)  # fixed -> moving, elastix's direction
    centre = apply(start, [[moving.shape[1] / 2 / ppu, moving.shape[0] / 2 / ppu]])[0]
    initial = itk.ParameterObject.New()
    initial.AddParameterMap(bench._affine_map(inverse, np.asarray(centre, float), fixed, ppu_f))
    parameters = itk.ParameterObject.New()
    for pm in maps:
        parameters.AddParameterMap(pm)
    t0 = time.perf_counter()
    reg = itk.ElastixRegistrationMethod.New(
        fixed_image=bench.to_itk(fixed, ppu_f),
        moving_image=bench.to_itk(moving, ppu),
        parameter_object=parameters,
        initial_transform_parameter_object=initial,
        log_to_console=False,
        number_of_threads=1,
    )
    reg.UpdateLargestPossibleRegion()
    seconds = time.perf_counter() - t0
    result = reg.GetTransformParameterObject()
    out_maps = [result.GetParameterMap(i) for i in range(result.GetNumberOfParameterMaps())]
    if len(out_maps) != 1 + len(maps) or any(
        m["HowToCombineTransforms"][0] != "Compose" for m in out_maps
    ):
        raise RuntimeError("expected elastix to return [initial, *maps], composed")
    chain, affines = np.eye(3), []
    for m in out_maps:
        if m["Transform"][0] == "AffineTransform":
            chain = bench._map_matrix(m) @ chain  # elastix: x -> M_k(...M_0(x)), fixed -> moving
            affines.append(np.linalg.inv(chain))
    with tempfile.TemporaryDirectory() as scratch:  # transformix writes deformationField.nii
        transformix = itk.TransformixFilter.New(
            moving_image=bench.to_itk(moving, ppu),
            transform_parameter_object=result,
            log_to_console=False,
            output_directory=scratch,
        )
        transformix.SetComputeDeformationField(True)
        transformix.UpdateLargestPossibleRegion()
        field_image = transformix.GetOutputDeformationField()
        field = itk.array_from_image(field_image).copy()  # (rows, cols, 2): T(y) - y, um
    if not (
        np.allclose(tuple(field_image.GetOrigin()), 0.5 / ppu_f)
        and np.allclose(tuple(field_image.GetSpacing()), 1.0 / ppu_f)
        and field.shape == (*fixed.shape, 2)
    ):
        raise RuntimeError("transformix's deformation field is not on the fixed pixel grid")
    mapping = ElastixInverse(field, ppu_f)
    x = pixel_centres_um(data["shape"], ppu)[::97]
    y = mapping(x)
    combined = reg.GetCombinationTransform()
    back = np.array([list(combined.TransformPoint([float(a), float(b)])) for a, b in y])
    last = out_maps[-1]
    bspline = last["Transform"][0] == "BSplineTransform"
    return {
        "mapping": mapping,
        "seconds": seconds,
        "affines": affines,
        "grid_um": [float(v) for v in last["GridSpacing"]] if bspline else [],
        "grid_nodes": [int(v) for v in last["GridSize"]] if bspline else [],
        "check_um": float(np.abs(back - x).max()),
    }


def elastix_selfcheck(data: dict, bench) -> None:
    """Conventions of section 1b on one case; raises AssertionError if one fails.

    Zero iterations give back the start (max over the TEM grid below 1e-3 um): the
    B-spline map from our affine; registration.py's affine map then the B-spline map
    from the landmark start. Also runs the ``random`` variant twice and reports how far
    apart the two answers are (elastix's random draw fixed or not).
    """
    xy = pixel_centres_um(data["shape"], data["ppu"])
    ours = data["starts"]["raw"]
    landmark = np.asarray(
        read_json(ROOT / "preprocessed" / data["case"] / "start_transform.json")["matrix"], float
    )
    zero_affine = _as_dict(bench.elastix_parameters("mi", iterations=0).GetParameterMap(0))
    checks = (
        ("B-spline, from our affine", ours, [elastix_bspline_map(bench, "random", 0.0, 0)]),
        (
            "affine + B-spline, from the landmark start",
            landmark,
            [zero_affine, elastix_bspline_map(bench, "random", 0.0, 0)],
        ),
    )
    for name, start, maps in checks:
        out = elastix_bspline(data, start, maps, bench)
        d = float(np.abs(out["mapping"](xy) - apply(start, xy)).max())
        print(
            f"- self-check, 0 iterations ({name}, {data['case']}): max |mapping - start| "
            f"{d:.1e} um over the TEM grid; combination transform check {out['check_um']:.1e} um"
        )
        assert d < 1e-3, f"0 iterations moved the start by {d:.1e} um"
    a, b = (
        elastix_bspline(data, ours, [elastix_bspline_map(bench, "random", 0.0)], bench)
        for _ in range(2)
    )
    d = float(np.abs(a["mapping"](xy) - b["mapping"](xy)).max())
    print(f"- the `random` variant run twice on {data['case']}: max difference {d:.1e} um")


def elastix_table(cases: list[dict], bench) -> None:
    """Section 1b: elastix's B-spline beside ours, raw/mi (see the module docstring)."""
    t_section = time.perf_counter()
    bench.itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(1)
    labels = [label for label, _, _ in ELASTIX_VARIANTS]
    print("## 1b. elastix B-spline beside ours (raw/mi)\n")
    print(
        "Error (um, mean over the TEM grid to the true field) and its change against our "
        "affine (`raw.json` MI, the start of ours and of the elastix B-spline variants; the "
        "elastix affine + B-spline starts from the landmarks). elastix: default B-spline "
        f"map, AdvancedMattesMutualInformation ({ELASTIX_BINS} bins), final grid spacing "
        f"{SPACING_UM} um, 1 thread; `full`: every fixed pixel; `random`: elastix's default "
        "2048 random samples per iteration; `bending w`: TransformBendingEnergyPenalty as a "
        "second metric, weight w (else no penalty). `affine + B-spline`: registration.py's "
        "MI affine map (full sampling) then the `random` B-spline map. Times: seconds, one "
        "run each.\n"
    )
    elastix_selfcheck(cases[0], bench)  # also loads elastix's modules before the timings
    print()
    shown = [f"elastix {label}" for label in labels]
    head = ["case", "non-affine rms", "our affine", "ours B-spline", *shown]
    head += ["elastix affine", "elastix affine + B-spline", "s ours"]
    head += [f"s {label}" for label in shown] + ["s elastix affine + B-spline"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    rows, grids, nodes, checks = [], [], set(), []
    for data in cases:
        start = data["starts"]["raw"]
        base = truth_error_um(start, data["truth"], data["shape"], data["ppu"])
        result, t_ours = run(data, "raw", "mi")
        row = {"base": base, "err": {"ours": field_error_um(result.field.apply, data)}}
        row["s"] = {"ours": t_ours}
        jobs = [
            (label, start, [elastix_bspline_map(bench, smp, w)])
            for label, smp, w in ELASTIX_VARIANTS
        ]
        landmark = np.asarray(
            read_json(ROOT / "preprocessed" / data["case"] / "start_transform.json")["matrix"],
            float,
        )
        affine_map = _as_dict(bench.elastix_parameters("mi").GetParameterMap(0))
        bspline_map = elastix_bspline_map(bench, "random", 0.0)
        jobs.append(("affine + B-spline", landmark, [affine_map, bspline_map]))
        for label, job_start, maps in jobs:
            try:
                out = elastix_bspline(data, job_start, maps, bench)
            except RuntimeError as exc:  # itk wraps elastix's exceptions as RuntimeError
                print(f"<!-- {data['case']} {label}: elastix failed: {exc} -->")
                row["err"][label], row["s"][label] = np.inf, np.nan
                continue
            row["err"][label] = field_error_um(out["mapping"], data)
            row["s"][label] = out["seconds"]
            grids.append(out["grid_um"])
            nodes.add("x".join(str(n) for n in out["grid_nodes"]))
            checks.append(out["check_um"])
            if label == "affine + B-spline":
                row["err"]["elastix affine"] = truth_error_um(
                    out["affines"][-1], data["truth"], data["shape"], data["ppu"]
                )
        row["err"].setdefault("elastix affine", np.inf)
        rows.append(row)

        def cell(e, base=base):
            return f"{e:.3f} ({100 * (e - base) / base:+.0f} %)"

        errs = [row["err"][k] for k in ["ours", *labels, "elastix affine", "affine + B-spline"]]
        times = [row["s"][k] for k in ["ours", *labels, "affine + B-spline"]]
        print(
            f"| {data['case']} | {data['floor_rms']:.3f} | {base:.3f} | "
            + " | ".join(cell(e) for e in errs)
            + " | "
            + " | ".join(f"{t:.2f}" for t in times)
            + " |"
        )
    keys = ["ours", *labels, "elastix affine", "affine + B-spline"]
    med = {k: np.median([r["err"][k] for r in rows]) for k in keys}
    change = {
        k: np.median([100 * (r["err"][k] - r["base"]) / r["base"] for r in rows]) for k in keys
    }
    t_keys = ["ours", *labels, "affine + B-spline"]
    print(
        f"| median | {np.median([d['floor_rms'] for d in cases]):.3f} | "
        f"{np.median([r['base'] for r in rows]):.3f} | "
        + " | ".join(f"{med[k]:.3f} ({change[k]:+.0f} %)" for k in keys)
        + " | "
        + " | ".join(f"{np.median([r['s'][k] for r in rows]):.2f}" for k in t_keys)
        + " |"
    )
    print("\n(median row: medians of the errors and, in brackets, of the per-case changes)\n")
    ratios = ", ".join(
        f"{k} {np.median([r['s'][k] / r['s']['ours'] for r in rows]):.1f}" for k in t_keys[1:]
    )
    print(f"- elastix time / ours, median over the cases of the per-case ratios: {ratios}.")
    g = np.array(grids)
    print(
        f"- elastix's final grid as placed: spacing {g.min():.2f}-{g.max():.2f} um, "
        f"{', '.join(sorted(nodes))} nodes (ours: the TEM field cut into intervals of at "
        f"most {SPACING_UM} um)."
    )
    print(
        f"- inversion check, all elastix runs: max |T(y) - x| {max(checks):.1e} um "
        "(T: elastix's combination transform; every 97th TEM pixel)."
    )
    print(f"- section 1b: {time.perf_counter() - t_section:.0f} s.\n")


def main(argv: list[str]) -> None:
    cases = [load_case(c) for c in CASES if (ROOT / "preprocessed" / c / "frame.json").exists()]
    if not cases:
        raise SystemExit(f"no default cases under {ROOT}; run the workflow first")
    if "--exact" in argv:
        exact_analogy_table(cases)
        return
    only_elastix = "--elastix" in argv
    # compile the kernels outside the timings
    run(cases[0], "raw", "mi", levels=1)
    if not only_elastix:
        run(cases[0], "sparse", "ssd", levels=1)
        defaults_table(cases)
    if "--no-elastix" not in argv:
        bench, why = _elastix_module()
        if bench is None:
            print(f"## 1b. elastix B-spline beside ours: skipped, elastix unavailable ({why})\n")
        else:
            elastix_table(cases, bench)
    if only_elastix:
        return
    if "--quick" not in argv:
        sweep_table(cases)
    truth_table(cases)
    exact_analogy_table(cases)


if __name__ == "__main__":
    main(sys.argv[1:])
