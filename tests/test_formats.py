"""Exchange formats: ITK, BigWarp, ec-CLEM, napari, and the landmark dispatcher."""

import csv
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from clemalign.errors import ClemalignError
from clemalign.formats import (
    FormatError,
    landmark_format,
    read_bigwarp_landmarks,
    read_ecclem_landmarks,
    read_ecclem_transform,
    read_itk_transform,
    read_landmarks_any,
    read_napari_landmarks,
    read_napari_points,
    write_bigwarp_landmarks,
    write_ecclem_transform,
    write_itk_transform,
)
from clemalign.io import LANDMARK_COLUMNS, write_landmarks
from clemalign.transforms import affine_matrix, apply

#: EM (moving) and LM (fixed) pixel sizes, px/um: 20 nm vs 200 nm, and odd ones.
PIXEL_SIZES = [(50.0, 5.0), (7.3, 0.9)]


@pytest.fixture
def mirrored():
    """A mirrored, anisotropic, sheared affine (EM um -> LM um)."""
    return affine_matrix(23.0, (1.3, 0.7), 0.15, (4.0, -2.5), mirror=True, center_um=(3.0, 5.0))


@pytest.fixture
def landmarks():
    rng = np.random.default_rng(3)
    em = rng.uniform(0, 30, (5, 2))
    lm = rng.uniform(0, 90, (5, 2))
    return pd.DataFrame(
        {
            "name": [f"L{i}" for i in range(5)],
            "em_x_um": em[:, 0],
            "em_y_um": em[:, 1],
            "lm_x_um": lm[:, 0],
            "lm_y_um": lm[:, 1],
        }
    )


def _itk_expected(matrix, lm_itk, em_ppu, lm_ppu):
    """ITK moving point of an ITK fixed point by our convention (origin 0 in ITK)."""
    return apply(np.linalg.inv(matrix), lm_itk + 0.5 / lm_ppu) - 0.5 / em_ppu


# ------------------------------------------------------------------------------ ITK


@pytest.mark.parametrize(("em_ppu", "lm_ppu"), PIXEL_SIZES)
def test_itk_file_maps_points_like_simpleitk(tmp_path, mirrored, em_ppu, lm_ppu):
    sitk = pytest.importorskip("SimpleITK")
    path = tmp_path / "em_to_lm.tfm"
    write_itk_transform(path, mirrored, em_ppu, lm_ppu)
    tx = sitk.ReadTransform(str(path))
    lm_itk = np.random.default_rng(0).uniform(-5, 60, (20, 2))
    got = np.array([tx.TransformPoint(tuple(map(float, p))) for p in lm_itk])
    np.testing.assert_allclose(got, _itk_expected(mirrored, lm_itk, em_ppu, lm_ppu), atol=1e-9)


@pytest.mark.parametrize(("em_ppu", "lm_ppu"), PIXEL_SIZES)
def test_itk_half_pixel_convention_with_itk_images(tmp_path, mirrored, em_ppu, lm_ppu):
    """A pixel centre mapped by us lands where ITK's image geometry puts it."""
    sitk = pytest.importorskip("SimpleITK")
    path = tmp_path / "t.txt"
    write_itk_transform(path, mirrored, em_ppu, lm_ppu)
    tx = sitk.ReadTransform(str(path))
    em_img, lm_img = sitk.Image(40, 30, sitk.sitkUInt8), sitk.Image(40, 30, sitk.sitkUInt8)
    em_img.SetSpacing((1 / em_ppu, 1 / em_ppu))
    lm_img.SetSpacing((1 / lm_ppu, 1 / lm_ppu))
    em_centre = np.array([[7.0, 11.0]])  # (col, row) of an EM pixel
    lm_um = apply(mirrored, (em_centre + 0.5) / em_ppu)[0]
    lm_index = lm_um * lm_ppu - 0.5  # continuous (col, row) in the LM image
    lm_phys = lm_img.TransformContinuousIndexToPhysicalPoint(tuple(map(float, lm_index)))
    em_index = em_img.TransformPhysicalPointToContinuousIndex(tx.TransformPoint(lm_phys))
    np.testing.assert_allclose(em_index, em_centre[0], atol=1e-9)


