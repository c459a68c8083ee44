"""Input checks: every bad image is refused or repaired with words that name the case,
the file and the problem (clemalign.checks, wired into load_case_inputs)."""

import numpy as np
import pytest
from scipy import ndimage

from clemalign.checks import (
    MAX_NONFINITE_FRACTION,
    finite_pixels,
    min_size,
    not_constant,
    unit_range,
)
from clemalign.errors import CaseError
from clemalign.io import write_landmarks, write_tiff
from clemalign.preprocess import (
    case_check,
    load_case_inputs,
    minimum_size_um,
    prepare_analogy_pair,
    resample,
    to_unit_float,
)

CASE, PATH = "tem07", "/data/tem07/em.tif"


def _texture(shape=(240, 240), seed=0):
    """Smooth random float32 image in [0, 1] (a stand-in for tissue)."""
    noise = np.random.default_rng(seed).random(shape)
    image = ndimage.gaussian_filter(noise, 3.0)
    image = (image - image.min()) / (image.max() - image.min())
    return image.astype(np.float32)


def _names_case_and_file(text, path=PATH):
    assert f"case {CASE!r}" in text
    assert f"(file: {path})" in text


def _write_case(tmp_path, case, em, lm, **extra):
    """Write a phantom case's files (TIFFs with their pixel size) and its case dict."""
    write_tiff(tmp_path / "em.tif", em, case.em_px_per_um)
    write_tiff(tmp_path / "lm.tif", lm, case.lm_px_per_um)
    write_landmarks(tmp_path / "landmarks.csv", case.landmarks)
    return {
        "name": CASE,
        "em": str(tmp_path / "em.tif"),
        "lm": str(tmp_path / "lm.tif"),
        "landmarks": str(tmp_path / "landmarks.csv"),
        "channel": "green",
        **extra,
    }


# --- non-finite pixels -------------------------------------------------------------


def test_nan_block_above_the_limit_is_refused():
    image = _texture((100, 100))
    image[10:40, 20:50] = np.nan  # 9 % of the pixels
    assert 900 / 10000 > MAX_NONFINITE_FRACTION
    with pytest.raises(CaseError) as info:
        finite_pixels(image, CASE, PATH, "em")
    text = str(info.value)
    _names_case_and_file(text)
    assert "900 of 10000 pixels (9 %) of the em image are not finite (900 NaN)" in text
    assert "rows 10-39, cols 20-49 (px, 0-based)" in text
    assert "more than 5 % cannot be repaired" in text
    assert info.value.case == CASE and info.value.path == PATH


def test_nan_block_below_the_limit_is_filled_and_does_not_spread():
    """A 10 x 10 NaN block used to turn the whole resampled image into NaN; filled with
    the median it stays local: far from the block the resampled image is the clean one's."""
    clean = _texture((240, 240))
    image = clean.copy()
    image[100:110, 120:130] = np.nan
    assert np.isnan(resample(image, 58.224, 14.52)).all()  # the problem being fixed
    repaired, mask, message = finite_pixels(image, CASE, PATH, "em")
    _names_case_and_file(message)
    assert "100 of 57600 pixels (0.174 %) of the em image are not finite (100 NaN)" in message
    assert "rows 100-109, cols 120-129" in message
    assert "the median of the finite pixels" in message
    fill = float(np.median(clean[np.isfinite(image)]))
    assert f"set to {fill:.4g}" in message
    expected = np.zeros(image.shape, bool)
    expected[100:110, 120:130] = True
    np.testing.assert_array_equal(mask, expected)
    assert np.all(repaired[expected] == np.float32(fill))
    np.testing.assert_array_equal(repaired[~expected], clean[~expected])
    assert np.isnan(image).sum() == 100  # the input is left alone

    out, ref = resample(repaired, 58.224, 14.52), resample(clean, 58.224, 14.52)
    assert np.isfinite(out).all()
    # Output px of the block: rows 25-27, cols 30-32 at 4x down; beyond ~8 output px
    # (Gaussian + spline support) the two agree to float32 rounding.
    rows, cols = np.indices(out.shape)
    far = (np.abs(rows - 26) > 8) | (np.abs(cols - 31) > 8)
    assert far.mean() > 0.7
    np.testing.assert_allclose(out[far], ref[far], rtol=0, atol=1e-6)
    assert np.abs(out - ref).max() > 1e-3  # the block itself differs (it was filled)


