"""Our affine registration (clemalign.register) against SimpleITK, same pairs, same start.

For the default synthetic analogy cases already on disk (``results/preprocessed/tem0*``
and ``results/analogy/tem0*``), each moving image is registered to the confocal crop
(``lm.tif``) from the landmark similarity (``start_transform.json``):

* source ``sparse``: the sparse-analogy prediction (``sparse_predicted.tif``);
* source ``tem``: the TEM itself, inverted (``1 - em``) for SSD, raw for MI;

under SSD (ours: standardised intensities; SimpleITK MeanSquares on the same
standardised images) and MI (ours: Parzen joint histogram, 32 bins, all pixels;
SimpleITK: Mattes MI, 32 bins, 100 % sampling). Ours also runs eq. 12 (``wssd``,
weights ``1 - sparse_uncertainty``) on the sparse source, which SimpleITK lacks.

SimpleITK setup: its fixed image is the confocal (origin at the centre of pixel 0, i.e.
``0.5 / p`` um, spacing ``1 / p`` um), its moving image the TEM-grid image; its
transform maps fixed to moving points, so it starts from ``inv(start)`` and its result
is inverted back. AffineTransform centred on the start footprint, linear interpolation,
RegularStepGradientDescent (learning rate 0.1, min step 1e-4, 200 iterations per level,
relaxation 0.5; with learning rate 0.5 its MI on the raw TEM diverged in 5 of 6 cases)
with scales from physical shift, shrink factors 4, 2, 1 with smoothing
sigmas 2, 1, 0 px; one thread (ours is single-threaded too).

Error: mean distance (um) between the result and the ground truth over the TEM pixel
grid (``frame.json``: the deformation field where the phantom has one, else the
affine); time: median of ``repeats`` runs, seconds.

Capture range: ``trials`` seeded random perturbations of the start per case
(:func:`clemalign.register.perturb_affine`: rotation up to 4 deg, per-axis scale up to
5 %, shear up to 3 %, translation up to 8 px); a trial succeeds when the method comes back
within 0.2 um (mean over the TEM grid) of its own unperturbed answer.

    python benchmarks/registration.py [repeats] [trials]
"""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from clemalign.evaluation import frame_ground_truth, truth_error_um
from clemalign.io import read_image, read_json
from clemalign.register import (
    grid_error_um,
    perturb_affine,
    pixel_centres_um,
    register_affine,
    weights_from_uncertainty,
)
from clemalign.transforms import apply

ROOT = Path(__file__).resolve().parents[1] / "results"
CASES = [f"tem0{i}" for i in range(1, 7)]
BINS = 32
SUCCESS_UM = 0.2  # capture range: back within this of the unperturbed answer


def standardise(moving: np.ndarray, fixed: np.ndarray, start: np.ndarray, ppu: float):
    """Moving and fixed scaled to zero mean, unit variance (fixed: over the start footprint).

    The same standardisation :func:`register_affine` applies for SSD, so that SimpleITK's
    MeanSquares sees the same images.
    """
    from scipy import ndimage

    xy = apply(start, pixel_centres_um(moving.shape, ppu))
    rc = xy[:, ::-1] * ppu - 0.5
    inside = (rc >= 0).all(1) & (rc[:, 0] <= fixed.shape[0] - 1) & (rc[:, 1] <= fixed.shape[1] - 1)
    samples = ndimage.map_coordinates(fixed.astype(float), rc[inside].T, order=1)
    m = (moving - moving.mean()) / moving.std()
    f = (fixed - samples.mean()) / samples.std()
    return m, f


def to_sitk(image: np.ndarray, ppu: float) -> sitk.Image:
    """A SimpleITK image in um whose pixel (0, 0) centre is at (0.5 / p, 0.5 / p)."""
    out = sitk.GetImageFromArray(np.ascontiguousarray(image, dtype=np.float32))
    out.SetSpacing((1.0 / ppu, 1.0 / ppu))
    out.SetOrigin((0.5 / ppu, 0.5 / ppu))
    return out


def sitk_register(
    moving: np.ndarray, fixed: np.ndarray, start: np.ndarray, ppu_m: float, ppu_f: float, metric
) -> np.ndarray:
    """SimpleITK affine registration; returns our moving->fixed matrix (um)."""
    fixed_img, moving_img = to_sitk(fixed, ppu_f), to_sitk(moving, ppu_m)
    inverse = np.linalg.inv(start)  # fixed -> moving, SimpleITK's direction
    centre = apply(start, [[moving.shape[1] / 2 / ppu_m, moving.shape[0] / 2 / ppu_m]])[0]
    tx = sitk.AffineTransform(2)
    tx.SetCenter(tuple(centre))
    a, b = inverse[:2, :2], inverse[:2, 2]
    tx.SetMatrix(tuple(a.ravel()))
    tx.SetTranslation(tuple(b + a @ centre - centre))
    reg = sitk.ImageRegistrationMethod()
    if metric == "mi":
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=BINS)
    else:
        reg.SetMetricAsMeanSquares()
    reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=0.1,
        minStep=1e-4,
        numberOfIterations=200,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(tx, inPlace=True)
    reg.Execute(fixed_img, moving_img)
    out = sitk.AffineTransform(tx)
    lin = np.array(out.GetMatrix()).reshape(2, 2)
    c, t = np.array(out.GetCenter()), np.array(out.GetTranslation())
    fixed_to_moving = np.eye(3)
    fixed_to_moving[:2, :2] = lin
    fixed_to_moving[:2, 2] = t + c - lin @ c
    return np.linalg.inv(fixed_to_moving)


