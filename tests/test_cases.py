"""The case sheet: optional columns, and errors that name the row and the file."""

from __future__ import annotations

import numpy as np
import pytest

from clemalign.cases import read_case_sheet
from clemalign.errors import CaseError, ConfigError
from clemalign.io import read_mask, write_tiff


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


def test_a_missing_mask_file_names_the_case_and_the_column(tmp_path):
    with pytest.raises(ConfigError, match="beads1.*em_mask.*not found"):
        read_case_sheet(_sheet(tmp_path, "\tem_mask", "\tnowhere.tif"))


def test_a_mask_of_the_wrong_size_names_the_case_and_the_file(tmp_path):
    path = tmp_path / "mask.tif"
    write_tiff(path, np.ones((10, 12), np.uint8), 1.0)
    assert read_mask(path, (10, 12), "beads1", "em").all()
    with pytest.raises(CaseError, match=r"beads1.*em_mask has shape \(10, 12\).*mask.tif"):
        read_mask(path, (20, 12), "beads1", "em")
