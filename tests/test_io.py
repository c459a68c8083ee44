import numpy as np
import pandas as pd
import pytest
import tifffile

from clemalign.errors import ClemalignError
from clemalign.io import (
    _zeiss_px_per_um,
    pixel_size_source,
    read_case_table,
    read_image,
    read_landmarks,
    read_pixel_size,
    write_landmarks,
    write_tiff,
)


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


FEI_INI = "[User]\nDate=01/02/2024\n[Scan]\nPixelWidth=4.5e-009\nPixelHeight=4.5e-009\n"
FEI, ZEISS, TAGS = "FEI Scan/PixelWidth", "Zeiss SEM ap_image_pixel_size", "ImageJ/resolution tags"
ZEISS_TEXT = "AP_IMAGE_PIXEL_SIZE\nImage Pixel Size = 2.5 nm\nDP_DETECTOR_CHANNEL\nSignal A = SE2\n"


def _write_tagged(path, *, ome=None, description=None, tags=(), px_per_cm=None):
    """A 4x4 TIFF with optional OME-XML pixel size (um), raw description, ASCII
    extra tags ``(code, text)`` and centimetre resolution tags."""
    kwargs = {"extratags": [(code, "s", 0, text, True) for code, text in tags]}
    if ome is not None:
        kwargs.update(ome=True, metadata={"PhysicalSizeX": ome, "PhysicalSizeXUnit": "um"})
    elif description is not None:
        kwargs.update(description=description, metadata=None)
    if px_per_cm is not None:
        kwargs.update(resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER")
    tifffile.imwrite(path, np.zeros((4, 4), np.uint8), **kwargs)


@pytest.mark.parametrize(
    "size, unit",
    [(0.05, "\u00b5m"), (50, "nm"), (500, "\u00c5"), (5e-5, "mm"), (5e-8, "m"), (0.05, None)],
    ids=["micro-sign-um", "nm", "angstrom", "mm", "m", "default-unit"],
)
def test_pixel_size_from_ome_tiff(tmp_path, size, unit):
    metadata = {"PhysicalSizeX": size, "PhysicalSizeY": size}
    if unit is not None:
        metadata.update(PhysicalSizeXUnit=unit, PhysicalSizeYUnit=unit)
    path = tmp_path / "ome.tif"
    tifffile.imwrite(path, np.zeros((6, 5), np.uint16), ome=True, metadata=metadata)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
    assert read_pixel_size(path) == pytest.approx(20.0)
    assert pixel_size_source(path) == (pytest.approx(20.0), "OME-XML PhysicalSizeX")


@pytest.mark.parametrize("code", [34682, 34680], ids=["FEI_HELIOS", "FEI_SFEG"])
def test_pixel_size_from_fei_sem_tag(tmp_path, code):
    path = tmp_path / "fei.tif"
    _write_tagged(path, tags=[(code, FEI_INI)])
    with tifffile.TiffFile(path) as tif:  # what read_pixel_size relies on
        assert tif.fei_metadata["Scan"]["PixelWidth"] == pytest.approx(4.5e-9)
    assert read_pixel_size(path) == pytest.approx(1 / 4.5e-3)  # 4.5 nm -> 222.2 px/um
    assert pixel_size_source(path)[1] == "FEI Scan/PixelWidth"
    _write_tagged(path, tags=[(code, "[EScan]\nPixelWidth=2e-8\n")])
    assert pixel_size_source(path) == (pytest.approx(50.0), "FEI EScan/PixelWidth")


@pytest.mark.parametrize(
    "line, px_per_um",
    [
        (b"Image Pixel Size = 2.5 nm", 400.0),
        (b"Image Pixel Size = 0.25 \xb5m", 4.0),  # micro sign as Zeiss writes it (cp1252)
        (b"Image Pixel Size = 0.25 um", 4.0),
        (b"Image Pixel Size = 500 pm", 2000.0),
        (b"Image Pixel Size = 5e-4 mm", 2.0),
    ],
    ids=["nm", "micro-sign-um", "um", "pm", "mm"],
)
def test_pixel_size_from_zeiss_sem_tag(tmp_path, line, px_per_um):
    path = tmp_path / "zeiss.tif"
    text = b"AP_IMAGE_PIXEL_SIZE\n" + line + b"\nDP_DETECTOR_CHANNEL\nSignal A = SE2\n"
    _write_tagged(path, tags=[(34118, text)])
    with tifffile.TiffFile(path) as tif:  # tifffile's read_cz_sem: (label, value, unit)
        label, value, unit = tif.sem_metadata["ap_image_pixel_size"]
        assert label == "Image Pixel Size" and isinstance(value, float | int)
    assert pixel_size_source(path) == (pytest.approx(px_per_um), "Zeiss SEM ap_image_pixel_size")


def test_zeiss_falls_back_to_ap_pixel_size_and_parser_checks_entries(tmp_path):
    path = tmp_path / "zeiss.tif"
    _write_tagged(path, tags=[(34118, "AP_PIXEL_SIZE\nPixel Size = 10 nm\n")])
    assert pixel_size_source(path) == (pytest.approx(100.0), "Zeiss SEM ap_pixel_size")
    assert _zeiss_px_per_um({"ap_image_pixel_size": ("Image Pixel Size", 2.5, "nm")}) == 400.0
    for entry in [("Image Pixel Size", 2.5), ("Image Pixel Size", "2.5nm", ""), "2.5 nm"]:
        assert _zeiss_px_per_um({"ap_image_pixel_size": entry}) is None
    assert _zeiss_px_per_um(None) is None


@pytest.mark.parametrize(
    "sources, expected",
    [
        (["ome", "fei", "zeiss", "cm"], (20.0, "OME-XML PhysicalSizeX")),
        (["fei", "zeiss", "cm"], (1 / 4.5e-3, "FEI Scan/PixelWidth")),
        (["zeiss", "cm"], (400.0, "Zeiss SEM ap_image_pixel_size")),
        (["cm"], (0.3, "ImageJ/resolution tags")),
        ([], (None, "none")),
    ],
    ids=["ome-first", "fei-second", "zeiss-third", "tags-last", "none"],
)
def test_pixel_size_source_precedence(tmp_path, sources, expected):
    path = tmp_path / "many.tif"
    tags = [(34682, FEI_INI)] if "fei" in sources else []
    tags += [(34118, ZEISS_TEXT)] if "zeiss" in sources else []
    _write_tagged(
        path,
        ome=0.05 if "ome" in sources else None,
        tags=tags,
        px_per_cm=3000.0 if "cm" in sources else None,  # 0.3 px/um
    )
    value, source = pixel_size_source(path)
    assert source == expected[1]
    assert value == (None if expected[0] is None else pytest.approx(expected[0]))
    assert read_pixel_size(path) == value


@pytest.mark.parametrize(
    "bad, fallback, expected",
    [
        ({"description": '<OME><Image><Pixels PhysicalSizeX="1"></Image></OME>'}, "fei", FEI),
        ({"description": '<OME><Image><Pixels PhysicalSizeX="abc"/></Image></OME>'}, "fei", FEI),
        ({"description": '<OME><Image><Pixels PhysicalSizeX="-2"/></Image></OME>'}, "cm", TAGS),
        ({"tags": [(34682, "[Scan]\nPixelWidth=n/a\n")]}, "zeiss", ZEISS),
        ({"tags": [(34682, "[Scan]\nPixelWidth=0\n")]}, "cm", TAGS),
        ({"tags": [(34682, b"\xff\xfe\x00garbage")]}, "cm", TAGS),
        ({"tags": [(34118, "AP_IMAGE_PIXEL_SIZE\nImage Pixel Size = 2.5 furlong\n")]}, "cm", TAGS),
        ({"tags": [(34118, "AP_IMAGE_PIXEL_SIZE\nImage Pixel Size = lots\n")]}, "cm", TAGS),
    ],
    ids=[
        "ome-not-xml",
        "ome-not-number",
        "ome-negative",
        "fei-not-number",
        "fei-zero",
        "fei-binary",
        "zeiss-bad-unit",
        "zeiss-not-number",
    ],
)
def test_malformed_metadata_falls_through_to_next_source(tmp_path, bad, fallback, expected):
    path = tmp_path / "bad.tif"
    tags = list(bad.get("tags", []))
    tags += [(34682, FEI_INI)] if fallback == "fei" else []
    tags += [(34118, ZEISS_TEXT)] if fallback == "zeiss" else []
    _write_tagged(
        path,
        description=bad.get("description"),
        tags=tags,
        px_per_cm=2e5 if fallback == "cm" else None,  # 20 px/um
    )
    value, source = pixel_size_source(path)
    assert source == expected
    assert value == pytest.approx({"fei": 1 / 4.5e-3, "zeiss": 400.0, "cm": 20.0}[fallback])


def test_metadata_reader_that_raises_falls_through(tmp_path, monkeypatch):
    path = tmp_path / "fei.tif"
    _write_tagged(path, tags=[(34682, FEI_INI)], px_per_cm=2e5)
    assert pixel_size_source(path)[1] == FEI

    def broken(self):
        raise ValueError("corrupt FEI block")

    monkeypatch.setattr(tifffile.TiffFile, "fei_metadata", property(broken))
    assert pixel_size_source(path) == (pytest.approx(20.0), TAGS)


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


def test_case_table_keeps_names_that_look_missing(tmp_path):
    """Cases named NA, nan or null stay names in the results tables; empty numbers are NaN."""
    table = pd.DataFrame(
        {
            "case": ["NA", "nan", "null", "tem01"],
            "source": ["raw"] * 4,
            "measure": ["mi"] * 4,
            "mae_um": [0.1, np.nan, 0.3, 0.4],
            "success": [True, False, True, True],
            "status": ["ok", "failed: x", "ok", "ok"],
        }
    )
    path = tmp_path / "errors.csv"
    table.to_csv(path, index=False)
    back = read_case_table(path)
    assert list(back["case"]) == ["NA", "nan", "null", "tem01"]
    assert back["mae_um"].dtype == float and np.isnan(back.loc[1, "mae_um"])
    assert back["success"].dtype == bool and list(back["status"]) == list(table["status"])
    assert pd.read_csv(path)["case"].isna().sum() == 3  # what a plain read_csv made of them