def test_inf_pixels_are_named_and_filled():
    image = _texture((100, 100))
    image[5, 7] = np.inf
    image[60:62, 90] = -np.inf
    image[0, 0] = np.nan
    repaired, mask, message = finite_pixels(image, CASE, PATH, "lm")
    _names_case_and_file(message)
    assert "4 of 10000 pixels (0.04 %) of the lm image are not finite" in message
    assert "(1 NaN, 1 +inf, 2 -inf)" in message
    assert "rows 0-61, cols 0-90" in message
    assert np.isfinite(repaired).all() and mask.sum() == 4
    everywhere = np.full((20, 20), np.inf, np.float32)
    with pytest.raises(CaseError, match=r"400 of 400 pixels \(100 %\).*400 \+inf"):
        finite_pixels(everywhere, CASE, PATH, "lm")


def test_nan_in_one_channel_of_a_colour_image():
    rgb = np.stack([_texture((50, 60), seed) for seed in range(3)], axis=-1)
    rgb[3:5, 4, 1] = np.nan
    repaired, mask, message = finite_pixels(rgb, CASE, PATH, "lm")
    assert "2 of 3000 pixels" in message and "(2 NaN values)" in message
    assert "per channel" in message
    assert mask.shape == (50, 60) and mask.sum() == 2
    np.testing.assert_array_equal(repaired[..., 0], rgb[..., 0])
    assert repaired[3, 4, 1] == np.float32(np.median(rgb[..., 1][np.isfinite(rgb[..., 1])]))


# --- intensity range ---------------------------------------------------------------


def test_float_tem_scaled_0_255_gives_the_uint8_values(small_analogy_case):
    """A TEM saved by Fiji as 32-bit float keeps 0-255: it is divided by 255, exactly as
    the 8-bit file would be."""
    tem8 = small_analogy_case.em
    scaled, message = unit_range(tem8.astype(np.float32), CASE, PATH, "em")
    assert scaled.dtype == np.float32
    np.testing.assert_array_equal(scaled, to_unit_float(tem8))
    _names_case_and_file(message)
    lo, hi = int(tem8.min()), int(tem8.max())
    assert f"the em image holds 32-bit float values from {lo} to {hi}" in message
    assert "read as 8-bit grey levels" in message and "divided by 255" in message


def test_float_scaled_0_65535_gives_the_uint16_values():
    image16 = (_texture() * 60000).astype(np.uint16)
    scaled, message = unit_range(image16.astype(np.float32), CASE, PATH, "lm")
    np.testing.assert_array_equal(scaled, to_unit_float(image16))
    _names_case_and_file(message)
    assert "read as 16-bit grey levels and divided by 65535" in message


def test_negative_floats_are_scaled_min_max():
    image = (_texture() * 25.0 - 5.0).astype(np.float32)
    image[0, 0], image[0, 1] = -5.0, 20.0
    scaled, message = unit_range(image, CASE, PATH, "em")
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    np.testing.assert_allclose(scaled, (image + 5.0) / 25.0, atol=1e-6)
    _names_case_and_file(message)
    assert (
        "values from -5 to 20, negative values: scaled linearly to [0, 1] (-5 -> 0, 20 -> 1)"
        in message
    )
    signed = (image * 100).astype(np.int16)  # signed integers with negatives: same rule
    scaled, message = unit_range(signed, CASE, PATH, "em")
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    assert "16-bit signed integer values from -500 to 2000" in message