@pytest.mark.parametrize(("em_ppu", "lm_ppu"), PIXEL_SIZES)
def test_itk_read_gives_back_the_matrix(tmp_path, mirrored, em_ppu, lm_ppu):
    path = tmp_path / "t.tfm"
    write_itk_transform(path, mirrored, em_ppu, lm_ppu)
    np.testing.assert_allclose(read_itk_transform(path, em_ppu, lm_ppu), mirrored, atol=1e-12)
    text = path.read_text()
    assert text.startswith("#Insight Transform File V1.0\n")
    assert "Transform: AffineTransform_double_2_2" in text
    assert "FixedParameters: 0 0" in text
    assert "ITK origin 0" in text  # the convention is stated in the file


def test_itk_read_honours_a_nonzero_centre_written_by_hand(tmp_path):
    linear = np.array([[0.9, -0.2], [0.3, -1.1]])
    t, c = np.array([1.5, -0.5]), np.array([12.0, -4.0])
    path = tmp_path / "centred.tfm"
    path.write_text(
        "#Insight Transform File V1.0\n#Transform 0\n"
        "Transform: AffineTransform_double_2_2\n"
        f"Parameters: {' '.join(repr(float(v)) for v in [*linear.ravel(), *t])}\n"
        f"FixedParameters: {float(c[0])!r} {float(c[1])!r}\n"
    )
    em_ppu, lm_ppu = 40.0, 4.0
    ours = read_itk_transform(path, em_ppu, lm_ppu)
    lm_itk = np.array([[0.0, 0.0], [10.0, 3.0], [-2.0, 7.5]])
    itk_moving = lm_itk @ linear.T + t + c - linear @ c  # y = A (x - c) + c + t
    np.testing.assert_allclose(_itk_expected(ours, lm_itk, em_ppu, lm_ppu), itk_moving, atol=1e-12)


def test_itk_read_honours_a_centre_set_by_simpleitk(tmp_path, mirrored):
    sitk = pytest.importorskip("SimpleITK")
    tx = sitk.AffineTransform(2)
    tx.SetMatrix((0.8, 0.25, -0.4, 1.2))
    tx.SetTranslation((3.0, -1.0))
    tx.SetCenter((20.0, 35.0))
    path = tmp_path / "sitk.tfm"
    sitk.WriteTransform(tx, str(path))
    ours = read_itk_transform(path, 50.0, 5.0)
    lm_itk = np.random.default_rng(1).uniform(0, 50, (10, 2))
    got = np.array([tx.TransformPoint(tuple(map(float, p))) for p in lm_itk])
    np.testing.assert_allclose(_itk_expected(ours, lm_itk, 50.0, 5.0), got, atol=1e-9)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("Transform: AffineTransform_double_2_2\nParameters: 1 0 0 1 0\n", "6 Parameters"),
        ("Transform: AffineTransform_double_2_2\nParameters: 1 0 0 x 0 0\n", "numbers"),
        ("Transform: AffineTransform_double_3_3\nParameters: 1 0 0 1 0 0\n", "not a 2D"),
        ("Transform: AffineTransform_double_2_2\nFixedParameters: 0 0\n", "no 'Parameters"),
        ("Transform: AffineTransform_double_2_2\nParameters: 0 0 0 0 1 1\n", "invertible"),
        ("Parameters: 1 0 0 1 0 0\n", "before any"),
        ("just some text\n", "not 'Key: values'"),
        (
            "Transform: AffineTransform_double_2_2\nParameters: 1 0 0 1 0 0\n"
            "Transform: AffineTransform_double_2_2\nParameters: 1 0 0 1 0 0\n",
            "found 2",
        ),
    ],
)
def test_itk_malformed_files_name_the_file(tmp_path, body, words):
    path = tmp_path / "bad.tfm"
    path.write_text("#Insight Transform File V1.0\n#Transform 0\n" + body)
    with pytest.raises(FormatError, match=words) as info:
        read_itk_transform(path, 10.0, 1.0)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ClemalignError)


