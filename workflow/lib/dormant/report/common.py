"""Helpers shared by every report family: a DataFrame as Markdown, atomic CSV writes (each report table also as
a LaTeX ``.tex`` next to it, for the paper), atomic figure writes as PNG and PDF with fixed metadata (so both are
byte-reproducible).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from dormant.io import atomic_path
from dormant.report.latex import write_latex

# fontTools logs every glyph subset of a PDF at INFO level; job logs should show the report's own messages
logging.getLogger("fontTools").setLevel(logging.WARNING)

#: PDF metadata: no creation date and a fixed producer, so two writes of one figure give identical bytes
PDF_METADATA = {"CreationDate": None, "ModDate": None, "Producer": "dormant report", "Creator": None}


def to_markdown(df: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""

    def fmt(v):
        if isinstance(v, float):
            return "n/a" if math.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "|".join("---" for _ in df.columns) + "|"]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_csv(df: pd.DataFrame, path) -> None:
    """Every CSV of the report: atomic, no index, 4 decimals."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")


def tex_path(path) -> Path:
    """The LaTeX sibling of a report CSV: ``x/table.csv`` -> ``x/table.tex``."""
    return Path(path).with_suffix(".tex")


def pdf_path(path) -> Path:
    """The PDF sibling of a report PNG: ``x/figure.png`` -> ``x/figure.pdf``."""
    return Path(path).with_suffix(".pdf")


def write_csv_tex(df: pd.DataFrame, path, *, caption: str, best: dict[str, str] | None = None,
                  exclude: dict | None = None, group: str | None = None, digits: int = 2) -> None:
    """A report table as CSV (:func:`write_csv`) and as a LaTeX table next to it (same stem, ``.tex``, label
    ``tab:<stem>``; ``best``/``exclude``/``group`` as in :func:`dormant.report.latex.latex_table`)."""
    write_csv(df, path)
    if group is not None and group not in df.columns:
        group = None
    if exclude:
        exclude = {k: v for k, v in exclude.items() if k in df.columns}
    write_latex(df, tex_path(path), caption=caption, label=f"tab:{Path(path).stem}", best=best, exclude=exclude,
                group=group, digits=digits)


def savefig(fig, path) -> None:
    """The figure as ``path`` (PNG, 150 dpi) and as a PDF next to it (same stem, vector, for the paper)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    with atomic_path(pdf_path(path)) as tmp:
        fig.savefig(tmp, format="pdf", bbox_inches="tight", metadata=PDF_METADATA)
    plt.close(fig)
