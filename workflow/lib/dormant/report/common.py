"""Helpers shared by every report family: a DataFrame as Markdown, atomic CSV writes, atomic PNG writes
with fixed metadata (so figures are byte-reproducible).
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pandas as pd

from dormant.io import atomic_path


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


def savefig(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)