def test_itk_composite_with_one_affine_is_read(tmp_path):
    path = tmp_path / "composite.tfm"
    path.write_text(
        "#Insight Transform File V1.0\n#Transform 0\nTransform: CompositeTransform_double_2_2\n"
        "#Transform 1\nTransform: AffineTransform_double_2_2\n"
        "Parameters: 2 0 0 2 1 1\nFixedParameters: 0 0\n"
    )
    ours = read_itk_transform(path, 1.0, 1.0)
    np.testing.assert_allclose(ours[:2, :2], np.eye(2) / 2, atol=1e-15)


def test_itk_writer_refuses_a_suffix_itk_cannot_read(tmp_path, mirrored):
    with pytest.raises(ValueError, match=r"\.tfm or \.txt"):
        write_itk_transform(tmp_path / "t.csv", mirrored, 1.0, 1.0)


# -------------------------------------------------------------------------- BigWarp


def test_bigwarp_round_trip_is_identical(tmp_path, landmarks):
    path = tmp_path / "bw.csv"
    write_bigwarp_landmarks(path, landmarks, 50.0, 5.0)
    back = read_bigwarp_landmarks(path, 50.0, 5.0)
    assert list(back.columns) == LANDMARK_COLUMNS
    assert back["name"].tolist() == landmarks["name"].tolist()
    np.testing.assert_allclose(
        back[LANDMARK_COLUMNS[1:]].to_numpy(float),
        landmarks[LANDMARK_COLUMNS[1:]].to_numpy(float),
        rtol=0,
        atol=1e-12,
    )


def test_bigwarp_quotes_every_field_and_shifts_half_a_pixel(tmp_path):
    em_ppu, lm_ppu = 50.0, 5.0
    table = pd.DataFrame(  # pixel centres: EM (col 3, row 4), LM (col 10, row 2)
        {
            "name": ["Pt-0"],
            "em_x_um": [3.5 / em_ppu],
            "em_y_um": [4.5 / em_ppu],
            "lm_x_um": [10.5 / lm_ppu],
            "lm_y_um": [2.5 / lm_ppu],
        }
    )
    path = tmp_path / "bw.csv"
    write_bigwarp_landmarks(path, table, em_ppu, lm_ppu)
    line = path.read_text().splitlines()[0]
    fields = line.split(",")
    assert len(fields) == 6
    assert all(f.startswith('"') and f.endswith('"') for f in fields)
    assert fields[:2] == ['"Pt-0"', '"true"']
    values = [float(f.strip('"')) for f in fields[2:]]
    expected = [3 / em_ppu, 4 / em_ppu, 10 / lm_ppu, 2 / lm_ppu]  # centre of pixel i at i/p
    np.testing.assert_allclose(values, expected, atol=1e-15)


def _write_rows(path, rows):
    with open(path, "w", newline="") as handle:
        csv.writer(handle, quoting=csv.QUOTE_ALL).writerows(rows)


def test_bigwarp_3d_file_on_one_plane_and_inactive_rows_dropped(tmp_path):
    path = tmp_path / "bw3d.csv"
    _write_rows(
        path,
        [
            ["Pt-0", "true", "1.0", "2.0", "0.0", "10.0", "20.0", "5.0"],
            ["Pt-1", "false", "Infinity", "Infinity", "Infinity", "1.0", "1.0", "5.0"],
            ["Pt-2", "TRUE", "3.0", "4.0E-1", "0.0", "30.0", "40.0", "5.0"],
        ],
    )
    back = read_bigwarp_landmarks(path, 2.0, 0.5)
    assert back["name"].tolist() == ["Pt-0", "Pt-2"]
    np.testing.assert_allclose(back["em_y_um"], [2.0 + 0.25, 0.4 + 0.25])
    np.testing.assert_allclose(back["lm_x_um"], [10.0 + 1.0, 30.0 + 1.0])


