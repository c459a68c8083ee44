"""Our affine registration (clemalign) against SimpleITK and elastix: same pairs, same
landmark start, same perturbed starts; ours both alone and as the workflow's routes run it
(after the start search).

For each default synthetic analogy case already on disk (``results/preprocessed/tem0*``
and ``results/analogy/tem0*``; ``--cases`` picks some), each moving image is registered
to the confocal crop (``lm.tif``):

* source ``sparse``: the sparse-analogy prediction (``sparse_predicted.tif``);
* source ``raw``: the TEM itself, inverted (``1 - em``) for SSD, raw for MI (the
  workflow's ``raw`` source; both made by :func:`clemalign.routes.moving_image`);

under SSD (ours: locally normalised images, ``registration.ssd_contrast_um``, then
standardised; SimpleITK MeanSquares and elastix AdvancedMeanSquares on the same images)
and MI (ours: Parzen joint histogram, all pixels; SimpleITK: Mattes MI, 32 bins, 100 %
sampling; elastix: AdvancedMattesMutualInformation, 32 bins, every fixed pixel). Ours
also runs eq. 12 (``wssd``, weights ``1 - sparse_uncertainty``) on the sparse source,
which neither peer has. These are the workflow's routes sparse/ssd, sparse/mi,
sparse/wssd, raw/ssd, raw/mi.

Methods (columns):

* ``ours``: :func:`clemalign.register.register_affine` from the given start alone (the
  paper's local registration), with the workflow's optimiser options read from
  ``config.yaml`` (``registration.levels``, ``registration.bins``: 3 and 32 at the time
  of writing, as SimpleITK's and elastix's levels and bins here).
* ``ours+search``: the workflow's route: :func:`clemalign.routes.register_measures`
  (``confidence=None``, one measure per call) with the same options and
  ``search=StartSearch.maybe(registration.start_search)`` from ``config.yaml``, i.e.
  :func:`clemalign.search.start_candidates` about the start on the source's SSD image,
  each candidate registered at the coarsest level, the best locally normalised
  correlation registered at every level. (``start_search: null`` would make it the
  local registration again, as in the workflow.) The workflow runs one search per
  route and start for all of a source's measures; here each measure pays its own search,
  so its time is an upper bound of the workflow's per measure. The search alone
  (``start_candidates`` from the landmark start) is timed too and printed per source.
* ``sitk``: SimpleITK (below).
* ``elastix``: itk-elastix (below; if it does not import, the script says so and leaves
  its column empty).

SimpleITK setup: its fixed image is the confocal (origin at the centre of pixel 0, i.e.
``0.5 / p`` um, spacing ``1 / p`` um), its moving image the TEM-grid image; its
transform maps fixed to moving points, so it starts from ``inv(start)`` and its result
is inverted back. AffineTransform centred on the start footprint, linear interpolation,
RegularStepGradientDescent (learning rate 0.1, min step 1e-4, 200 iterations per level,
relaxation 0.5; with learning rate 0.5 its MI on the raw TEM diverged in 5 of 6 cases)
with scales from physical shift, shrink factors 4, 2, 1 with smoothing
sigmas 2, 1, 0 px; one thread (ours is single-threaded too). A run SimpleITK aborts
(e.g. all samples outside the moving image from a perturbed start) counts as a failure.

elastix setup: the same fixed and moving images in um as SimpleITK (fixed: the confocal;
elastix's transforms, too, map fixed to moving points). ``GetDefaultParameterMap('affine',
3)`` with these changes: metric ``AdvancedMeanSquares`` (SSD) or
``AdvancedMattesMutualInformation`` with ``NumberOfHistogramBins 32`` (MI; Parzen kernels
left at elastix's defaults, B-spline order 0 fixed / 3 moving); ``ImageSampler Full``
(every fixed pixel at every iteration, ``NewSamplesEveryIteration false``) instead of the
default 2048 random samples, so that the methods see the same pixels and elastix's
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
start) counts as a failure.

Error: mean distance (um) between the result and the ground truth over the TEM pixel
grid (``frame.json``: the deformation field where the phantom has one, else the
affine); a failure's error is ``inf``. Time: per case and route, the median of
``repeats`` registrations from the landmark start, wall seconds.

Capture range: for every protocol of ``registration.capture_range.protocols`` in
``config.yaml`` (at the time of writing ``standard``: rotation up to 4 deg, per-axis
scale up to 5 %, shear up to 3 %, translation up to 0.55 um = 8 px; ``wide``: 15 deg,
10 %, 3 %, 2 um), ``trials`` perturbed starts per case (default: the protocol's own
number from the config), drawn as the workflow's ``capture_range`` rule draws them:
:func:`clemalign.register.perturb_affine` about the TEM centre with the protocol's
bounds, from ``clemalign.seeds.rng_for(seed, "capture_range/<protocol>", case)`` (so the
first ones are the workflow's own trials, and no case's starts depend on the others).
Every method and route registers from the same starts. A trial succeeds when the method
comes back within ``registration.capture_range.success_um`` (0.2 um) of its own answer
from the landmark start (mean distance over the TEM grid; a failure, or no answer from
the landmark start, is no success). Also counted: trials whose answer ends more than
1 um from the ground truth (failures included).

Printed: the elastix self-check; per case and route each method's error and time from
the landmark start; then per route and method: the median over cases of the error (um)
and time (s) from the landmark start, the median over cases of the time ratio to
SimpleITK, and per protocol the success rate and the trials more than 1 um from the
truth; the median search time per source; and the run's wall time.

    python benchmarks/registration.py [repeats] [trials] [--cases tem01 ...]
    python benchmarks/registration.py --selfcheck   # elastix's conventions only
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import yaml

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
    local_contrast,
    perturb_affine,
    pixel_centres_um,
    register_affine,
    weights_from_uncertainty,
)
from clemalign.routes import moving_image, register_measures
from clemalign.search import StartSearch, start_candidates
from clemalign.seeds import rng_for
from clemalign.transforms import apply

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "results"
CONFIG = REPO / "config.yaml"
CASES = [f"tem0{i}" for i in range(1, 7)]
BINS = 32  # SimpleITK's and elastix's
LEVELS = 3
ITERATIONS = 200  # per level, all three methods
#: The routes registered: source -> measures (the workflow's, for these two sources).
ROUTES = {"sparse": ("ssd", "mi", "wssd"), "raw": ("ssd", "mi")}
METHODS = ("ours", "ours+search", "sitk", "elastix")
FAR_UM = 1.0  # trials ending farther than this from the ground truth are counted


def peer_ssd_images(moving, fixed, start, ppu_m, ppu_f, options):
    """The images the peers' SSD compares: those ours compares (locally normalised with
    ``registration.ssd_contrast_um``), then standardised as before."""
    contrast = options.get("ssd_contrast_um")
    if contrast is not None:
        moving = local_contrast(moving, ppu_m, contrast)
        fixed = local_contrast(fixed, ppu_f, contrast)
    return standardise(moving, fixed, start, ppu_m)


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


def workflow_settings(path: Path = CONFIG) -> dict:
    """What the workflow's routes and capture range read from ``config.yaml``."""
    config = yaml.safe_load(path.read_text())
    registration = config["registration"]
    capture = registration["capture_range"]
    return {
        "seed": int(config["seed"]),
        # the register rule's optimiser options (workflow: REGISTRATION["optimiser"])
        "options": {k: registration[k] for k in ("levels", "bins", "ssd_contrast_um")},
        "search": StartSearch.maybe(registration.get("start_search")),
        "protocols": list(capture["protocols"]),
        "trials": int(capture["trials"]),
        "success_um": float(capture["success_um"]),
    }


