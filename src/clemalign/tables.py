"""Tables as the paper prints them, written as CSV, Markdown and LaTeX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def _fmt(value: object, digits: int) -> str:
    if isinstance(value, float | np.floating):
        return "--" if not np.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def to_markdown(table: pd.DataFrame, digits: int = 1) -> str:
    """Markdown of a table with two-level columns (group, measure) and an index."""
    groups = [" ".join(str(c) for c in col if str(c)) for col in table.columns]
    head = "| " + " | ".join([str(table.index.name or "")] + groups) + " |"
    rule = "|" + "---|" * (len(groups) + 1)
    rows = [
        "| " + " | ".join([str(idx)] + [_fmt(v, digits) for v in row]) + " |"
        for idx, row in zip(table.index, table.itertuples(index=False), strict=True)
    ]
    return "\n".join([head, rule, *rows]) + "\n"


def to_latex(table: pd.DataFrame, caption: str, digits: int = 1) -> str:
    """A booktabs LaTeX table with grouped column headers (group over MAE/STD)."""
    top = table.columns.get_level_values(0)
    groups: list[tuple[str, int]] = []
    for name in top:
        if groups and groups[-1][0] == name:
            groups[-1] = (name, groups[-1][1] + 1)
        else:
            groups.append((name, 1))
    spec = "l" + "r" * len(table.columns)
    lines = [
        r"\begin{table}",
        r"\centering",
        rf"\caption{{{caption}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
    ]
    lines.append(
        " & ".join([""] + [rf"\multicolumn{{{n}}}{{c}}{{{g}}}" for g, n in groups]) + r" \\"
    )
    start = 2
    rules = []
    for _, n in groups:
        rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
        start += n
    lines.append(" ".join(rules))
    lines.append(
        " & ".join(
            [str(table.index.name or "")] + [str(c) for c in table.columns.get_level_values(1)]
        )
        + r" \\"
    )
    lines.append(r"\midrule")
    for idx, row in zip(table.index, table.itertuples(index=False), strict=True):
        lines.append(" & ".join([str(idx)] + [_fmt(v, digits) for v in row]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines).replace("_", r"\_") + "\n"


def write_table(
    table: pd.DataFrame,
    csv: str | Path,
    md: str | Path,
    tex: str | Path,
    caption: str,
    digits: int = 1,
    notes: list[str] | None = None,
) -> None:
    """Write one table in the three formats (CSV keeps full precision); ``notes`` (e.g.
    why a result is not trusted) follow the Markdown table and the LaTeX caption."""
    flat = table.copy()
    flat.columns = [" ".join(str(c) for c in col if str(c)) for col in table.columns]
    flat.to_csv(csv)
    text = f"{caption}\n\n" + to_markdown(table, digits)
    if notes:
        text += "\n" + "\n".join(f"- {note}" for note in notes) + "\n"
        caption = caption + " " + " ".join(notes)
    Path(md).write_text(text)
    Path(tex).write_text(to_latex(table, caption, digits))


def status_word(status: str) -> str:
    """``"ok"``, ``"uncertain"`` or ``"failed"`` from a status with its reason."""
    return status.split(":", 1)[0].strip()


def status_notes(long: pd.DataFrame, label) -> list[str]:
    """One line per result whose status is not ok: ``<label(row)>: <status>``; a case
    whose every result has the same such status (a case that failed its input check)
    gets one line, ``<case> (every column): <status>``."""
    notes, done = [], set()
    for row in long.itertuples(index=False):
        if row.status == "ok" or row.case in done:
            continue
        if (long.loc[long["case"] == row.case, "status"] == row.status).all():
            notes.append(f"{row.case} (every column): {row.status}")
            done.add(row.case)
        else:
            notes.append(f"{label(row)}: {row.status}")
    return notes


#: Methods of Table 1, in the paper's column order, with their column titles.
TABLE1_METHODS = {
    "algorithm1": "Our method (Algorithm 1)",
    "gaussian_baseline": "Method in [5] (Gaussian fit)",
    "robust": "Robust (beyond the paper)",
}


def table1(long: pd.DataFrame) -> pd.DataFrame:
    """Paper layout of Table 1 from the long table (case, method, mae_nm, std_nm...).

    Rows are cases; for each method two columns, MAE and STD in nm; a method whose
    status is not ok shows ``failed`` or ``uncertain`` instead of its MAE.
    """
    cols = pd.MultiIndex.from_tuples(
        [(title, m) for title in TABLE1_METHODS.values() for m in ("MAE", "STD")]
    )
    cases = list(dict.fromkeys(long["case"]))
    wide = pd.DataFrame(index=pd.Index(cases, name="case"), columns=cols, dtype=object)
    for row in long.itertuples(index=False):
        title = TABLE1_METHODS.get(row.method)
        if title is not None:
            ok = row.status == "ok"
            wide.loc[row.case, (title, "MAE")] = (
                float(row.mae_nm) if ok else status_word(row.status)
            )
            wide.loc[row.case, (title, "STD")] = float(row.std_nm) if ok else np.nan
    return wide


#: Sources of Table 2, in column order, with their titles.
TABLE2_SOURCES = {
    "sparse": "Proposed IA",
    "sparse_denoised": "Proposed IA, denoised confocal",
    "hertzmann": "Original IA",
    "raw": "TEM/confocal",
    "landmark": "Landmark",
}
#: Suffix of a measure refined by the non-rigid step (:data:`clemalign.routes.NONRIGID_SUFFIX`).
NONRIGID_SUFFIX = "+bspline"
#: Measures of Table 2, in column order, with their titles.
TABLE2_MEASURES = {
    "ssd": "SSD",
    "ssd+bspline": "SSD + B-spline",
    "wssd": "weighted SSD",
    "wssd+bspline": "weighted SSD + B-spline",
    "mi": "MI",
    "mi+bspline": "MI + B-spline",
    "fit": "fit",
}


def table2(long: pd.DataFrame) -> pd.DataFrame:
    """Paper layout of Table 2 from the long table (case, source, measure, mae_um, std_um...).

    Rows are cases; for each (source, measure) present, two columns, MAE and STD in um,
    titled "<source> <measure>"; the landmark fit last. A registration whose status is
    not ok shows ``failed`` or ``uncertain`` instead of its MAE (and ``--`` as STD): the
    long table keeps its numbers and :func:`status_notes` its reason.
    """
    present = set(zip(long["source"], long["measure"], strict=True))
    groups = [
        (s, m, f"{TABLE2_SOURCES[s]} {TABLE2_MEASURES[m]}")
        for s in TABLE2_SOURCES
        for m in TABLE2_MEASURES
        if (s, m) in present
    ]
    cols = pd.MultiIndex.from_tuples([(t, stat) for _, _, t in groups for stat in ("MAE", "STD")])
    cases = list(dict.fromkeys(long["case"]))
    wide = pd.DataFrame(index=pd.Index(cases, name="case"), columns=cols, dtype=object)
    titles = {(s, m): t for s, m, t in groups}
    for row in long.itertuples(index=False):
        title = titles[(row.source, row.measure)]
        ok = row.status == "ok"
        wide.loc[row.case, (title, "MAE")] = float(row.mae_um) if ok else status_word(row.status)
        wide.loc[row.case, (title, "STD")] = float(row.std_um) if ok else np.nan
    return wide


def failed_case_rows(
    checks: list[dict], keys: list[dict], columns: list[str], missing: dict | None = None
) -> pd.DataFrame:
    """Rows for the cases whose input check failed, so a table shows them with their reason.

    Parameters
    ----------
    checks : list of dict
        Case-check records (``case``, ``status``); those with status ``ok`` are skipped.
    keys : list of dict
        One row per failed case and key, e.g. ``{"method": "algorithm1"}`` or
        ``{"source": "raw", "measure": "mi"}``.
    columns : list of str
        The long table's columns, in order.
    missing : dict, optional
        Values of the other columns (default NaN), e.g. ``{"n_matched": 0}``.

    Returns
    -------
    DataFrame
        ``columns``; ``status`` is the check's ``failed: <reason>``.
    """
    rows = [
        {"case": c["case"], **key, "status": c["status"], **(missing or {})}
        for c in checks
        if c["status"] != "ok"
        for key in keys
    ]
    return pd.DataFrame(rows, columns=columns)


def concat_rows(first: pd.DataFrame, *more: pd.DataFrame) -> pd.DataFrame:
    """Rows of several tables with the same columns, number columns kept numeric (so
    that a CSV's ``float_format`` applies; empty tables add nothing)."""
    frames = [f for f in (first, *more) if not f.empty]
    if not frames:
        return first.copy()
    return pd.concat(frames, ignore_index=True).infer_objects()


def nonrigid_table(long: pd.DataFrame, floor_rms_um: dict[str, float]) -> pd.DataFrame:
    """What the B-spline refinement did, per case and refined route.

    Parameters
    ----------
    long : DataFrame
        Table 2's long table: a refined route has a row with measure ``<m>+bspline``
        beside its affine row ``<m>``.
    floor_rms_um : dict
        Case -> RMS (um) of the phantom's non-affine part (synthetic cases; others NaN).

    Returns
    -------
    DataFrame
        One row per ``"<case> <source>/<measure>"``; two-level columns: under ``ground
        truth (um)`` the non-affine RMS, the mean distance over the TEM grid to the truth
        after the affine and after the refinement, and its change (%); under ``landmark
        MAE (um)`` the affine's and the refinement's. A refinement that is not ok shows
        its status word instead of its errors.
    """
    gt, lm = "ground truth (um)", "landmark MAE (um)"
    columns = pd.MultiIndex.from_tuples(
        [
            (gt, "non-affine RMS"),
            (gt, "affine"),
            (gt, "B-spline"),
            (gt, "change %"),
            (lm, "affine"),
            (lm, "B-spline"),
        ]
    )
    rows, names = [], []
    for r in long[long["measure"].str.endswith(NONRIGID_SUFFIX)].itertuples(index=False):
        measure = r.measure.removesuffix(NONRIGID_SUFFIX)
        same = (long["case"] == r.case) & (long["source"] == r.source)
        affine = long[same & (long["measure"] == measure)]
        gt_a = float(affine["gt_mean_um"].iloc[0]) if len(affine) else np.nan
        mae_a = float(affine["mae_um"].iloc[0]) if len(affine) else np.nan
        ok = r.status == "ok"
        word = status_word(r.status)
        rows.append(
            [
                floor_rms_um.get(r.case, np.nan),
                gt_a,
                float(r.gt_mean_um) if ok else word,
                100.0 * (float(r.gt_mean_um) / gt_a - 1.0) if ok else np.nan,
                mae_a,
                float(r.mae_um) if ok else word,
            ]
        )
        names.append(f"{r.case} {r.source}/{measure}")
    return pd.DataFrame(rows, index=pd.Index(names, name="case route"), columns=columns)
