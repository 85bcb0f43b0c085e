"""Report tables as LaTeX for papers: booktabs rules, a caption and label, the best value of each chosen column in
bold (highest C-ACC, lowest ASR, ...), undefined cells as an en dash. Needs only ``\\usepackage{booktabs}``.

Which direction is "best" is the caller's: :func:`best_for` gives this project's defaults by column name.
"""

from __future__ import annotations

import math
import re

import pandas as pd

from dormant.io import atomic_path

#: column-name patterns and the direction that is better (first match wins): a defense wants a high clean
#: accuracy, low attack success (also after re-activation, for the defender), a high DER and a low BEC
BETTER = (
    (r"(^|_)c_?acc", "max"), (r"(^|_)ra($|_)", "max"), (r"(^|_)der($|_)", "max"),
    (r"(^|_)asr", "min"), (r"(^|_)bec", "min"), (r"guaa", "min"), (r"queries", "max"),
)

_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def escape(text) -> str:
    """``text`` with LaTeX's special characters escaped (model names such as ``ft_sam`` carry underscores)."""
    return "".join(_SPECIAL.get(c, c) for c in str(text))


def best_for(columns) -> dict[str, str]:
    """Column -> "max" / "min" for the numeric metric columns whose name says which way is better."""
    out = {}
    for col in columns:
        for pattern, way in BETTER:
            if re.search(pattern, str(col).lower()):
                if not str(col).lower().endswith(("_std", "_n")):
                    out[col] = way
                break
    return out


def _cell(v, digits: int) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "--"
        return f"{v:.{digits}f}"
    return escape(v)


def latex_table(df: pd.DataFrame, *, caption: str, label: str, best: dict[str, str] | None = None,
                digits: int = 2, group: str | None = None, exclude: dict | None = None,
                pm: dict[str, str] | None = None) -> str:
    """A ``table`` environment with a ``tabular`` of ``df``: text columns left-aligned, numbers right-aligned,
    booktabs rules, the best value per column of ``best`` in bold (ties all bold; within each ``group`` value
    when a grouping column is given, e.g. per attack, with a midrule between groups).

    ``exclude``: column -> values whose rows take no part in choosing the best, e.g. ``{"model": ["clean",
    "backdoor"]}``: the reference models would otherwise always hold the best C-ACC or ASR of a defense table.
    ``pm``: column -> the column of its spread, shown in the same cell as "mean $\\pm$ std" (e.g. over seeds); the
    spread columns are not shown on their own and the best value is chosen by the mean."""
    pm = pm or {}
    unknown = sorted(c for c in [*pm, *pm.values()] if c not in df.columns)
    if unknown:
        raise KeyError(f"pm: columns {unknown} are not in the table ({list(df.columns)})")
    shown = [c for c in df.columns if c not in set(pm.values())]
    best = best_for(shown) if best is None else best
    unknown = sorted(set(best) - set(df.columns))
    if unknown:
        raise KeyError(f"best: columns {unknown} are not in the table ({list(df.columns)})")
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in shown]
    spec = "".join("r" if n else "l" for n in numeric)
    bold = pd.DataFrame(False, index=df.index, columns=df.columns)
    unknown = sorted(set(exclude or {}) - set(df.columns))
    if unknown:
        raise KeyError(f"exclude: columns {unknown} are not in the table ({list(df.columns)})")
    ranked = pd.Series(True, index=df.index)
    for col, values in (exclude or {}).items():
        ranked &= ~df[col].isin(list(values))
    groups = [df.index] if group is None else [idx for _, idx in df.groupby(group, sort=False).groups.items()]
    groups = [idx[ranked.loc[idx].to_numpy()] for idx in groups]
    for col, way in best.items():
        for idx in groups:
            vals = pd.to_numeric(df.loc[idx, col], errors="coerce").round(digits)
            if len(vals) and vals.notna().any():
                target = vals.max() if way == "max" else vals.min()
                bold.loc[idx, col] = vals == target
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{escape(caption)}}}", rf"\label{{{label}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(escape(c) for c in shown) + r" \\", r"\midrule"]
    previous = None
    for i, row in df.iterrows():
        if group is not None and previous is not None and row[group] != previous:
            lines.append(r"\midrule")
        previous = row[group] if group is not None else None
        cells = []
        for col in shown:
            text = _cell(row[col], digits)
            if col in pm and text != "--" and _cell(row[pm[col]], digits) != "--":
                text += rf" $\pm$ {_cell(row[pm[col]], digits)}"
            cells.append(rf"\textbf{{{text}}}" if bold.at[i, col] else text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_latex(df: pd.DataFrame, path, **kwargs) -> None:
    """:func:`latex_table` of ``df``, written atomically to ``path`` (a ``.tex`` file to ``\\input``)."""
    text = latex_table(df, **kwargs)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
