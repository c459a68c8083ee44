import numpy as np
import pytest
from scipy import ndimage

from clemalign.fiducials import (
    DEFAULT_FIDUCIAL_SETTINGS,
    FiducialError,
    _detect,
    algorithm1,
    bead_mask,
    check_match,
    detect_beads,
    detect_databar,
    fiducial_registration_error_um,
    gaussian_centres,
    predicted_tre_um,
    register_fiducial_case,
    robust_match,
    robust_settings,
)
from clemalign.phantom import make_fiducial_case
from clemalign.phantom._common import min_distance_sample
from clemalign.phantom.crowded import (
    detection_settings,
    make_stress_case,
    make_unrelated_bead_pair,
    stress_params,
)
from clemalign.preprocess import to_unit_float
from clemalign.settings import merge_params
from clemalign.transforms import affine_matrix, apply, fit_affine


def _field(seed=0, n=50, size=20.0):
    """A confocal-like bead field (um) and the subset an SEM view sees."""
    rng = np.random.default_rng(seed)
    lm = min_distance_sample(rng, n, (0.0, 0.0, size, size), 0.6)
    return rng, lm


def _grid_error(matrix, truth, extent=15.0):
    g = np.stack(np.meshgrid(np.linspace(0, extent, 7), np.linspace(0, extent, 7)), -1)
    g = g.reshape(-1, 2)
    return np.abs(apply(matrix, g) - apply(truth, g)).max()


def _truth(rotation, scale=(1.0, 1.0), shear=0.0, mirror=False):
    """SEM um -> LM um, the SEM field's centre (6, 6) landing at (10, 10) in the LM field."""
    return affine_matrix(rotation, scale, shear, (4.0, 4.0), mirror, (6.0, 6.0))


def robust_default(em, lm, field_um=(20.0, 20.0)):
    """The robust mode with the default settings (LM field 20 x 20 um)."""
    return robust_match(em, lm, robust_settings(), 0.2, field_um)


def _view(lm, truth, keep):
    """SEM-frame positions of the beads inside a view (truth maps SEM um -> LM um)."""
    em = apply(np.linalg.inv(truth), lm)
    inside = np.all((em > 0) & (em < 12.0), axis=1) & keep
    return em[inside]


@pytest.mark.parametrize("mirror", [False, True])
def test_algorithm1_recovers_a_similarity_exactly(mirror):
    rng, lm = _field(1, n=70)
    truth = _truth(27.0, (1.1, 1.1), mirror=mirror)
    em = _view(lm, truth, np.ones(len(lm), bool))
    res = algorithm1(em, lm)
    assert _grid_error(res.matrix, truth) < 1e-6
    assert len(res.pairs) == len(em)


def test_robust_recovers_an_8_percent_shear_exactly_and_algorithm1_honestly():
    rng, lm = _field(2)
    truth = _truth(15.0, (1.0, 0.93), 0.08)
    em = _view(lm, truth, np.ones(len(lm), bool))
    assert _grid_error(robust_default(em, lm).matrix, truth) < 1e-6
    # Algorithm 1 on the same input: the neighbour ratio is no longer invariant, but one
    # correct triplet plus the least-squares refinement still lands exactly here.
    assert _grid_error(algorithm1(em, lm).matrix, truth) < 1e-6


def test_shear_breaks_algorithm1_where_robust_holds():
    """Stronger distortion (10 % shear + 10 % anisotropy) with missing beads: over
    20 fields Algorithm 1 fails on some, the robust mode on none."""
    a1_ok = robust_ok = 0
    for seed in range(20):
        rng, lm = _field(100 + seed, n=45)
        truth = _truth(40.0 * seed, (1.1, 1.0), 0.1)
        em = _view(lm, truth, rng.random(len(lm)) > 0.15)
        robust_ok += _grid_error(robust_default(em, lm).matrix, truth) < 1e-6
        try:
            a1_ok += _grid_error(algorithm1(em, lm).matrix, truth) < 1e-6
        except FiducialError:
            pass
    assert robust_ok == 20
    assert a1_ok < robust_ok