def perturbed_starts(settings: dict, protocol: dict, case: str, start, shape, ppu, trials):
    """The capture range's perturbed starts of one case and protocol, drawn as
    :func:`clemalign.routes.capture_trials` draws them, from the workflow's seed."""
    rng = rng_for(settings["seed"], f"capture_range/{protocol['name']}", case)
    centre = (shape[1] / (2 * ppu), shape[0] / (2 * ppu))
    bounds = {
        k: float(protocol[k])
        for k in ("max_rotation_deg", "max_scale", "max_shear", "max_translation_um")
    }
    return [perturb_affine(start, rng, centre, **bounds) for _ in range(trials)]


def timed(run, repeats: int) -> tuple[np.ndarray, float]:
    """Result of the last run and the median time (s) of ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - t0)
    return result, float(np.median(times))


def ours_register(moving, fixed, start, *, ppu_m, ppu_f, measure, weights, options):
    """Our local registration from ``start`` alone; the matrix, or None when it fails (the
    errors :func:`clemalign.routes.register_measures` records as failures)."""
    try:
        return register_affine(
            moving,
            fixed,
            start,
            moving_px_per_um=ppu_m,
            fixed_px_per_um=ppu_f,
            measure=measure,
            weights=weights,
            **options,
        ).matrix
    except (ValueError, np.linalg.LinAlgError, FloatingPointError):
        return None


def ours_routed(moving_for, fixed, start, *, ppu, measure, weights, options, search):
    """The workflow's route (:func:`clemalign.routes.register_measures`, with the start
    search, no confidence checks) for one measure; the matrix, or None when failed."""
    got = register_measures(
        moving_for, fixed, start, [measure], ppu, weights, options, confidence=None, search=search
    )[measure]
    if "matrix" not in got or got["status"].startswith("failed"):
        return None
    return np.asarray(got["matrix"], float)


def sitk_or_none(moving, fixed, start, *, ppu_m, ppu_f, metric):
    """:func:`sitk_register`, or None when SimpleITK aborts (counted as a failure)."""
    try:
        return sitk_register(moving, fixed, start, ppu_m, ppu_f, metric)
    except RuntimeError:  # SimpleITK's exceptions, e.g. all samples outside the image
        return None


def run_case(case, settings, repeats, trials, rows, capture, searches) -> None:
    """Every route and method of one case; appends to ``rows`` (landmark start),
    ``capture`` (perturbed starts) and ``searches`` (time of the search alone)."""
    pre, ana = ROOT / "preprocessed" / case, ROOT / "analogy" / case
    em, ppu_m = read_image(pre / "em.tif")
    lm, ppu_f = read_image(pre / "lm.tif")
    if abs(ppu_m - ppu_f) > 1e-6 * ppu_m:  # register_measures takes one sampling
        raise ValueError(f"{case}: TEM at {ppu_m} px/um, confocal at {ppu_f}")
    start = np.asarray(read_json(pre / "start_transform.json")["matrix"], float)
    truth = frame_ground_truth(read_json(pre / "frame.json"))
    predicted, _ = read_image(ana / "sparse_predicted.tif")
    weights = weights_from_uncertainty(read_image(ana / "sparse_uncertainty.tif")[0])
    em, lm, predicted = (np.asarray(a, np.float64) for a in (em, lm, predicted))
    options, search = settings["options"], settings["search"]

    def err(m) -> float:  # to the ground truth (the realistic phantom's deformation field)
        return np.inf if m is None else truth_error_um(m, truth, em.shape, ppu_m)

    rows.append((case, "start", "-", "start", err(start), np.nan))
    starts = {
        p["name"]: perturbed_starts(
            settings,
            p,
            case,
            start,
            em.shape,
            ppu_m,
            p.get("trials", settings["trials"]) if trials is None else trials,
        )
        for p in settings["protocols"]
    }
    for name, begins in starts.items():
        for trial, begin in enumerate(begins):
            capture.append((case, "start", "-", name, "start", trial, np.nan, err(begin)))
    for source, measures in ROUTES.items():

        def moving_for(measure, source=source):
            return moving_image(source, measure, em, predicted)

        if search is not None:
            _, seconds = timed(
                partial(
                    start_candidates,
                    moving_for("ssd"),
                    lm,
                    start,
                    moving_px_per_um=ppu_m,
                    fixed_px_per_um=ppu_f,
                    search=search,
                ),
                repeats,
            )
            searches.append((case, source, seconds))
        for measure in measures:
            moving = moving_for(measure)
            w = weights if measure == "wssd" else None
            run = {
                "ours": partial(
                    ours_register,
                    moving,
                    lm,
                    ppu_m=ppu_m,
                    ppu_f=ppu_f,
                    measure=measure,
                    weights=w,
                    options=options,
                ),
                "ours+search": partial(
                    ours_routed,
                    moving_for,
                    lm,
                    ppu=ppu_m,
                    measure=measure,
                    weights=weights,
                    options=options,
                    search=search,
                ),
            }
            if measure != "wssd":  # the peers: SSD on the images ours compares, MI on the raw ones
                sm, sf = (
                    peer_ssd_images(moving, lm, start, ppu_m, ppu_f, options)
                    if (measure == "ssd")
                    else (moving, lm)
                )
                peer = {"ppu_m": ppu_m, "ppu_f": ppu_f, "metric": measure}
                run["sitk"] = partial(sitk_or_none, sm, sf, **peer)
                if itk is not None:
                    run["elastix"] = partial(elastix_register, sm, sf, **peer)
            answers = {}
            for method, register in run.items():
                answers[method], seconds = timed(partial(register, start), repeats)
                rows.append((case, source, measure, method, err(answers[method]), seconds))
            for name, begins in starts.items():
                for trial, begin in enumerate(begins):
                    for method, register in run.items():
                        got, answer = register(begin), answers[method]
                        to_answer = np.inf
                        if got is not None and answer is not None:
                            to_answer = grid_error_um(got, answer, em.shape, ppu_m)
                        capture.append(
                            (case, source, measure, name, method, trial, to_answer, err(got))
                        )
        print(f"  {case} {source}: done", flush=True)


def print_cases(rows) -> None:
    """Per case and route: each method's error (um) and time (s) from the landmark start."""
    head = f"{'case':<6} {'source':<7} {'measure':<7}"
    for method in METHODS:
        head += f" {method + ' um':>15} {'s':>6}"
    print(head)
    keys = dict.fromkeys((r[0], r[1], r[2]) for r in rows)
    for case, source, measure in keys:
        cells = ""
        for method in METHODS:
            got = [
                r for r in rows if r[:3] == (case, source, measure) and r[3] in (method, "start")
            ]
            if not got:
                cells += f" {'-':>15} {'-':>6}"
                continue
            error, seconds = got[0][4], got[0][5]
            cells += f" {error:>15.4f} {'-' if np.isnan(seconds) else f'{seconds:.3f}':>6}"
            if source == "start":
                break
        print(f"{case:<6} {source:<7} {measure:<7}{cells}")