@pytest.mark.parametrize(
    ("rows", "words"),
    [
        ([["Pt-0", "true", "1", "2", "3", "4", "5"]], "7 fields"),
        (
            [["Pt-0", "true", "1", "2", "3", "4"], ["Pt-1", "true", "1", "2", "3", "4", "5", "6"]],
            "row 2 has 8",
        ),
        ([["Pt-0", "yes", "1", "2", "3", "4"]], "true or false"),
        ([["Pt-0", "true", "1", "a", "3", "4"]], "numbers"),
        ([["Pt-0", "false", "1", "2", "3", "4"]], "no active"),
        ([["Pt-0", "true", "1", "2", "Infinity", "Infinity"]], "lack a moving or a fixed"),
        (
            [
                ["Pt-0", "true", "1", "2", "0", "3", "4", "0"],
                ["Pt-1", "true", "1", "2", "1", "3", "4", "0"],
            ],
            "several z planes",
        ),
    ],
)
def test_bigwarp_malformed_files_name_the_file(tmp_path, rows, words):
    path = tmp_path / "bad.csv"
    _write_rows(path, rows)
    with pytest.raises(FormatError, match=words) as info:
        read_bigwarp_landmarks(path, 1.0, 1.0)
    assert str(path) in str(info.value)


def test_bigwarp_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("\n")
    with pytest.raises(FormatError, match="empty"):
        read_bigwarp_landmarks(path, 1.0, 1.0)


# -------------------------------------------------------------------------- ec-CLEM


def test_ecclem_transform_round_trip_is_exact(tmp_path, mirrored):
    path = tmp_path / "em_transfo.xml"
    write_ecclem_transform(path, mirrored, 50.0, 5.0, (300, 400), (120, 160))
    np.testing.assert_array_equal(read_ecclem_transform(path), mirrored)