def test_fractional_floats_are_scaled_min_max_not_dimmed():
    """A float image with an arbitrary scale (a deconvolved confocal from 0.2 to 3.7) is
    not taken for 8-bit grey levels: divided by 255 it would be nearly black."""
    image = (_texture() * 3.5 + 0.2).astype(np.float32)
    scaled, message = unit_range(image, CASE, PATH, "lm")
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    _names_case_and_file(message)
    assert "fractional values, so not 8-bit or 16-bit grey levels: scaled linearly" in message
    wide = (_texture() * 300000).astype(np.uint32)  # whole numbers above 65535
    scaled, message = unit_range(wide, CASE, PATH, "lm")
    assert scaled.max() == 1.0 and "values above 65535: scaled linearly" in message


def test_interpolation_overshoot_is_clipped():
    image = _texture() * 1.006 - 0.003
    scaled, message = unit_range(image, CASE, PATH, "lm")
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    assert "clipped to [0, 1]" in message


# --- constant images ---------------------------------------------------------------


@pytest.mark.parametrize(
    "image, words",
    [
        (np.full((64, 64), 0.5, np.float32), "is constant: every pixel is 0.5"),
        (np.zeros((64, 64), np.uint8), "is constant: every pixel is 0"),
        (np.full((64, 64), 3000, np.uint16), "is constant: every pixel is 3000"),
    ],
)
def test_constant_image_is_refused(image, words):
    with pytest.raises(CaseError) as info:
        not_constant(image, CASE, PATH, "em")
    text = str(info.value)
    _names_case_and_file(text)
    assert f"the em image {words}; it holds nothing to register" in text


def test_nearly_constant_and_empty_channel():
    image = np.full((64, 64), 0.5, np.float32)
    image[0, 0] = 0.5 + 1e-5  # one pixel off by far less than a grey level
    with pytest.raises(CaseError, match="is nearly constant: values 0.5 to 0.50001"):
        not_constant(image, CASE, PATH, "em")
    image[:32] = 0.2  # half the image differs: real structure
    not_constant(image, CASE, PATH, "em")
    with pytest.raises(CaseError, match="the green channel of the lm image is constant.*column"):
        not_constant(np.zeros((64, 64), np.uint8), CASE, PATH, "lm", channel="green")
    # Filled NaN pixels do not count as structure.
    filled = np.full((64, 64), 0.25, np.float32)
    filled[:2, :2] = 0.9
    mask = np.zeros((64, 64), bool)
    mask[:2, :2] = True
    with pytest.raises(CaseError, match="is constant"):
        not_constant(filled, CASE, PATH, "em", exclude=mask)


# --- size ----------------------------------------------------------------------------


def test_too_small_image_is_refused_in_words():
    with pytest.raises(CaseError) as info:
        min_size((13, 13), 14.52, 15 / 14.52, CASE, PATH, "em", "one 15 x 15 px patch")
    text = str(info.value)
    _names_case_and_file(text)
    assert (
        "the em image is 0.90 x 0.90 um (13 x 13 px at 14.52 px/um), smaller than one "
        "15 x 15 px patch (1.03 x 1.03 um)"
    ) in text
    min_size((15, 15), 14.52, 15 / 14.52, CASE, PATH, "em", "one 15 x 15 px patch")
    with pytest.raises(CaseError, match=r"0.96 x 3.03 um \(14 x 44 px"):
        min_size((44, 14), 14.52, 15 / 14.52, CASE, PATH, "em", "one patch")


