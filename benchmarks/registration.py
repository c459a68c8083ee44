"""Our affine registration (clemalign.register) against SimpleITK and elastix, same pairs,
same start.

For the default synthetic analogy cases already on disk (``results/preprocessed/tem0*``
and ``results/analogy/tem0*``), each moving image is registered to the confocal crop
(``lm.tif``) from the landmark similarity (``start_transform.json``):

* source ``sparse``: the sparse-analogy prediction (``sparse_predicted.tif``);
* source ``tem``: the TEM itself, inverted (``1 - em``) for SSD, raw for MI;

under SSD (ours: standardised intensities; SimpleITK MeanSquares and elastix
AdvancedMeanSquares on the same standardised images) and MI (ours: Parzen joint
histogram, 32 bins, all pixels; SimpleITK: Mattes MI, 32 bins, 100 % sampling; elastix:
AdvancedMattesMutualInformation, 32 bins, every fixed pixel). Ours also runs eq. 12
(``wssd``, weights ``1 - sparse_uncertainty``) on the sparse source, which neither peer
has.

SimpleITK setup: its fixed image is the confocal (origin at the centre of pixel 0, i.e.
``0.5 / p`` um, spacing ``1 / p`` um), its moving image the TEM-grid image; its
transform maps fixed to moving points, so it starts from ``inv(start)`` and its result
is inverted back. AffineTransform centred on the start footprint, linear interpolation,
RegularStepGradientDescent (learning rate 0.1, min step 1e-4, 200 iterations per level,
relaxation 0.5; with learning rate 0.5 its MI on the raw TEM diverged in 5 of 6 cases)
with scales from physical shift, shrink factors 4, 2, 1 with smoothing
sigmas 2, 1, 0 px; one thread (ours is single-threaded too).

elastix setup (itk-elastix; if it does not import, the script says so and leaves its
column empty): the same fixed and moving images in um as SimpleITK (fixed: the confocal;
elastix's transforms, too, map fixed to moving points). ``GetDefaultParameterMap('affine',
3)`` with these changes: metric ``AdvancedMeanSquares`` (SSD) or
``AdvancedMattesMutualInformation`` with ``NumberOfHistogramBins 32`` (MI; Parzen kernels
left at elastix's defaults, B-spline order 0 fixed / 3 moving); ``ImageSampler Full``
(every fixed pixel at every iteration, ``NewSamplesEveryIteration false``) instead of the
default 2048 random samples, so that the three methods see the same pixels and elastix's
answer and time do not depend on a random draw. This costs elastix 20-25 times its
default-sampling time at about the same error (tem01, CPU s per run, full vs 2048 random:
SSD 6.5 vs 0.3, MI 13 vs 0.5; ground-truth errors within 0.01 um of each other), so its
times here are those of full sampling, not its fastest. ``MaximumNumberOfIterations
200`` per level (SimpleITK's and our budget; elastix's default is 256);
``LinearInterpolator`` while registering (as SimpleITK; the final resampler, whose image
is discarded, is linear too); ``MaximumNumberOfThreads 1`` and ``number_of_threads=1``.
Kept from the default map: ``AffineTransform``; the smoothing pyramids (3 levels,
schedule 4, 2, 1: Gaussian sigma 2, 1, 0.5 px, no downsampling, so every level runs at
full resolution); ``AdaptiveStochasticGradientDescent`` with automatic step-size and
scale estimation (it stops only at the iteration limit). The start is passed as an
initial transform (``initial_transform_parameter_object``: one AffineTransform map
holding ``inv(start)`` about the start footprint's centre, as for SimpleITK); elastix
composes ``x -> found(initial(x))`` (fixed -> moving), which :func:`elastix_selfcheck`
verifies (a known warp recovered from the identity and from a start far from it, the
reversed composition rejected, elastix's combination transform agreeing, and zero
iterations giving back the start); our moving->fixed matrix is ``inv(found @ initial)``.
A run elastix aborts (e.g. too few samples inside the moving image from a perturbed
start) counts as a failure (error ``inf``; from the landmark start, all of that pair's
perturbed trials fail too).

Error: mean distance (um) between the result and the ground truth over the TEM pixel
grid (``frame.json``: the deformation field where the phantom has one, else the
affine); time: median of ``repeats`` runs, seconds.

Capture range: ``trials`` seeded random perturbations of the start per case
(:func:`clemalign.register.perturb_affine`: rotation up to 4 deg, per-axis scale up to
5 %, shear up to 3 %, translation up to 8 px); a trial succeeds when the method comes back
within 0.2 um (mean over the TEM grid) of its own unperturbed answer.

    python benchmarks/registration.py [repeats] [trials]
    python benchmarks/registration.py --selfcheck   # elastix's conventions only
"""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import SimpleITK as sitk