def test_ecclem_transform_xml_layout(tmp_path, mirrored):
    path = tmp_path / "em_transfo.xml"
    write_ecclem_transform(path, mirrored, 50.0, 5.0, (300, 400), (120, 160))
    root = ET.parse(path).getroot()
    assert root.tag == "root"
    m = root.find("MatrixTransformation").attrib
    full = np.array([[float(m[f"m{i}{j}"]) for j in range(4)] for i in range(4)])
    np.testing.assert_array_equal(full[:2, :2], mirrored[:2, :2])
    np.testing.assert_array_equal(full[:2, 3], mirrored[:2, 2])
    np.testing.assert_array_equal(full[2:], [[0, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(full[:2, 2], [0, 0])
    sizes = {s.get("type"): s for s in root.iter("sequenceSize")}
    dims = {d.get("name"): d for d in sizes["source"].findall("dimensionSize")}
    assert dims["X"].text == "400" and dims["Y"].text == "300"
    assert float(dims["X"].get("pixelSize")) == pytest.approx(1 / 50.0)
    target = {d.get("name"): d for d in sizes["target"].findall("dimensionSize")}
    assert target["X"].text == "160" and float(target["Y"].get("pixelSize")) == 0.2


def test_ecclem_reads_a_3x3_matrix(tmp_path):
    path = tmp_path / "t2d.xml"
    attrs = "m00='2' m01='0' m02='1.5' m10='0' m11='-2' m12='3' m20='0' m21='0' m22='1'"
    path.write_text(f"<?xml version='1.0'?><root><MatrixTransformation {attrs}/></root>")
    np.testing.assert_array_equal(read_ecclem_transform(path), [[2, 0, 1.5], [0, -2, 3], [0, 0, 1]])


def _matrix_xml(entries: dict[str, str]) -> str:
    full = {f"m{i}{j}": str(float(i == j)) for i in range(4) for j in range(4)}
    full.update(entries)
    return " ".join(f"{k}='{v}'" for k, v in full.items())


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("not xml at all", "not a readable XML"),
        ("<root><something/></root>", "no <MatrixTransformation>"),
        (f"<root><MatrixTransformation {_matrix_xml({'m02': '0.5'})}/></root>", "mixes z"),
        (f"<root><MatrixTransformation {_matrix_xml({'m11': 'abc'})}/></root>", "numbers"),
        ("<root><MatrixTransformation m00='1' m33='1'/></root>", "lacks attributes"),
        (f"<root><MatrixTransformation {_matrix_xml({'m11': '0'})}/></root>", "invertible"),
        (
            f"<root><seq><MatrixTransformation {_matrix_xml({})}/></seq></root>",
            "ec-CLEM 1",
        ),
    ],
)
def test_ecclem_malformed_files_name_the_file(tmp_path, text, words):
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(FormatError, match=words) as info:
        read_ecclem_transform(path)
    assert str(path) in str(info.value)


def _ecclem_landmark_xml(source, target) -> str:
    def dataset(kind, points):
        body = "".join(
            f"<point id='{i}'>"
            + "".join(f"<coordinate dimension='{d}'>{v}</coordinate>" for d, v in enumerate(p))
            + "</point>"
            for i, p in enumerate(points)
        )
        dim = len(points[0]) if points else 2
        attrs = f"type='{kind}' n='{len(points)}' dimension='{dim}' pointType='FIDUCIAL'"
        return f"<dataset {attrs}>{body}</dataset>"

    return (
        "<?xml version='1.0'?><root><transformation type='AFFINE' noiseModel='ISOTROPIC'>"
        + dataset("source", source)
        + dataset("target", target)
        + "</transformation></root>"
    )


def test_ecclem_landmarks_read_pairs_in_um(tmp_path):
    path = tmp_path / "schema.xml"
    source = [[1.0, 2.0, 0.0], [3.0, 4.0, 0.0], [5.0, 1.0, 0.0]]
    target = [[10.0, 20.0, 2.0], [30.0, 40.0, 2.0], [50.0, 10.0, 2.0]]
    path.write_text(_ecclem_landmark_xml(source, target))
    table = read_ecclem_landmarks(path)
    assert table["name"].tolist() == ["P0", "P1", "P2"]
    np.testing.assert_array_equal(table[["em_x_um", "em_y_um"]], np.array(source)[:, :2])
    np.testing.assert_array_equal(table[["lm_x_um", "lm_y_um"]], np.array(target)[:, :2])
    swapped = read_ecclem_landmarks(path, em_is_source=False)
    np.testing.assert_array_equal(swapped[["em_x_um", "em_y_um"]], np.array(target)[:, :2])


def test_ecclem_landmarks_malformed(tmp_path, mirrored):
    path = tmp_path / "uneven.xml"
    path.write_text(_ecclem_landmark_xml([[1.0, 2.0]], [[1.0, 2.0], [3.0, 4.0]]))
    with pytest.raises(FormatError, match="1 and 2 points") as info:
        read_ecclem_landmarks(path)
    assert str(path) in str(info.value)
    transform_only = tmp_path / "transfo.xml"
    write_ecclem_transform(transform_only, mirrored, 1.0, 1.0, (10, 10), (10, 10))
    with pytest.raises(FormatError, match="read_ecclem_transform"):
        read_ecclem_landmarks(transform_only)


# --------------------------------------------------------------------------- napari


def _napari_csv(path, rows_cols, extra_axes=()):
    """Write points as napari's ``layer.save`` does: index, axis-0.., floats."""
    data = np.asarray(rows_cols, dtype=float)
    if extra_axes:
        data = np.hstack([np.array([extra_axes] * len(data), dtype=float), data])
    header = ["index"] + [f"axis-{k}" for k in range(data.shape[1])]
    lines = [",".join(header)] + [
        ",".join([str(i)] + [repr(float(v)) for v in row]) for i, row in enumerate(data)
    ]
    path.write_text("\n".join(lines) + "\n")


def test_napari_points_are_pixel_centres_in_um(tmp_path):
    path = tmp_path / "pts.csv"
    _napari_csv(path, [[4.0, 3.0], [0.0, 0.0]])  # (row, col)
    xy = read_napari_points(path, 2.0)
    np.testing.assert_allclose(xy, [[3.5 / 2, 4.5 / 2], [0.25, 0.25]])


def test_napari_3d_on_one_plane_and_on_several(tmp_path):
    path = tmp_path / "pts3d.csv"
    _napari_csv(path, [[4.0, 3.0], [1.0, 2.0]], extra_axes=(7.0,))
    np.testing.assert_allclose(read_napari_points(path, 1.0), [[3.5, 4.5], [2.5, 1.5]])
    path.write_text("index,axis-0,axis-1,axis-2\n0,1.0,4.0,3.0\n1,2.0,1.0,2.0\n")
    with pytest.raises(FormatError, match="several planes"):
        read_napari_points(path, 1.0)


@pytest.mark.parametrize(
    "text",
    ["x,y\n1,2\n", "index,axis-0,axis-1\n0,1.0,abc\n", "index,axis-0,axis-1\n", "index,axis-1\n"],
)
def test_napari_malformed_files_name_the_file(tmp_path, text):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(FormatError) as info:
        read_napari_points(path, 1.0)
    assert str(path) in str(info.value)


def test_napari_landmarks_pair_by_index(tmp_path):
    em, lm = tmp_path / "em.csv", tmp_path / "lm.csv"
    _napari_csv(em, [[1.0, 2.0], [3.0, 4.0]])
    lm.write_text("index,axis-0,axis-1\n1,30.0,40.0\n0,10.0,20.0\n")  # rows out of order
    table = read_napari_landmarks(em, lm, 10.0, 1.0)
    assert table["name"].tolist() == ["P0", "P1"]
    np.testing.assert_allclose(table["em_x_um"], [0.25, 0.45])
    np.testing.assert_allclose(table["lm_x_um"], [20.5, 40.5])
    _napari_csv(lm, [[1.0, 2.0]])
    with pytest.raises(FormatError) as info:
        read_napari_landmarks(em, lm, 10.0, 1.0)
    assert str(em) in str(info.value) and str(lm) in str(info.value)


# ----------------------------------------------------------------------- dispatcher


def test_dispatcher_reads_each_format(tmp_path, landmarks):
    ours = tmp_path / "ours.csv"
    write_landmarks(ours, landmarks)
    bigwarp = tmp_path / "bigwarp.csv"
    write_bigwarp_landmarks(bigwarp, landmarks, 50.0, 5.0)
    ecclem = tmp_path / "ecclem.xml"
    ecclem.write_text(_ecclem_landmark_xml([[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]))
    assert [landmark_format(p) for p in (ours, bigwarp, ecclem)] == [
        "clemalign",
        "bigwarp",
        "ecclem",
    ]
    coords = landmarks[LANDMARK_COLUMNS[1:]].to_numpy(float)
    got = read_landmarks_any(ours)[LANDMARK_COLUMNS[1:]].to_numpy(float)
    np.testing.assert_allclose(got, coords, atol=1e-6)  # our CSV keeps 6 decimals
    got = read_landmarks_any(bigwarp, 50.0, 5.0)[LANDMARK_COLUMNS[1:]].to_numpy(float)
    np.testing.assert_allclose(got, coords, atol=1e-12)
    assert read_landmarks_any(ecclem)["lm_y_um"].tolist() == [6.0, 8.0]


def test_dispatcher_needs_pixel_sizes_for_bigwarp(tmp_path, landmarks):
    path = tmp_path / "bigwarp.csv"
    write_bigwarp_landmarks(path, landmarks, 50.0, 5.0)
    with pytest.raises(FormatError, match="pixel sizes") as info:
        read_landmarks_any(path, em_px_per_um=50.0)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a,b,c\n1,2,3\n", "unknown landmark format"),
        ("index,axis-0,axis-1\n0,1,2\n", "read_napari_landmarks"),
        ("   \n", "empty"),
    ],
)
def test_dispatcher_refuses_unknown_files_naming_them(tmp_path, text, words):
    path = tmp_path / "mystery.csv"
    path.write_text(text)
    with pytest.raises(FormatError, match=words) as info:
        read_landmarks_any(path, 1.0, 1.0)
    assert str(path) in str(info.value)


def test_dispatcher_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere"):
        read_landmarks_any(tmp_path / "nothere.csv")