def test_too_small_image_is_not_blamed_on_landmark_units(tmp_path, small_analogy_case):
    case = small_analogy_case
    tiny = case.em[:27, :27]  # 0.9 x 0.9 um at 30 px/um
    record = _write_case(tmp_path, case, tiny, case.lm)
    with pytest.raises(CaseError, match="not pixels"):  # today's words without a minimum
        load_case_inputs(record)
    with pytest.raises(CaseError) as info:
        load_case_inputs(record, 15 / 14.52, "one 15 x 15 px patch at 14.52 px/um")
    text = str(info.value)
    _names_case_and_file(text, record["em"])
    assert "the em image is 0.90 x 0.90 um (27 x 27 px at 30 px/um), smaller than one " in text
    assert "15 x 15 px patch at 14.52 px/um (1.03 x 1.03 um)" in text
    # Per-image minima; the full-size images pass.
    full = _write_case(tmp_path, case, case.em, case.lm)
    assert load_case_inputs(full, {"em": 1.0, "lm": 2.0}).notes == []
    with pytest.raises(CaseError, match="the lm image is 20.03 x 20.03 um.*one bead window"):
        load_case_inputs(full, {"lm": 25.0}, {"lm": "one bead window"})


# --- valid images ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        (_texture() * 255).astype(np.uint8),
        (_texture() * 4095).astype(np.uint16),
        _texture(),
        _texture().astype(np.float64),
        np.stack([(_texture(seed=s) * 255).astype(np.uint8) for s in range(3)], axis=-1),
    ],
    ids=["uint8", "uint16", "float32", "float64", "rgb8"],
)
def test_valid_images_pass_unchanged(image):
    before = image.copy()
    same, mask, message = finite_pixels(image, CASE, PATH, "em")
    assert same is image and mask is None and message is None
    not_constant(image, CASE, PATH, "em")
    scaled, message = unit_range(image, CASE, PATH, "em")
    assert message is None
    np.testing.assert_array_equal(image, before)
    reference = to_unit_float(image)
    assert scaled.dtype == reference.dtype == np.float32
    assert scaled.tobytes() == reference.tobytes()


def test_load_case_inputs_keeps_valid_files_as_read(tmp_path, small_analogy_case):
    case = small_analogy_case
    record = _write_case(tmp_path, case, case.em, case.lm)
    raw = load_case_inputs(record, 15 / 14.52, "one 15 x 15 px patch at 14.52 px/um")
    assert raw.notes == [] and raw.em_invalid is None and raw.lm_invalid is None
    assert raw.em.dtype == case.em.dtype and raw.em.tobytes() == case.em.tobytes()
    assert raw.lm.dtype == case.lm.dtype and raw.lm.tobytes() == case.lm.tobytes()


# --- through load_case_inputs to the prepared pair ---------------------------------------


def _pair(raw):
    return prepare_analogy_pair(
        raw.em, raw.em_px_per_um, raw.lm, raw.lm_px_per_um, raw.landmarks, "green", 14.52, 2.0
    )


def test_float_0_255_tem_file_gives_the_uint8_files_pair(tmp_path, small_analogy_case):
    case = small_analogy_case
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    clean = load_case_inputs(_write_case(tmp_path / "a", case, case.em, case.lm))
    record = _write_case(tmp_path / "b", case, case.em.astype(np.float32), case.lm)
    raw = load_case_inputs(record)
    assert len(raw.notes) == 1
    _names_case_and_file(raw.notes[0], record["em"])
    assert "divided by 255" in raw.notes[0]
    assert raw.em.dtype == np.float32 and raw.em.max() <= 1.0
    a, b = _pair(clean), _pair(raw)
    assert a.em.tobytes() == b.em.tobytes() and a.lm.tobytes() == b.lm.tobytes()


def test_nan_tem_file_is_repaired_and_masked(tmp_path, small_analogy_case):
    case = small_analogy_case
    em = case.em.astype(np.float32) / 255
    em[50:60, 70:80] = np.nan
    record = _write_case(tmp_path, case, em, case.lm)
    raw = load_case_inputs(record)
    assert len(raw.notes) == 1 and "100 NaN" in raw.notes[0]
    _names_case_and_file(raw.notes[0], record["em"])
    assert raw.em_invalid.sum() == 100 and raw.em_invalid[55, 75] and raw.lm_invalid is None
    assert np.isfinite(_pair(raw).em).all()
    em[:, :40] = np.nan  # now 17 % of the image
    record = _write_case(tmp_path, case, em, case.lm)
    with pytest.raises(CaseError, match=r"9700 of 57600 pixels \(16.8 %\) of the em image"):
        load_case_inputs(record)