def test_missing_and_spurious_beads():
    """20 % of the SEM beads dropped and 20 % spurious points added."""
    rng, lm = _field(3, n=60)
    truth = _truth(-70.0, (1.02, 0.98), 0.03, mirror=True)
    keep = rng.random(len(lm)) > 0.2
    em = _view(lm, truth, keep)
    spurious = rng.uniform(0, 12.0, (int(0.2 * len(em)), 2))
    em_noisy = np.concatenate([em, spurious])
    res = robust_default(em_noisy, lm)
    assert _grid_error(res.matrix, truth) < 1e-6
    assert set(res.pairs[:, 0]) <= set(range(len(em)))  # no spurious point was used
    # Plain Algorithm 1 on the same input happens to recover it too (no spurious point
    # lands within the tolerance of an unmatched bead here) ...
    assert _grid_error(algorithm1(em_noisy, lm).matrix, truth) < 1e-6
    # ... but one that does (70 nm from a bead the SEM lacks) enters its one-shot
    # nearest-neighbour pairing and biases the least-squares fit; the robust mode's
    # residual trimming rejects it.
    lacking = np.flatnonzero(~keep)
    em_lacking = apply(np.linalg.inv(truth), lm[lacking])
    inside = np.flatnonzero(np.all((em_lacking > 1) & (em_lacking < 11), axis=1))[0]
    trap = em_lacking[inside] + [0.07, 0.0]
    em_trap = np.concatenate([em_noisy, trap[None]])
    a1 = algorithm1(em_trap, lm)
    assert len(em_trap) - 1 in a1.pairs[:, 0]
    assert 1e-4 < _grid_error(a1.matrix, truth) < 0.05
    robust = robust_default(em_trap, lm)
    assert len(em_trap) - 1 not in robust.pairs[:, 0]
    assert _grid_error(robust.matrix, truth) < 1e-6


def test_too_few_and_collinear_beads_raise_clear_errors():
    lm = np.array([[1.0, 1.0], [5.0, 2.0], [3.0, 7.0], [8.0, 8.0]])
    with pytest.raises(FiducialError, match=r"2 beads found in the source \(EM\) image.*1\.0"):
        algorithm1(lm[:2], lm)
    with pytest.raises(FiducialError, match="0 beads found in the target"):
        robust_default(lm, np.zeros((0, 2)))
    line = np.stack([np.linspace(0, 5, 6), np.linspace(0, 2.5, 6)], 1)
    with pytest.raises(FiducialError, match="collinear"):
        algorithm1(line, lm)


def test_bad_case_reports_every_method_failed():
    blank = np.full((200, 200), 0.2, np.float32)
    beads = np.zeros((200, 200), np.float32)
    beads[50, 60] = beads[120, 30] = 1.0
    beads = ndimage.gaussian_filter(beads, 2.0) * 30
    result = register_fiducial_case(blank + beads, 40.0, blank + beads, 25.0)
    for outcome in result.outcomes.values():
        assert outcome.matrix is None
        assert outcome.status.startswith("failed:") and "beads found" in outcome.status