def timed(run, repeats: int) -> tuple[np.ndarray, float]:
    """Result of the last run and the median time (s) of ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - t0)
    return result, float(np.median(times))


def ours_register(moving, fixed, start, ppu_m, ppu_f, measure, weights=None) -> np.ndarray:
    """Our registration with the workflow's defaults; returns the matrix."""
    return register_affine(
        moving,
        fixed,
        start,
        moving_px_per_um=ppu_m,
        fixed_px_per_um=ppu_f,
        measure=measure,
        weights=weights,
        bins=BINS,
    ).matrix


def main(repeats: int, trials: int) -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    rows, capture = [], []
    for index, case in enumerate(CASES):
        pre, ana = ROOT / "preprocessed" / case, ROOT / "analogy" / case
        em, ppu_m = read_image(pre / "em.tif")
        lm, ppu_f = read_image(pre / "lm.tif")
        start = np.asarray(read_json(pre / "start_transform.json")["matrix"], float)
        truth = frame_ground_truth(read_json(pre / "frame.json"))
        predicted, _ = read_image(ana / "sparse_predicted.tif")
        weights = weights_from_uncertainty(read_image(ana / "sparse_uncertainty.tif")[0])
        em, lm, predicted = (np.asarray(a, np.float64) for a in (em, lm, predicted))

        def err(m, a=None, shape=em.shape, p=ppu_m, truth=truth):
            if a is None:  # the ground truth: the deformation field of the realistic phantom
                return truth_error_um(m, truth, shape, p)
            return grid_error_um(m, a, shape, p)

        rows.append((case, "start", "-", err(start), np.nan, np.nan, np.nan))
        rng = np.random.default_rng([2012, 600, index])
        centre = (em.shape[1] / (2 * ppu_m), em.shape[0] / (2 * ppu_m))
        starts = [
            perturb_affine(start, rng, centre, max_translation_um=8.0 / ppu_m)
            for _ in range(trials)
        ]
        pairs = [
            ("sparse", "ssd", predicted),
            ("sparse", "mi", predicted),
            ("tem", "ssd", 1.0 - em),
            ("tem", "mi", em),
            ("sparse", "wssd", predicted),
        ]
        for source, measure, moving in pairs:
            w = weights if measure == "wssd" else None
            ours, t_ours = timed(
                partial(ours_register, moving, lm, start, ppu_m, ppu_f, measure, w), repeats
            )
            theirs, t_sitk, sm, sf = None, np.nan, moving, lm
            if measure != "wssd":
                if measure == "ssd":
                    sm, sf = standardise(moving, lm, start, ppu_m)
                theirs, t_sitk = timed(
                    partial(sitk_register, sm, sf, start, ppu_m, ppu_f, measure), repeats
                )
            e_sitk = np.nan if theirs is None else err(theirs)
            rows.append((case, source, measure, err(ours), t_ours, e_sitk, t_sitk))
            for perturbed in starts:
                got = ours_register(moving, lm, perturbed, ppu_m, ppu_f, measure, w)
                ok_sitk = np.nan
                if theirs is not None:
                    back = sitk_register(sm, sf, perturbed, ppu_m, ppu_f, measure)
                    ok_sitk = err(back, theirs) <= SUCCESS_UM
                capture.append((source, measure, err(got, ours) <= SUCCESS_UM, ok_sitk))

    head = f"{'case':<6} {'source':<7} {'measure':<7} {'ours um':>8} {'ours s':>7} "
    print(head + f"{'sitk um':>8} {'sitk s':>7}")
    for case, source, measure, e_o, t_o, e_s, t_s in rows:
        print(f"{case:<6} {source:<7} {measure:<7} {e_o:>8.4f} {t_o:>7.3f} {e_s:>8.4f} {t_s:>7.3f}")
    print("\nsummary over cases: median error (um), median time (s), median time ratio ours/sitk")
    for source in ("sparse", "tem"):
        for measure in ("ssd", "mi", "wssd"):
            sel = [r for r in rows if r[1] == source and r[2] == measure]
            if not sel:
                continue
            e_o, t_o, e_s, t_s = (np.array([r[k] for r in sel]) for k in (3, 4, 5, 6))
            print(
                f"{source:<7} {measure:<5} ours {np.median(e_o):.4f} um {np.median(t_o):.3f} s"
                f" | sitk {np.median(e_s):.4f} um {np.median(t_s):.3f} s"
                f" | time ratio {np.median(t_o / t_s):.2f}"
            )
    starts_err = np.array([r[3] for r in rows if r[1] == "start"])
    print(f"start (landmark similarity): median error {np.median(starts_err):.4f} um")
    if trials:
        print(
            f"\ncapture range: {trials} perturbed starts per case (rotation <= 4 deg, scale <= 5 %"
            f" per axis, shear <= 3 %, translation <= 8 px); success = back within"
            f" {SUCCESS_UM} um of the unperturbed answer"
        )
        for source in ("sparse", "tem"):
            for measure in ("ssd", "mi", "wssd"):
                sel = [c for c in capture if c[0] == source and c[1] == measure]
                if not sel:
                    continue
                ours_rate = np.mean([c[2] for c in sel])
                sitk_rate = np.mean([c[3] for c in sel]) if measure != "wssd" else np.nan
                print(
                    f"{source:<7} {measure:<5} ours {ours_rate:6.1%} | sitk {sitk_rate:6.1%}"
                    f"  (n = {len(sel)})"
                )


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 3,
        int(sys.argv[2]) if len(sys.argv) > 2 else 10,
    )
