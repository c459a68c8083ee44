"""Non-rigid export (clemalign.export.write_nonrigid_files): the raw-frame field, where each
EM pixel lands, the ITK displacement field read by SimpleITK, the BigWarp grid and the EM
resampled through the field, on a small pair with a known field (an affine plus a
sinusoid)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage, optimize
from scipy.interpolate import RBFInterpolator

from clemalign import export as ex
from clemalign.formats import read_bigwarp_landmarks
from clemalign.io import read_image, read_json
from clemalign.nonrigid import warp_with_field
from clemalign.transforms import (
    DeformationField,
    affine_matrix,
    apply,
    translation_matrix,
    warp_image,
)

EM_PPU, LM_PPU = 20.0, 8.0  # px/um: EM finer than LM, as in CLEM
EM_SHAPE, LM_SHAPE = (160, 160), (160, 176)  # 8 x 8 um EM field, 22 x 20 um LM field
EM_FIELD_UM = (EM_SHAPE[1] / EM_PPU, EM_SHAPE[0] / EM_PPU)
#: Raw EM um -> raw LM um of the affine part: rotation, anisotropic scale, shear.
RAW = affine_matrix(5.0, (1.03, 0.97), 0.02, (6.0, 6.5), center_um=(4.0, 4.0))
#: Corner of the LM working frame (the confocal crop) in the raw LM frame, um.
CROP_ORIGIN_UM = (3.25, 2.5)
#: Working EM um -> working LM um (what the registration returns).
CROP = translation_matrix(-CROP_ORIGIN_UM[0], -CROP_ORIGIN_UM[1]) @ RAW
#: Half a pixel of each image, um: ITK and BigWarp centre pixel i at i / p.
H_EM, H_LM = 0.5 / EM_PPU, 0.5 / LM_PPU
#: ITK linearly interpolates the field between nodes 0.125 um apart (every LM pixel centre
#: at 8 px/um): at most sqrt(2) 0.125**2 / 8 * 0.19 1/um = 0.52 nm for the 0.3 um, 8 um
#: sinusoid in x and y (measured: 0.51 nm largest over 200 points, 0.28 nm median; 1.0e-6
#: um at the nodes; 2.1 nm if the nodes were 0.25 um apart).
ITK_BOUND_UM = 1e-3
#: Mean absolute difference (intensities in [0, 1]) of em_on_lm_nonrigid.tif and the LM on
#: their overlap (measured 0.0020; the affine-only warp of the same field: 0.072).
MAD_BOUND = 0.006


def wavy_field(amplitude_um: float, wavelength_um: float = 8.0) -> DeformationField:
    """Working EM um -> working LM um: CROP plus a sinusoid of ``amplitude_um`` in x and y."""
    k = 2 * np.pi / wavelength_um

    def mapping(points: np.ndarray) -> np.ndarray:
        p = np.asarray(points, dtype=float)
        wave = np.stack([np.sin(k * p[:, 1]), np.sin(k * p[:, 0] + 0.7)], axis=1)
        return apply(CROP, p) + amplitude_um * wave

    return DeformationField.from_mapping(mapping, EM_FIELD_UM, 0.25, 1.0)


def raw_of(field: DeformationField) -> DeformationField:
    return field.then(translation_matrix(*CROP_ORIGIN_UM))


def smooth_texture(seed: int, shape: tuple[int, int]) -> np.ndarray:
    """Random field in [0, 1] smooth at the LM scale (features of 0.2-0.8 um on the EM)."""
    rng = np.random.default_rng(seed)
    field = sum(ndimage.gaussian_filter(rng.standard_normal(shape), s) * s for s in (4, 8, 16))
    return ((field - field.min()) / (field.max() - field.min())).astype(np.float32)


def make_pair(em: np.ndarray, lm: np.ndarray) -> ex.RawPair:
    return ex.RawPair(em, EM_PPU, lm, LM_PPU, "em.tif", "lm.tif", pd.DataFrame())


def inverse(field: DeformationField, lm_xy_um: np.ndarray) -> np.ndarray:
    """EM points with field(x) = y, by scipy's root finder (independent of the export)."""
    start = apply(np.linalg.inv(field.affine), lm_xy_um)
    found = []
    for y, x0 in zip(lm_xy_um, start, strict=True):
        sol = optimize.root(lambda x, y=y: field.apply(x)[0] - y, x0, tol=1e-13)
        assert sol.success
        found.append(sol.x)
    return np.array(found)