def print_summary(rows, capture, searches, protocols, success_um) -> None:
    """Per route and method: median error and time over cases, time ratio to SimpleITK,
    and per protocol the capture success rate and the trials far from the truth."""
    names = [p["name"] for p in protocols]
    print(
        "\nsummary per route and method. landmark start: median over cases of the"
        " ground-truth error (um) and of the time per registration (s); x sitk: median over"
        " cases of time / SimpleITK's time. capture, per protocol: success rate"
        f" (back within {success_um} um of the method's own landmark-start answer), its"
        f" count of trials, and >{FAR_UM:g}um: trials ending more than {FAR_UM:g} um from"
        " the ground truth (failures included)"
    )
    head = f"{'source':<7} {'measure':<7} {'method':<12} {'err um':>8} {'time s':>7} {'x sitk':>7}"
    for name in names:
        head += f" | {name + ' ok':>20} {'>' + f'{FAR_UM:g}' + 'um':>7}"
    print(head)
    for source, measures in ROUTES.items():
        for measure in measures:
            for method in METHODS:
                sel = [r for r in rows if r[1:4] == (source, measure, method)]
                if not sel:
                    continue
                cases = [r[0] for r in sel]
                sitk_s = {r[0]: r[5] for r in rows if r[1:4] == (source, measure, "sitk")}
                ratios = [r[5] / sitk_s[r[0]] for r in sel if r[0] in sitk_s]
                ratio = f"{np.median(ratios):.2f}" if ratios else "-"
                line = (
                    f"{source:<7} {measure:<7} {method:<12} {np.median([r[4] for r in sel]):>8.4f}"
                    f" {np.median([r[5] for r in sel]):>7.3f} {ratio:>7}"
                )
                for name in names:
                    trials = [
                        c
                        for c in capture
                        if c[1:5] == (source, measure, name, method) and c[0] in cases
                    ]
                    ok = sum(c[6] <= success_um for c in trials)
                    far = sum(not c[7] <= FAR_UM for c in trials)  # inf (failed) counts
                    rate = f"{ok / len(trials):.0%} ({ok}/{len(trials)})" if trials else "-"
                    line += f" | {rate:>20} {far:>7}"
                print(line)
    start_err = [r[4] for r in rows if r[1] == "start"]
    print(f"\nlandmark start (similarity): median error {np.median(start_err):.4f} um")
    for name in names:
        errors = np.array([c[7] for c in capture if c[1] == "start" and c[3] == name])
        print(
            f"perturbed starts, {name}: {len(errors)}, median error {np.median(errors):.4f} um,"
            f" {int((errors > FAR_UM).sum())} more than {FAR_UM:g} um from the truth"
        )
    for source in ROUTES:
        seconds = [s for _, src, s in searches if src == source]
        if seconds:
            print(
                f"start search alone ({source}, from the landmark start):"
                f" median {np.median(seconds):.3f} s"
            )


