import numpy as np
import pytest
from scipy import ndimage

from clemalign.preprocess import (
    prepare_analogy_pair,
    resample,
    select_channel,
    to_unit_float,
)
from clemalign.register import grid_error_um
from clemalign.training import TRAINING_ALIGNMENTS, align_training_pair
from clemalign.transforms import Transform, apply, xy_um_to_rc_px


def _blob(shape, ppu, center_xy_um, sigma_um):
    """Gaussian spot at a known physical position (pixel-centre convention)."""
    rows, cols = np.indices(shape)
    x = (cols + 0.5) / ppu
    y = (rows + 0.5) / ppu
    return np.exp(-((x - center_xy_um[0]) ** 2 + (y - center_xy_um[1]) ** 2) / (2 * sigma_um**2))


def _centroid_um(image, ppu):
    """Intensity-weighted centroid (x, y) um of a single symmetric spot."""
    weights = np.clip(image - 0.05 * image.max(), 0, None)
    rows, cols = np.indices(image.shape)
    total = weights.sum()
    return np.array([((cols + 0.5) * weights).sum(), ((rows + 0.5) * weights).sum()]) / total / ppu


@pytest.mark.parametrize(
    "ppu_in, ppu_out, origin",
    [
        (58.224, 14.52, (0.0, 0.0)),  # TEM: 4x down (block mean) + residual Gaussian
        (582.24, 14.52, (0.0, 0.0)),  # paper TEM: 40x down
        (7.588, 14.52, (1.17, 0.91)),  # confocal crop: ~1.9x up with a fractional origin
        (25.0, 14.52, (1.3, 0.7)),  # a non-integer downsampling factor
    ],
)
def test_resampling_keeps_physical_positions(ppu_in, ppu_out, origin):
    """A spot at a known um position lands there, within 0.1 px of the target grid."""
    field_um = 9.0
    shape = (int(field_um * ppu_in),) * 2
    center = np.array([4.87, 4.33])
    image = _blob(shape, ppu_in, center, sigma_um=0.35).astype(np.float32)
    out = resample(image, ppu_in, ppu_out, origin_um=origin, size_um=(6.5, 6.5))
    assert out.shape == (round(6.5 * ppu_out),) * 2
    found = _centroid_um(out, ppu_out) + np.array(origin)
    error_px = np.abs(found - center) * ppu_out
    assert np.all(error_px < 0.1), error_px


def test_resampling_anti_aliases():
    """A pattern finer than the output grid must average out, not alias into stripes."""
    ppu_in, ppu_out = 58.224, 14.52
    cols = np.arange(800)
    stripes = (np.sin(2 * np.pi * cols / 3.0)[None, :] * np.ones((800, 1))).astype(np.float32)
    out = resample(stripes, ppu_in, ppu_out)
    assert np.abs(out[:, 1:-1]).max() < 0.05  # the last column lies past the input's edge
    naive = stripes[::4, ::4]
    assert np.abs(naive).max() > 0.5  # what plain subsampling would give


def test_select_channel_and_errors():
    rgb = np.stack([np.full((4, 5), v, np.uint8) for v in (10, 20, 30)], axis=-1)
    assert select_channel(rgb, "green")[0, 0] == 20
    assert select_channel(np.moveaxis(rgb, -1, 0), "blue")[0, 0] == 30
    assert select_channel(rgb, 0)[0, 0] == 10
    assert select_channel(rgb[..., 0], "green").shape == (4, 5)
    with pytest.raises(ValueError, match="unknown channel 'purple'"):
        select_channel(rgb, "purple")
    with pytest.raises(ValueError, match="index 5"):
        select_channel(rgb, 5)
    assert to_unit_float(np.array([255], np.uint8))[0] == pytest.approx(1.0)


