"""The case sheet: optional columns, and errors that name the row and the file."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from clemalign.cases import read_case_sheet
from clemalign.errors import CaseError, ConfigError
from clemalign.io import read_mask, tiff_axes, write_tiff
from clemalign.preprocess import case_check, project_z


def _sheet(tmp_path, extra_header: str = "", extra: str = "") -> str:
    for name in ("em.tif", "lm.tif", "lm.csv"):
        (tmp_path / name).write_text("x")
    sheet = tmp_path / "cases.tsv"
    sheet.write_text(
        f"case\ttrack\tem\tlm\tlandmarks{extra_header}\n"
        f"beads1\tfiducial\tem.tif\tlm.tif\tlm.csv{extra}\n"
    )
    return str(sheet)


def test_mask_columns_are_optional_and_resolved_relative_to_the_sheet(tmp_path):
    (case,) = read_case_sheet(_sheet(tmp_path))
    assert case.em_mask is None and case.lm_mask is None
    (tmp_path / "bar.tif").write_text("x")
    (case,) = read_case_sheet(_sheet(tmp_path, "\tem_mask\tlm_mask", "\tbar.tif\t"))
    assert case.em_mask == str(tmp_path / "bar.tif") and case.lm_mask is None


def test_a_missing_mask_file_fails_its_case_in_the_check_not_the_sheet(tmp_path):
    """The sheet is read (one missing file must not stop the other cases); the case check
    fails the case, naming it, the column and the file."""
    (case,) = read_case_sheet(_sheet(tmp_path, "\tem_mask", "\tnowhere.tif"))
    assert case.em_mask == str(tmp_path / "nowhere.tif")
    record = case_check(case.as_dict(), 15, {"px_per_um": 14.52, "margin_um": 2.0}, {})
    assert record["status"].startswith("failed: ")
    assert "'beads1'" in record["status"] and "em_mask file is missing" in record["status"]
    assert "nowhere.tif" in record["status"]


def test_a_mask_of_the_wrong_size_names_the_case_and_the_file(tmp_path):
    path = tmp_path / "mask.tif"
    write_tiff(path, np.ones((10, 12), np.uint8), 1.0)
    assert read_mask(path, (10, 12), "beads1", "em").all()
    with pytest.raises(CaseError, match=r"beads1.*em_mask has shape \(10, 12\).*mask.tif"):
        read_mask(path, (20, 12), "beads1", "em")


def test_lm_z_is_max_by_default_a_slice_number_or_an_error(tmp_path):
    (case,) = read_case_sheet(_sheet(tmp_path))
    assert case.lm_z == "max"
    (case,) = read_case_sheet(_sheet(tmp_path, "\tlm_z", "\t3"))
    assert case.lm_z == 3
    with pytest.raises(ConfigError, match="beads1.*lm_z"):
        read_case_sheet(_sheet(tmp_path, "\tlm_z", "\tmiddle"))


def test_a_16_bit_z_stack_becomes_its_maximum_projection_or_a_slice(tmp_path):
    """A light-microscope z-stack (ImageJ hyperstack, uint16): each bead is in focus in
    a different plane; the maximum projection shows all of them, a slice one."""
    stack = np.full((5, 40, 50), 100, np.uint16)
    for z, (r, c) in enumerate([(5, 5), (10, 30), (20, 10), (30, 40), (35, 20)]):
        stack[z, r, c] = 4000 + z
    path = tmp_path / "lm_stack.tif"
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "ZYX"})
    assert tiff_axes(path) == "ZYX"
    projected = project_z(tifffile.imread(path), tiff_axes(path))
    assert projected.dtype == np.uint16 and projected.shape == (40, 50)
    assert (projected > 1000).sum() == 5
    plane = project_z(tifffile.imread(path), "ZYX", 2)
    assert plane[20, 10] == 4002 and (plane > 1000).sum() == 1
    # without axis letters a long first axis is a stack; colour stays colour
    assert project_z(stack, None).shape == (40, 50)
    assert project_z(np.zeros((40, 50, 3)), "YXS").shape == (40, 50, 3)
    with pytest.raises(ValueError, match="z slice 7"):
        project_z(stack, "ZYX", 7)


def test_crowded_synthetic_cases_are_named_and_numbered_from_their_names():
    from clemalign.cases import synthetic_cases, synthetic_number

    config = {"synthetic": {"analogy": {"n_cases": 1}, "fiducial": {"views": [{}], "n_crowded": 2}}}
    names = {c.name: c.track for c in synthetic_cases(config)}
    assert names == {
        "tem01": "analogy",
        "sem01": "fiducial",
        "crowd01": "fiducial",
        "crowd02": "fiducial",
    }
    assert synthetic_number("crowd02") == 1
    with pytest.raises(ValueError, match="crowdNN"):
        synthetic_number("crowd")