def _blob_image(seed: int, shape: tuple[int, int], n: int, sigma_px: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros(shape, np.float32)
    rows, cols = rng.integers(5, shape[0] - 5, n), rng.integers(5, shape[1] - 5, n)
    img[rows, cols] = rng.uniform(0.5, 1.0, n)
    img = ndimage.gaussian_filter(img, sigma_px) * (2 * np.pi * sigma_px**2)
    return img + rng.normal(0.05, 0.01, shape).astype(np.float32)


@pytest.mark.parametrize("seed", range(2))
def test_unrelated_bead_images_are_never_ok(seed):
    """Negative control: two images of random blobs have nothing in common; every
    method finds its best hypothesis, and the checks must reject it."""
    em = _blob_image(100 + seed, (500, 500), 80, 2.5)  # 50 px/um: 10 um field
    lm = _blob_image(200 + seed, (400, 400), 150, 3.0)  # 25 px/um: 16 um field
    result = register_fiducial_case(em, 50.0, lm, 25.0)
    for method, outcome in result.outcomes.items():
        assert outcome.status.startswith("failed"), (method, outcome.status)
        record = outcome.transform_record()
        assert record["matrix"] is None and record["status"] == outcome.status


def test_detection_and_gaussian_centres_are_subpixel_on_rendered_beads():
    """Confocal phantom at 40 nm px, PSF 250 nm, 300 photons at a bead's peak (about
    10^4 per bead), read noise 2 grey levels, sloped autofluorescence: fitted centres
    within 0.1 px RMS of the truth (measured 0.07 px); detection finds the visible
    beads. At the default 60 photons the error is shot-noise limited (about 0.14 px)."""
    case = make_fiducial_case(11, 0, {"photons": 300.0})
    truth = np.array(case.ground_truth["beads_lm_um"])
    visible = np.setdiff1d(np.arange(len(truth)), case.ground_truth["missing_in_lm"])
    img = to_unit_float(case.lm)
    beads = detect_beads(img, case.lm_px_per_um, 0.1, 0.25)
    fitted = gaussian_centres(img, case.lm_px_per_um, beads.xy_um, 0.8)
    dist = np.hypot(*(fitted[:, None, :] - truth[None, visible, :]).T)  # (visible, detected)
    nearest = dist.min(axis=1)
    found = nearest < 0.1
    assert found.mean() > 0.9  # nearly all visible beads are detected
    rms_px = np.sqrt(np.mean(nearest[found] ** 2)) * case.lm_px_per_um
    assert rms_px < 0.1, rms_px


def test_predicted_tre_agrees_with_observed_tre():
    """Monte Carlo: fiducials with 20 nm localisation noise in both images; the
    predicted TRE (from each trial's FRE) matches the observed RMS TRE within 15 %."""
    rng = np.random.default_rng(5)
    src = rng.uniform(0, 10, (15, 2))
    truth = affine_matrix(10.0, (1.05, 0.97), 0.02, (2.0, 1.0))
    targets = np.array([[5.0, 5.0], [0.0, 0.0], [12.0, 3.0], [-3.0, 9.0]])
    sigma = 0.02
    observed, predicted = [], []
    for _ in range(1500):
        a = src + rng.normal(0, sigma, src.shape)
        b = apply(truth, src) + rng.normal(0, sigma, src.shape)
        fit = fit_affine(a, b)
        observed.append(np.sum((apply(fit, targets) - apply(truth, targets)) ** 2, axis=1))
        predicted.append(
            predicted_tre_um(a, fiducial_registration_error_um(a, b, fit), targets) ** 2
        )
    obs = np.sqrt(np.mean(observed, axis=0))
    pred = np.sqrt(np.mean(predicted, axis=0))
    np.testing.assert_allclose(pred, obs, rtol=0.15)
    assert obs[2] > obs[0] and pred[2] > pred[0]  # grows away from the fiducials


@pytest.mark.parametrize("index", [0, 3])  # a plain view and the mirrored one
def test_default_views_algorithm1_beats_baseline_below_half_a_pixel(index):
    case = make_fiducial_case(2012, index, {})
    em_xy = case.landmarks[["em_x_um", "em_y_um"]].to_numpy()
    lm_xy = case.landmarks[["lm_x_um", "lm_y_um"]].to_numpy()
    result = register_fiducial_case(
        to_unit_float(case.em),
        case.em_px_per_um,
        to_unit_float(case.lm),
        case.lm_px_per_um,
        {},
        em_xy,
    )
    mae = {}
    for method, outcome in result.outcomes.items():
        assert outcome.status == "ok", outcome.status
        mae[method] = np.mean(np.hypot(*(apply(outcome.matrix, em_xy) - lm_xy).T)) * 1000
    assert mae["algorithm1"] < mae["gaussian_baseline"]
    assert mae["algorithm1"] < 20.0  # half a confocal pixel
    assert mae["robust"] < 20.0


def _with_databar(image: np.ndarray, rows: int) -> np.ndarray:
    """An SEM image with an instrument databar: a uniform strip, text-like marks, a
    scale bar and a bead-sized bright dot (as in a logo) that must not count."""
    out = image.copy()
    out[-rows:] = 0.0
    out[-rows + 3 : -rows + 6, 20:120] = 1.0  # scale bar
    for k in range(8):  # characters
        out[-rows + 8 : -rows + 14, 150 + 12 * k : 156 + 12 * k] = 1.0
    out[-rows // 2 - 2 : -rows // 2 + 3, 300:305] = 1.0  # a bead-sized dot
    return out


def test_databar_is_found_and_ignored_and_a_plain_image_has_none():
    case = make_fiducial_case(2012, 0, {})
    em = to_unit_float(case.em)
    assert detect_databar(em) == 0
    barred = _with_databar(em, 40)
    assert detect_databar(barred) == 40
    detected = detect_beads(barred, case.em_px_per_um, 0.1, 0.0, mask=bead_mask(em.shape, 40))
    bottom_um = (em.shape[0] - 40) / case.em_px_per_um
    assert detected.n_masked >= 1 and (detected.xy_um[:, 1] < bottom_um).all()


def test_candidates_are_ranked_by_bead_likeness_and_masks_drop_them():
    """Round bead-sized spots rank above elongated or off-size blobs; a mask drops the
    candidates under it; max_candidates keeps the most bead-like."""
    img = np.zeros((200, 200), np.float32)
    img[50, 50] = img[50, 150] = 1.0
    img = ndimage.gaussian_filter(img, 2.0) * 40
    streak = np.zeros_like(img)
    streak[150, 40:52] = 1.0
    img += ndimage.gaussian_filter(streak, 1.5) * 12
    beads = detect_beads(img, 20.0, 0.1, 0.25, threshold=0.05, size_range=(0.2, 5.0))
    assert len(beads.xy_um) == 3
    assert (np.diff(beads.score) <= 0).all()
    assert beads.xy_um[-1, 1] > 7.0  # the streak (y = 7.5 um) ranks last
    top = detect_beads(img, 20.0, 0.1, 0.25, 0.05, (0.2, 5.0), max_candidates=2)
    assert np.allclose(np.sort(top.xy_um[:, 0]), [2.525, 7.525], atol=0.05)
    mask = np.zeros(img.shape, bool)
    mask[:100, 100:] = True
    masked = detect_beads(img, 20.0, 0.1, 0.25, 0.05, (0.2, 5.0), mask=mask)
    assert len(masked.xy_um) == 2 and masked.n_masked == 1
    round_only = detect_beads(img, 20.0, 0.1, 0.25, 0.05, (0.2, 5.0), min_roundness=0.5)
    assert len(round_only.xy_um) == 2


def _crowded_run(case, params):
    """Detection with the phantom's bead settings, then the robust mode and its check."""
    s = merge_params(DEFAULT_FIDUCIAL_SETTINGS, detection_settings(params))
    em = _detect(case.em, case.em_px_per_um, s, "em", bead_mask(case.em.shape, 0, None))
    lm = _detect(case.lm, case.lm_px_per_um, s, "lm", bead_mask(case.lm.shape, 0, None))
    field = (case.lm.shape[1] / case.lm_px_per_um, case.lm.shape[0] / case.lm_px_per_um)
    res = robust_match(em.xy_um, lm.xy_um, robust_settings(s), s["tolerance_um"], field)
    check = check_match(res, em.xy_um, lm.xy_um, s["tolerance_um"], field)
    return res, check.status(s["significance"], s["plausible_affine"]), len(em.xy_um)


def test_robust_mode_finds_beads_in_a_crowd_of_puncta():
    """A crowded stress case (25 beads among ~240 SEM and ~350 light-microscope
    candidates, tilt, puncta in both images): ok, and within 50 nm at the true beads."""
    case, params = make_stress_case(1)
    res, status, n_em = _crowded_run(case, params)
    em_xy = case.landmarks[["em_x_um", "em_y_um"]].to_numpy(float)
    lm_xy = case.landmarks[["lm_x_um", "lm_y_um"]].to_numpy(float)
    assert n_em > 200 and status == "ok"
    assert np.abs(apply(res.matrix, em_xy) - lm_xy).max() < 0.05


def test_robust_mode_refuses_unrelated_crowded_images():
    params = stress_params(1)
    res, status, _ = _crowded_run(make_unrelated_bead_pair(1, params), params)
    assert status.startswith("failed"), status
    assert res.info["attempts_tried"] == len(robust_settings()["attempts"])