def test_empty_confocal_channel_is_refused(tmp_path, small_analogy_case):
    case = small_analogy_case
    lm = case.lm.copy()
    lm[..., 1] = 0
    record = _write_case(tmp_path, case, case.em, lm)
    with pytest.raises(CaseError) as info:
        load_case_inputs(record)
    text = str(info.value)
    _names_case_and_file(text, record["lm"])
    assert "the green channel of the lm image is constant: every pixel is 0" in text


# --- the workflow's per-case check (checkpoint check_case) -------------------------------

FIDUCIALS = {"bead_diameter_nm": 100.0, "em_psf_fwhm_nm": 10.0, "lm_psf_fwhm_nm": 250.0}
PREPROCESS = {"px_per_um": 14.52, "margin_um": 2.0}


def _check(record):
    return case_check({"track": "analogy", **record}, 15, PREPROCESS, FIDUCIALS)


def test_case_check_passes_a_valid_case_and_reports_repairs(tmp_path, small_analogy_case):
    case = small_analogy_case
    em = case.em.astype(np.float32) / 255
    em[50:60, 70:80] = np.nan
    result = _check(_write_case(tmp_path, case, em, case.lm))
    assert result["status"] == "ok" and result["case"] == CASE
    assert len(result["notes"]) == 1 and "100 NaN" in result["notes"][0]


def test_case_check_fails_bad_input_in_words_without_raising(tmp_path, small_analogy_case):
    """Each bad input becomes ``failed: <reason>`` naming the case and the file."""
    case = small_analogy_case
    record = _write_case(tmp_path, case, case.em, case.lm)
    missing = _check({**record, "lm": str(tmp_path / "gone.tif")})["status"]
    assert missing.startswith("failed: ") and "lm file is missing" in missing
    assert f"case {CASE!r}" in missing and "gone.tif" in missing
    em = case.em.astype(np.float32) / 255
    em[:, :80] = np.nan  # a third of the TEM
    status = _check(_write_case(tmp_path, case, em, case.lm))["status"]
    assert status.startswith("failed: ") and "NaN" in status and "em.tif" in status
    record = _write_case(tmp_path, case, case.em, case.lm)
    write_landmarks(tmp_path / "landmarks.csv", case.landmarks.iloc[:2])
    two = _check(record)["status"]
    assert two.startswith("failed: ") and "3" in two and "landmarks.csv" in two


def test_minimum_size_is_a_patch_or_a_bead_window():
    size, what = minimum_size_um({"track": "analogy"}, 15, 14.52, FIDUCIALS)
    assert size == pytest.approx(15 / 14.52) and "15 x 15 px patch" in what
    window, what = minimum_size_um({"track": "fiducial"}, 15, 14.52, FIDUCIALS)
    assert set(window) == {"em", "lm"} and window["lm"] > window["em"] >= 0.3
    assert "bead" in what


def test_sheet_landmarks_may_be_a_bigwarp_csv(tmp_path, small_analogy_case):
    """A case whose landmarks were clicked in BigWarp (EM = moving) loads to the same
    um coordinates as our CSV: the format is recognised, the half pixels are undone."""
    from clemalign.formats import write_bigwarp_landmarks

    case = small_analogy_case
    ours = load_case_inputs(_write_case(tmp_path, case, case.em, case.lm))
    record = _write_case(tmp_path, case, case.em, case.lm)
    record["landmarks"] = str(tmp_path / "bigwarp.csv")
    write_bigwarp_landmarks(
        record["landmarks"], case.landmarks, case.em_px_per_um, case.lm_px_per_um
    )
    theirs = load_case_inputs(record)
    columns = ["em_x_um", "em_y_um", "lm_x_um", "lm_y_um"]
    assert np.allclose(theirs.landmarks[columns], ours.landmarks[columns], atol=1e-9)