def itk_transform(sitk, path: Path):
    image = sitk.ReadImage(str(path))
    return sitk.DisplacementFieldTransform(sitk.Cast(image, sitk.sitkVectorFloat64))


def itk_map(tx, itk_points: np.ndarray) -> np.ndarray:
    return np.array([tx.TransformPoint(tuple(map(float, p))) for p in itk_points])


@pytest.fixture(scope="module")
def wavy(tmp_path_factory) -> dict:
    """The export of the 0.3 um, 8 um sinusoid (random images: only geometry is tested)."""
    rng = np.random.default_rng(0)
    pair = make_pair(rng.random(EM_SHAPE, dtype=np.float32), rng.random(LM_SHAPE, dtype=np.float32))
    field = wavy_field(0.3)
    out = tmp_path_factory.mktemp("wavy")
    written = ex.write_nonrigid_files(out, field, CROP_ORIGIN_UM, pair, images=False)
    return {"out": out, "field": field, "raw": raw_of(field), "pair": pair, "written": written}


# --------------------------------------------------------------------------- files


def test_files_and_deformation_json(wavy):
    out, raw = wavy["out"], wavy["raw"]
    assert [p.name for p in wavy["written"]] == list(ex.NONRIGID_FILES[:4])
    assert set(ex.NONRIGID_FILES) <= set(ex.FILE_NOTES)
    record = read_json(out / "deformation.json")
    assert "raw EM um -> raw LM um" in record["frames"] and "outer corner" in record["frames"]
    # the best affine of the field (not RAW: it takes up part of the sinusoid), moved by the crop
    shifted = translation_matrix(*CROP_ORIGIN_UM) @ wavy["field"].affine
    np.testing.assert_allclose(record["affine"], shifted, atol=1e-12)
    np.testing.assert_allclose(record["lm_crop_origin_um"], CROP_ORIGIN_UM)
    back = DeformationField.from_dict(record)
    em_xy = np.random.default_rng(1).uniform(0, 8, (50, 2))
    # residuals are stored to 0.1 nm
    np.testing.assert_allclose(back.apply(em_xy), raw.apply(em_xy), atol=2e-4)
    assert back.floor_rms_um() > 0.15  # a real non-affine part (0.3 um sinusoid)


def test_images_false_removes_a_stale_resampled_image(tmp_path):
    pair = make_pair(smooth_texture(0, EM_SHAPE), smooth_texture(1, LM_SHAPE))
    field = wavy_field(0.3)
    ex.write_nonrigid_files(tmp_path, field, CROP_ORIGIN_UM, pair)
    assert (tmp_path / "em_on_lm_nonrigid.tif").exists()
    written = ex.write_nonrigid_files(tmp_path, field, CROP_ORIGIN_UM, pair, images=False)
    assert not (tmp_path / "em_on_lm_nonrigid.tif").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)


def test_lm_position_tif_holds_where_each_em_pixel_centre_lands(wavy):
    path = wavy["out"] / "lm_position_um.tif"
    image, ppu = read_image(path)
    assert image.shape == (2, *EM_SHAPE) and image.dtype == np.float32
    assert ppu == pytest.approx(EM_PPU)
    assert tifffile.TiffFile(path).series[0].axes == "CYX"
    rc = np.array([[0, 0], [0, 159], [37, 101], [120, 5], [159, 159]])
    centres = np.stack([rc[:, 1] + 0.5, rc[:, 0] + 0.5], axis=1) / EM_PPU  # (x, y) um
    expected = wavy["raw"].apply(centres)
    got = image[:, rc[:, 0], rc[:, 1]].T
    np.testing.assert_allclose(got, expected, atol=5e-6)  # float32 of values below 20 um
    # the non-affine part is in it: the affine alone is 0.1 um or more off somewhere
    assert np.max(np.hypot(*(got - apply(wavy["raw"].affine, centres)).T)) > 0.1