def main(repeats: int, trials: int | None, cases: list[str]) -> None:
    wall = time.perf_counter()
    settings = workflow_settings()
    options, search = settings["options"], settings["search"]
    print(f"config.yaml: optimiser {options}; start search {search}")
    if (int(options["levels"]), int(options["bins"])) != (LEVELS, BINS):
        print(f"note: the peers use {LEVELS} levels and {BINS} bins, ours the config's")
    if search is None:
        print("note: registration.start_search is null: ours+search is the local registration")
    for p in settings["protocols"]:
        n = p.get("trials", settings["trials"]) if trials is None else trials
        print(f"capture protocol {p['name']}: {n} trials per case, {p}")
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    if itk is None:
        print(f"elastix unavailable ({ELASTIX_ERROR}); its column is left empty\n")
    else:
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(1)
        elastix_selfcheck()  # also loads elastix's modules before anything is timed
        print()
    rows, capture, searches = [], [], []
    for case in cases:
        run_case(case, settings, repeats, trials, rows, capture, searches)
    print()
    print_cases(rows)
    print_summary(rows, capture, searches, settings["protocols"], settings["success_um"])
    print(f"\nwall time {time.perf_counter() - wall:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repeats", nargs="?", type=int, default=3, help="timing repeats")
    parser.add_argument(
        "trials", nargs="?", type=int, default=None, help="trials per protocol and case"
    )
    parser.add_argument("--cases", nargs="+", default=CASES)
    parser.add_argument("--selfcheck", action="store_true", help="elastix's conventions only")
    args = parser.parse_args()
    if args.selfcheck:
        if itk is None:
            raise SystemExit(f"elastix unavailable ({ELASTIX_ERROR})")
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(1)
        elastix_selfcheck()
    else:
        main(args.repeats, args.trials, args.cases)