try:  # itk-elastix is optional: without it the elastix column stays empty
    import itk

    itk.ElastixRegistrationMethod  # noqa: B018 (lazy module: fails here if elastix is absent)
    ELASTIX_ERROR = None
except Exception as exc:  # ImportError, or AttributeError from itk without elastix
    itk, ELASTIX_ERROR = None, f"{type(exc).__name__}: {exc}"

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
LEVELS = 3
ITERATIONS = 200  # per level, all three methods
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


def to_itk(image: np.ndarray, ppu: float):
    """An ITK image in um whose pixel (0, 0) centre is at (0.5 / p, 0.5 / p), as :func:`to_sitk`."""
    out = itk.image_from_array(np.ascontiguousarray(image, dtype=np.float32))
    out.SetSpacing((1.0 / ppu, 1.0 / ppu))
    out.SetOrigin((0.5 / ppu, 0.5 / ppu))
    return out


def elastix_parameters(metric: str, iterations: int = ITERATIONS):
    """elastix's default affine map with the changes listed in the module docstring."""
    parameters = itk.ParameterObject.New()
    pm = parameters.GetDefaultParameterMap("affine", LEVELS)
    if metric == "mi":
        pm["Metric"] = ["AdvancedMattesMutualInformation"]
        pm["NumberOfHistogramBins"] = [str(BINS)]
    else:
        pm["Metric"] = ["AdvancedMeanSquares"]
    pm["ImageSampler"] = ["Full"]
    pm["NewSamplesEveryIteration"] = ["false"]
    pm["Interpolator"] = ["LinearInterpolator"]
    pm["ResampleInterpolator"] = ["FinalLinearInterpolator"]
    pm["MaximumNumberOfIterations"] = [str(iterations)]
    pm["MaximumNumberOfThreads"] = ["1"]
    pm["AutomaticTransformInitialization"] = ["false"]
    pm["WriteResultImage"] = ["false"]
    parameters.AddParameterMap(pm)
    return parameters


def _affine_map(fixed_to_moving: np.ndarray, centre: np.ndarray, fixed: np.ndarray, ppu: float):
    """An elastix AffineTransform map for a fixed->moving matrix (um) about ``centre`` (um)."""
    a = fixed_to_moving[:2, :2]
    t = fixed_to_moving[:2, 2] + a @ centre - centre  # x -> a (x - c) + c + t
    values = [*a.ravel(), *t]
    return {
        "Transform": ["AffineTransform"],
        "NumberOfParameters": ["6"],
        "TransformParameters": [repr(float(v)) for v in values],
        "CenterOfRotationPoint": [repr(float(v)) for v in centre],
        "HowToCombineTransforms": ["Compose"],
        "InitialTransformParameterFileName": ["NoInitialTransform"],
        "FixedImageDimension": ["2"],
        "MovingImageDimension": ["2"],
        "FixedInternalImagePixelType": ["float"],
        "MovingInternalImagePixelType": ["float"],
        "Size": [str(fixed.shape[1]), str(fixed.shape[0])],
        "Index": ["0", "0"],
        "Spacing": [repr(1.0 / ppu)] * 2,
        "Origin": [repr(0.5 / ppu)] * 2,
        "Direction": ["1", "0", "0", "1"],
        "UseDirectionCosines": ["true"],
    }


def _map_matrix(pm) -> np.ndarray:
    """The fixed->moving 3x3 matrix (um) of one elastix AffineTransform parameter map."""
    if pm["Transform"][0] != "AffineTransform":
        raise ValueError(f"unexpected elastix transform {pm['Transform'][0]}")
    p = np.array([float(v) for v in pm["TransformParameters"]])
    c = np.array([float(v) for v in pm["CenterOfRotationPoint"]])
    a = p[:4].reshape(2, 2)
    out = np.eye(3)
    out[:2, :2] = a
    out[:2, 2] = p[4:] + c - a @ c
    return out


def elastix_run(moving, fixed, start, ppu_m, ppu_f, metric, iterations=ITERATIONS):
    """One elastix registration from ``start``; returns (the filter, per-map fixed->moving
    matrices in the order of its transform parameter object: the initial one, then the
    found one)."""
    inverse = np.linalg.inv(start)  # fixed -> moving, elastix's direction
    centre = apply(start, [[moving.shape[1] / 2 / ppu_m, moving.shape[0] / 2 / ppu_m]])[0]
    initial = itk.ParameterObject.New()
    initial.AddParameterMap(_affine_map(inverse, np.asarray(centre, float), fixed, ppu_f))
    reg = itk.ElastixRegistrationMethod.New(
        fixed_image=to_itk(fixed, ppu_f),
        moving_image=to_itk(moving, ppu_m),
        parameter_object=elastix_parameters(metric, iterations),
        initial_transform_parameter_object=initial,
        log_to_console=False,
        number_of_threads=1,
    )
    reg.UpdateLargestPossibleRegion()
    result = reg.GetTransformParameterObject()
    maps = [result.GetParameterMap(i) for i in range(result.GetNumberOfParameterMaps())]
    if len(maps) != 2 or any(m["HowToCombineTransforms"][0] != "Compose" for m in maps):
        raise RuntimeError("expected elastix to return [initial, found], composed")
    return reg, [_map_matrix(m) for m in maps]