# ---------------------------------------------------------------------------- ITK


def test_itk_displacement_field_round_trips_in_simpleitk(wavy):
    """SimpleITK maps an LM point (ITK: pixel i centred at i / p) to the EM point our field
    inverts it to, within ITK_BOUND_UM; our field maps that EM point back onto the LM point;
    at the nodes (the LM pixel centres here) to the inversion's 1e-6 um."""
    sitk = pytest.importorskip("SimpleITK")
    out, raw = wavy["out"], wavy["raw"]
    image = sitk.ReadImage(str(out / "displacement_itk.mha"))
    assert image.GetNumberOfComponentsPerPixel() == 2
    assert image.GetPixelID() == sitk.sitkVectorFloat64
    spacing = image.GetSpacing()[0]
    assert spacing == pytest.approx(1 / LM_PPU) and spacing <= ex.ITK_FIELD_SPACING_UM
    # the grid covers the whole LM image (pixel centres 0 .. (n - 1) / p in ITK um)
    first = np.array(image.GetOrigin())
    last = first + spacing * (np.array(image.GetSize()) - 1)
    assert np.all(first <= -H_LM + 1e-12)
    assert np.all(last >= (np.array(LM_SHAPE[::-1]) - 0.5) / LM_PPU - 1e-12)
    tx = itk_transform(sitk, out / "displacement_itk.mha")

    em_xy = np.random.default_rng(2).uniform(0.5, 7.5, (200, 2))
    lm_xy = raw.apply(em_xy)  # LM points whose inverse is known: em_xy
    got = itk_map(tx, lm_xy - H_LM) + H_EM
    error = np.hypot(*(got - em_xy).T)
    assert error.max() < ITK_BOUND_UM
    assert np.hypot(*(raw.apply(got) - lm_xy).T).max() < ITK_BOUND_UM
    # the non-affine part matters at this bound: the affine inverse is far off
    affine_only = apply(np.linalg.inv(raw.affine), lm_xy)
    assert np.hypot(*(affine_only - em_xy).T).max() > 100 * ITK_BOUND_UM

    # at LM pixel centres over the EM footprint (nodes): exact up to the inversion
    cols, rows = np.meshgrid(np.arange(56, 106, 5), np.arange(56, 106, 5))
    centres = (np.stack([cols.ravel(), rows.ravel()], axis=1) + 0.5) / LM_PPU
    truth = inverse(raw, centres)
    inside = np.all((truth > 0.5) & (truth < 7.5), axis=1)
    assert inside.sum() >= 30
    centres, truth = centres[inside], truth[inside]
    got = itk_map(tx, centres - H_LM) + H_EM
    np.testing.assert_allclose(got, truth, atol=1e-5)

    # far from the EM (LM corners): the field's own continuation, still its inverse
    corners = np.array([[0.3, 0.3], [21.5, 19.5]])
    got = itk_map(tx, corners - H_LM) + H_EM
    np.testing.assert_allclose(raw.apply(got), corners, atol=1e-5)
    # and continuous: neighbouring nodes across the whole LM never jump
    field = sitk.GetArrayFromImage(image)
    steps = np.abs(np.diff(field, axis=0)).max(), np.abs(np.diff(field, axis=1)).max()
    assert max(steps) < 0.05


def test_itk_displacement_field_of_an_affine_matches_transform_tfm(tmp_path):
    """With a purely affine field, displacement_itk.mha and transform.tfm map every point
    of the LM image alike in SimpleITK (same physical conventions)."""
    sitk = pytest.importorskip("SimpleITK")
    field = DeformationField.from_mapping(lambda p: apply(CROP, p), EM_FIELD_UM, 0.25, 1.0)
    pair = make_pair(smooth_texture(0, EM_SHAPE), smooth_texture(1, LM_SHAPE))
    ex.write_nonrigid_files(tmp_path, field, CROP_ORIGIN_UM, pair, images=False)
    grid = ex.grid_record(EM_PPU, LM_PPU, EM_SHAPE, LM_SHAPE)
    ex.write_exchange_files(tmp_path, ex.raw_frame_matrix(CROP, CROP_ORIGIN_UM), grid, None)
    affine = sitk.ReadTransform(str(tmp_path / "transform.tfm"))
    displacement = itk_transform(sitk, tmp_path / "displacement_itk.mha")
    # ITK um over the LM image (its outer edges are at -H_LM and size / p - H_LM)
    far_edge = np.array(LM_SHAPE[::-1]) / LM_PPU - H_LM
    itk_lm = np.random.default_rng(3).uniform(-H_LM, far_edge, (300, 2))
    itk_lm = np.vstack([itk_lm, [[-H_LM, -H_LM], far_edge]])
    np.testing.assert_allclose(itk_map(displacement, itk_lm), itk_map(affine, itk_lm), atol=1e-8)


