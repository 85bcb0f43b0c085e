"""Report tables as LaTeX (dormant.report.latex): booktabs layout, escaping, best values in bold per direction
and per group, undefined cells, and a table that pdflatex-free parsing can check cell by cell."""

from __future__ import annotations

import pandas as pd
import pytest
from dormant.report.latex import best_for, escape, latex_table, write_latex


def _df():
    return pd.DataFrame({"attack": ["badnets", "badnets", "blended", "blended"],
                         "model": ["backdoor", "ft_sam", "backdoor", "nad"],
                         "c_acc": [91.0, 89.5, 90.0, 90.0], "asr": [99.0, 3.25, 98.0, float("nan")],
                         "bec": [1.0, 0.7, 1.0, 0.2], "epochs": [10, 10, 12, 12]})


def _rows(tex: str) -> list[list[str]]:
    body = tex.split("\\midrule\n", 1)[1].split("\\bottomrule")[0]
    return [[c.strip() for c in line.removesuffix(" \\\\").split(" & ")]
            for line in body.splitlines() if line and line != "\\midrule"]


def test_booktabs_caption_label_alignment_and_escaping():
    tex = latex_table(_df(), caption="Defenses on CIFAR-10 & 5% poison", label="tab:main", best={})
    assert "\\begin{tabular}{llrrrr}" in tex and "\\toprule" in tex and "\\bottomrule" in tex
    assert "\\caption{Defenses on CIFAR-10 \\& 5\\% poison}" in tex and "\\label{tab:main}" in tex
    assert "attack & model & c\\_acc & asr & bec & epochs \\\\" in tex
    rows = _rows(tex)
    assert rows[1] == ["badnets", "ft\\_sam", "89.50", "3.25", "0.70", "10"]
    assert rows[3][3] == "--"  # NaN: undefined, not zero
    assert "textbf" not in tex


def test_best_is_per_direction_with_ties_and_ignores_nan():
    tex = latex_table(_df(), caption="c", label="l", best={"c_acc": "max", "asr": "min"})
    rows = _rows(tex)
    assert rows[0][2] == "\\textbf{91.00}" and all("textbf" not in r[2] for r in rows[1:])
    assert rows[1][3] == "\\textbf{3.25}" and rows[3][3] == "--"


def test_best_within_groups_with_a_rule_between_them():
    tex = latex_table(_df(), caption="c", label="l", best={"c_acc": "max", "bec": "min"}, group="attack")
    rows = _rows(tex)
    assert [r[2] for r in rows] == ["\\textbf{91.00}", "89.50", "\\textbf{90.00}", "\\textbf{90.00}"]  # a tie
    assert [r[4] for r in rows] == ["1.00", "\\textbf{0.70}", "1.00", "\\textbf{0.20}"]
    assert tex.count("\\midrule") == 2  # after the header, between the two attacks


def test_default_directions_by_column_name():
    best = best_for(["model", "c_acc", "asr", "asr_std", "bec_0.05", "ra", "der", "asr_query", "guaa",
                     "queries_to_90"])
    assert best == {"c_acc": "max", "asr": "min", "bec_0.05": "min", "ra": "max", "der": "max",
                    "asr_query": "min", "guaa": "min", "queries_to_90": "max"}


def test_unknown_best_column_is_named():
    with pytest.raises(KeyError, match="acc"):
        latex_table(_df(), caption="c", label="l", best={"acc": "max"})


def test_write_latex_is_atomic_text(tmp_path):
    path = tmp_path / "t.tex"
    write_latex(_df(), path, caption="c", label="l")
    assert path.read_text().startswith("\\begin{table}") and not list(tmp_path.glob(".*.tmp"))
    assert escape("a_b%~") == "a\\_b\\%\\textasciitilde{}"


def test_excluded_reference_rows_take_no_part_in_the_best_value():
    df = pd.DataFrame({"attack": ["a", "a", "a", "b", "b"], "model": ["clean", "backdoor", "ft", "clean", "nad"],
                       "c_acc": [93.0, 92.0, 88.0, 93.0, 85.0], "asr": [1.0, 99.0, 12.0, 0.5, 30.0]})
    tex = latex_table(df, caption="c", label="tab:x", group="attack", exclude={"model": ["clean", "backdoor"]})
    rows = _rows(tex)
    assert rows[0] == ["a", "clean", "93.00", "1.00"]  # would be bold for both columns without `exclude`
    assert rows[2] == ["a", "ft", "\\textbf{88.00}", "\\textbf{12.00}"]
    assert rows[4] == ["b", "nad", "\\textbf{85.00}", "\\textbf{30.00}"]
    plain = _rows(latex_table(df, caption="c", label="tab:x", group="attack"))
    assert plain[0] == ["a", "clean", "\\textbf{93.00}", "\\textbf{1.00}"]
    with pytest.raises(KeyError, match="exclude"):
        latex_table(df, caption="c", label="tab:x", exclude={"defense": ["backdoor"]})


def test_mean_and_spread_share_a_cell_and_the_best_is_chosen_by_the_mean():
    df = pd.DataFrame({"model": ["ft", "nad"], "asr": [10.0, 12.0], "asr_std": [5.0, float("nan")],
                       "c_acc": [80.0, 81.0], "c_acc_std": [0.5, 0.25]})
    tex = latex_table(df, caption="c", label="tab:x", pm={"asr": "asr_std", "c_acc": "c_acc_std"})
    assert "model & asr & c\\_acc \\\\" in tex and "asr\\_std" not in tex
    rows = _rows(tex)
    assert rows[0] == ["ft", "\\textbf{10.00 $\\pm$ 5.00}", "80.00 $\\pm$ 0.50"]
    assert rows[1] == ["nad", "12.00", "\\textbf{81.00 $\\pm$ 0.25}"]  # no spread from a single value
    with pytest.raises(KeyError, match="pm"):
        latex_table(df, caption="c", label="tab:x", pm={"ra": "ra_std"})