def test_prepare_analogy_pair_frames(small_analogy_case):
    case = small_analogy_case
    pair = prepare_analogy_pair(
        case.em, case.em_px_per_um, case.lm, case.lm_px_per_um, case.landmarks, "green", 14.52, 2.0
    )
    assert pair.px_per_um == 14.52
    assert pair.em.shape == (round(8.0 * 14.52),) * 2
    # The crop holds the whole TEM footprint (plus margin) and stays in the confocal.
    fp = pair.start.apply(np.array([[0, 0], [8, 0], [0, 8], [8, 8]]))
    size = np.array(pair.crop_size_um)
    assert np.all(fp > 0) and np.all(fp < size)
    # Landmarks: the rough similarity maps TEM landmarks near their confocal partners
    # (within the residual shear/scale of the ground truth over an 8 um field).
    em_xy = pair.landmarks[["em_x_um", "em_y_um"]].to_numpy()
    lm_xy = pair.landmarks[["lm_x_um", "lm_y_um"]].to_numpy()
    assert np.median(np.hypot(*(pair.start.apply(em_xy) - lm_xy).T)) < 0.4
    # Crop frame = confocal frame shifted by the crop origin.
    raw_lm = case.landmarks[["lm_x_um", "lm_y_um"]].to_numpy()
    np.testing.assert_allclose(apply(pair.lm_frame_from_confocal(), raw_lm), lm_xy)
    # The green channel at a landmark's crop position equals the raw green there.
    rc = np.round(xy_um_to_rc_px(lm_xy[:1], 14.52)).astype(int)[0]
    raw_rc = xy_um_to_rc_px(
        raw_lm[:1] + (np.round(rc[::-1]) + 0.5) / 14.52 - lm_xy[:1], case.lm_px_per_um
    )[0]
    raw_val = ndimage.map_coordinates(case.lm[..., 1].astype(float) / 255, raw_rc[:, None], order=1)
    assert pair.lm[rc[0], rc[1]] == pytest.approx(raw_val[0], abs=0.08)


def test_prepare_rejects_disjoint_landmarks(small_analogy_case):
    case = small_analogy_case
    table = case.landmarks.copy()
    table[["lm_x_um", "lm_y_um"]] += 500.0  # far outside the confocal image
    with pytest.raises(ValueError, match="does not overlap"):
        prepare_analogy_pair(case.em, case.em_px_per_um, case.lm, case.lm_px_per_um, table)


def test_prepare_rejects_two_landmarks(small_analogy_case):
    """Two pairs fit a mirrored similarity as well as the true one: refused, not mirrored."""
    case = small_analogy_case
    with pytest.raises(ValueError, match="at least 3 landmark pairs, got 2"):
        prepare_analogy_pair(
            case.em, case.em_px_per_um, case.lm, case.lm_px_per_um, case.landmarks.iloc[:2]
        )


def test_registered_training_alignment_beats_the_noisy_landmark_fit(small_analogy_case):
    case = small_analogy_case
    pair = prepare_analogy_pair(
        case.em, case.em_px_per_um, case.lm, case.lm_px_per_um, case.landmarks, "green", 14.52, 2.0
    )
    truth = (
        pair.lm_frame_from_confocal() @ Transform.from_dict(case.ground_truth["transform"]).matrix
    )
    errors = {}
    for alignment in TRAINING_ALIGNMENTS:
        confocal, matrix = align_training_pair(pair.em, pair.lm, 14.52, pair.landmarks, alignment)
        assert confocal.shape == pair.em.shape
        errors[alignment] = grid_error_um(matrix, truth, pair.em.shape, 14.52)
    # The annotators' noise (0.1 um per landmark) leaves the fit tens of nm off; MI
    # registration of the training pair itself removes most of it.
    assert errors["registered"] < 0.5 * errors["landmarks"]
    assert errors["registered"] < 0.03
    with pytest.raises(ValueError, match="unknown training alignment"):
        align_training_pair(pair.em, pair.lm, 14.52, pair.landmarks, "manual")


def test_gray_of_an_integer_colour_image_is_in_unit_range():
    """An 8-bit RGB TEM becomes luminance in [0, 1], as its 2D version would."""
    from clemalign.preprocess import select_channel, to_unit_float

    rgb = np.stack([np.arange(256, dtype=np.uint8).reshape(16, 16)] * 3, axis=-1)
    gray = to_unit_float(select_channel(rgb, "gray"))
    assert gray.dtype == np.float32 and gray.max() <= 1.0
    np.testing.assert_allclose(gray, to_unit_float(rgb[..., 0]), atol=1e-6)