# ------------------------------------------------------------------------- BigWarp


def test_bigwarp_grid_parses_and_maps_through_the_field(wavy):
    out, raw = wavy["out"], wavy["raw"]
    path = out / "bigwarp_nonrigid_landmarks.csv"
    assert path.read_text().startswith('"grid1","true",')
    table = read_bigwarp_landmarks(path, EM_PPU, LM_PPU)
    em = table[["em_x_um", "em_y_um"]].to_numpy()
    lm = table[["lm_x_um", "lm_y_um"]].to_numpy()
    np.testing.assert_allclose(lm, raw.apply(em), atol=1e-9)
    # a regular n x n grid from the first to the last EM pixel centre
    n = int(round(np.sqrt(len(em))))
    assert n >= 5 and n * n == len(em)
    axis = (np.linspace(0, EM_SHAPE[1] - 1, n) + 0.5) / EM_PPU
    np.testing.assert_allclose(np.unique(em[:, 0]), axis, atol=1e-9)
    np.testing.assert_allclose(np.unique(em[:, 1]), axis, atol=1e-9)
    # a thin-plate spline through it reproduces the field over the EM as recorded
    record = read_json(out / "deformation.json")["bigwarp"]
    assert record["tps_max_error_um"] <= ex.BIGWARP_TPS_TOL_UM
    tps = RBFInterpolator(em, lm, kernel="thin_plate_spline", degree=1)
    check = np.random.default_rng(5).uniform(0.1, 7.9, (400, 2))
    error = np.hypot(*(tps(check) - raw.apply(check)).T)
    assert error.max() < 2 * ex.BIGWARP_TPS_TOL_UM
    # the affine fit of the same points does not (0.3 um sinusoid)
    assert np.hypot(*(apply(raw.affine, check) - raw.apply(check)).T).max() > 0.2


# -------------------------------------------------------------------------- images


def test_em_on_lm_nonrigid_lands_on_the_lm(tmp_path):
    """The LM is the EM texture warped through a known field (0.5 um sinusoid) by
    clemalign.nonrigid.warp_with_field; the export resampled through the same field lands
    on it, the affine part alone does not (negative control)."""
    field = wavy_field(0.5)
    raw = raw_of(field)
    em = smooth_texture(6, EM_SHAPE)
    lm = warp_with_field(em, EM_PPU, raw, LM_SHAPE, LM_PPU, order=3)
    pair = make_pair(em, lm)
    ex.write_nonrigid_files(tmp_path, field, CROP_ORIGIN_UM, pair)
    image, ppu = read_image(tmp_path / "em_on_lm_nonrigid.tif")
    assert ppu == pytest.approx(LM_PPU) and image.shape == LM_SHAPE
    assert image.dtype == np.float32
    overlap = np.isfinite(image) & np.isfinite(lm)
    assert 0.1 < overlap.mean() < 0.9  # the EM covers part of the LM
    assert np.isfinite(image).sum() == pytest.approx(np.isfinite(lm).sum(), rel=0.05)
    assert np.mean(np.abs(image[overlap] - lm[overlap])) < MAD_BOUND
    affine_only = warp_image(em, EM_PPU, raw.affine, LM_SHAPE, LM_PPU)
    inside = np.isfinite(affine_only) & np.isfinite(lm)
    assert np.mean(np.abs(affine_only[inside] - lm[inside])) > 5 * MAD_BOUND