def elastix_register(moving, fixed, start, ppu_m, ppu_f, metric, iterations=ITERATIONS):
    """elastix affine registration; returns our moving->fixed matrix (um), or None when
    elastix aborts (counted as a failure)."""
    try:
        _, (initial, found) = elastix_run(moving, fixed, start, ppu_m, ppu_f, metric, iterations)
    except RuntimeError:  # itk wraps elastix's exceptions as RuntimeError
        return None
    return np.linalg.inv(found @ initial)  # elastix: x -> found(initial(x)), fixed -> moving


def _blob_image(shape, ppu, to_field: np.ndarray) -> np.ndarray:
    """An analytic field of smooth random blobs (fixed seed) sampled at ``to_field`` (3x3,
    um) applied to the pixel centres of ``shape``, so warped copies are exact."""
    rng = np.random.default_rng(13)
    centres = rng.uniform(-6.0, 20.0, (1000, 2))
    heights = rng.uniform(0.5, 1.5, len(centres))
    xy = apply(to_field, pixel_centres_um(shape, ppu))
    out = np.zeros(len(xy))
    for c, h in zip(centres, heights, strict=True):
        out += h * np.exp(-((xy - c) ** 2).sum(1) / (2 * 0.35**2))
    return out.reshape(shape)


def elastix_selfcheck(tolerance_um: float = 0.02) -> None:
    """Verify elastix's conventions as used here; raises AssertionError if one fails.

    A smooth blob image (moving, 128 x 120 px at 14.52 px/um) is registered under SSD
    (the benchmark's parameter map) to a copy of it warped by a known moving->fixed
    affine, both sampled from the same analytic field (no interpolation error). The
    known warp ``W``: 2 deg rotation, 3 % scale and shift (0.5, -0.3) um about the image
    centre. Errors: mean distance (um) over the moving pixel grid.

    1. From the identity, fixed image ``W``-warped: recovered within ``tolerance_um``.
    2. From a start ``S`` far from the identity (20 deg about the origin, scale 1.15 x
       0.9, shear 0.05, shift (3, 1) um), fixed image ``(S @ W)``-warped on a 190 x 190
       px grid: ``inv(found @ initial)`` is within ``tolerance_um`` of ``S @ W`` and the
       reversed composition ``inv(initial @ found)`` is not (the check could not tell the
       orders apart from an identity start, where they coincide); elastix's combination
       transform maps points as ``found @ initial``.
    3. From ``S`` with ``MaximumNumberOfIterations 0``: the recovered matrix equals ``S``
       to 1e-6.
    """
    from clemalign.transforms import affine_matrix

    ppu, shape = 14.52, (128, 120)
    centre = tuple(np.array([shape[1], shape[0]]) / (2 * ppu))
    warp = affine_matrix(2.0, (1.03, 1.03), translation_um=(0.5, -0.3), center_um=centre)
    far = affine_matrix(20.0, (1.15, 0.9), shear=0.05, translation_um=(3.0, 1.0))
    moving = _blob_image(shape, ppu, np.eye(3))

    def check(name, start, truth, fixed_shape):
        fixed = _blob_image(fixed_shape, ppu, np.linalg.inv(truth))
        t0 = time.perf_counter()
        reg, (initial, found) = elastix_run(moving, fixed, start, ppu, ppu, "ssd")
        seconds = time.perf_counter() - t0
        got, reversed_order = np.linalg.inv(found @ initial), np.linalg.inv(initial @ found)
        e_start, e_got, e_rev = (
            grid_error_um(m, truth, shape, ppu) for m in (start, got, reversed_order)
        )
        points = pixel_centres_um(fixed_shape, ppu)[::997]
        combined = reg.GetCombinationTransform()
        mapped = np.array([list(combined.TransformPoint([float(x), float(y)])) for x, y in points])
        e_combined = float(np.abs(mapped - apply(found @ initial, points)).max())
        print(
            f"elastix self-check ({name}): start {e_start:.4f} um from the truth; recovered"
            f" inv(found @ initial) {e_got:.5f} um; reversed inv(initial @ found)"
            f" {e_rev:.4f} um; combination transform vs found @ initial max"
            f" {e_combined:.1e} um; {seconds:.1f} s"
        )
        assert e_got <= tolerance_um, f"elastix missed the known warp by {e_got:.4f} um"
        assert e_combined <= 1e-6, "combination transform disagrees with found @ initial"
        return fixed, e_rev

    check("identity start", np.eye(3), warp, shape)
    fixed, e_rev = check("far start", far, far @ warp, (190, 190))
    assert e_rev > tolerance_um, "the reversed composition fits too: order not verified"

    zero = elastix_register(moving, fixed, far, ppu, ppu, "ssd", iterations=0)
    d_zero = float(np.abs(zero - far).max())
    print(f"elastix self-check (0 iterations, far start): max |recovered - start| {d_zero:.1e}")
    assert d_zero <= 1e-6, f"0 iterations moved the start by {d_zero:.1e}"
    print("elastix self-check passed")


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
    if itk is None:
        print(f"elastix unavailable ({ELASTIX_ERROR}); its column is left empty\n")
    else:
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(1)
        elastix_selfcheck()  # also loads elastix's modules before anything is timed
        print()
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

        rows.append((case, "start", "-", err(start), *[np.nan] * 5))
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
            elx, t_elx, e_elx = None, np.nan, np.nan
            if measure != "wssd" and itk is not None:  # same images as SimpleITK
                elx, t_elx = timed(
                    partial(elastix_register, sm, sf, start, ppu_m, ppu_f, measure), repeats
                )
                e_elx = np.inf if elx is None else err(elx)  # inf: elastix aborted
            rows.append((case, source, measure, err(ours), t_ours, e_sitk, t_sitk, e_elx, t_elx))
            for perturbed in starts:
                got = ours_register(moving, lm, perturbed, ppu_m, ppu_f, measure, w)
                ok_sitk = ok_elx = np.nan
                if theirs is not None:
                    back = sitk_register(sm, sf, perturbed, ppu_m, ppu_f, measure)
                    ok_sitk = err(back, theirs) <= SUCCESS_UM
                if measure != "wssd" and itk is not None:
                    # no answer from the landmark start (aborted): nothing to come back to
                    back = None
                    if elx is not None:
                        back = elastix_register(sm, sf, perturbed, ppu_m, ppu_f, measure)
                    ok_elx = back is not None and err(back, elx) <= SUCCESS_UM
                capture.append((source, measure, err(got, ours) <= SUCCESS_UM, ok_sitk, ok_elx))

    head = f"{'case':<6} {'source':<7} {'measure':<7} {'ours um':>8} {'ours s':>7} "
    print(head + f"{'sitk um':>8} {'sitk s':>7} {'elx um':>8} {'elx s':>7}")
    for case, source, measure, *values in rows:
        cells = " ".join(f"{v:>8.4f}" if k % 2 == 0 else f"{v:>7.3f}" for k, v in enumerate(values))
        print(f"{case:<6} {source:<7} {measure:<7} {cells}")
    print(
        "\nsummary over cases: median error (um), median time (s), median time ratios"
        " ours/sitk and ours/elastix"
    )
    for source in ("sparse", "tem"):
        for measure in ("ssd", "mi", "wssd"):
            sel = [r for r in rows if r[1] == source and r[2] == measure]
            if not sel:
                continue
            e_o, t_o, e_s, t_s, e_e, t_e = (np.array([r[k] for r in sel]) for k in range(3, 9))
            print(
                f"{source:<7} {measure:<5} ours {np.median(e_o):.4f} um {np.median(t_o):.3f} s"
                f" | sitk {np.median(e_s):.4f} um {np.median(t_s):.3f} s"
                f" | elastix {np.median(e_e):.4f} um {np.median(t_e):.3f} s"
                f" | time ratios {np.median(t_o / t_s):.2f}, {np.median(t_o / t_e):.2f}"
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
                ours_rate, sitk_rate, elx_rate = (np.mean([c[k] for c in sel]) for k in (2, 3, 4))
                print(
                    f"{source:<7} {measure:<5} ours {ours_rate:6.1%} | sitk {sitk_rate:6.1%}"
                    f" | elastix {elx_rate:6.1%}  (n = {len(sel)})"
                )


if __name__ == "__main__":
    if "--selfcheck" in sys.argv[1:]:
        if itk is None:
            sys.exit(f"elastix unavailable ({ELASTIX_ERROR})")
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(1)
        elastix_selfcheck()
    else:
        main(
            int(sys.argv[1]) if len(sys.argv) > 1 else 3,
            int(sys.argv[2]) if len(sys.argv) > 2 else 10,
        )
