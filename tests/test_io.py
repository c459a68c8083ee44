import numpy as np
import pandas as pd
import pytest
import tifffile

from clemalign.errors import ClemalignError
from clemalign.io import read_image, read_landmarks, read_pixel_size, write_landmarks, write_tiff


@pytest.mark.parametrize(
    "image",
    [
        np.arange(35 * 20, dtype=np.uint8).reshape(35, 20),
        np.random.default_rng(0).random((12, 17)).astype(np.float32),
        np.random.default_rng(1).integers(0, 255, (10, 14, 3), dtype=np.uint8),
        np.arange(30, dtype=np.uint16).reshape(5, 6),
    ],
    ids=["uint8", "float32", "rgb", "uint16"],
)
@pytest.mark.parametrize("px_per_um", [582.24, 14.52, 7.588, 0.5])
def test_tiff_round_trip_keeps_pixel_size(tmp_path, image, px_per_um):
    path = tmp_path / "img.tif"
    write_tiff(path, image, px_per_um)
    back, ppu = read_image(path)
    np.testing.assert_array_equal(back, image)
    assert ppu == pytest.approx(px_per_um, rel=1e-6)


def test_tiff_is_imagej_in_micrometres(tmp_path):
    write_tiff(tmp_path / "a.tif", np.zeros((4, 4), np.uint8), 25.0)
    with tifffile.TiffFile(tmp_path / "a.tif") as tif:
        assert tif.is_imagej
        assert tif.imagej_metadata["unit"] == "um"


def test_pixel_size_from_centimetre_tiff_and_none(tmp_path):
    tifffile.imwrite(
        tmp_path / "cm.tif",
        np.zeros((4, 4), np.uint8),
        resolution=(1e4 * 20.0, 1e4 * 20.0),
        resolutionunit="CENTIMETER",
    )
    assert read_pixel_size(tmp_path / "cm.tif") == pytest.approx(20.0)
    tifffile.imwrite(tmp_path / "none.tif", np.zeros((4, 4), np.uint8))
    assert read_pixel_size(tmp_path / "none.tif") is None


def test_write_tiff_rejects_bad_pixel_size(tmp_path):
    with pytest.raises(ValueError, match="positive"):
        write_tiff(tmp_path / "x.tif", np.zeros((3, 3), np.uint8), -1.0)


def test_landmark_round_trip_and_errors(tmp_path):
    table = pd.DataFrame(
        {
            "name": ["a", "b"],
            "em_x_um": [1.0, 2.0],
            "em_y_um": [3.0, 4.0],
            "lm_x_um": [5.0, 6.0],
            "lm_y_um": [7.0, 8.0],
        }
    )
    write_landmarks(tmp_path / "l.csv", table)
    pd.testing.assert_frame_equal(read_landmarks(tmp_path / "l.csv"), table)
    table.drop(columns="lm_y_um").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ClemalignError, match="lm_y_um"):
        read_landmarks(tmp_path / "bad.csv")
