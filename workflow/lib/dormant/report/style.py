"""One look per model across every report figure, and the subplot grid of figures faceted by attack.

A defense keeps its colour and marker in every figure of a run (the BEC-vs-ASR scatter, the re-activation bars,
the query curves, the figures over seeds): :func:`model_styles` assigns them from the order of the models, which
the rules fix (clean, backdoor, then the defenses sorted by name), not from which rows a figure happens to draw.
The two reference models have fixed neutral looks. Colours come from a 16-colour qualitative palette and markers
from a list of 16 shapes, so up to 16 defenses are told apart by colour and by marker (greyscale print, colour
blindness); beyond that both repeat, shifted so that (colour, marker) pairs stay distinct.

Figures whose size would grow with the grid (12 defenses x 8 attacks) draw one panel per attack with shared
axes, in a grid that wraps after :data:`WRAP` columns (:func:`facets`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt

REFERENCE = {"clean": ("0.55", "o"), "backdoor": ("black", "X")}
#: tab20's dark shades first, then its light shades minus grey: 16 colours without the references' greys
PALETTE = [plt.cm.tab20(i) for i in (0, 2, 4, 6, 8, 10, 16, 18, 1, 3, 5, 7, 9, 11, 17, 19)]
MARKERS = ["o", "s", "^", "D", "v", "P", "*", "h", "<", ">", "p", "d", "H", "8", "X", "1"]
WRAP = 4
PAGE = 15.0  # inches: a faceted figure wraps to stay about this wide


def wrap_for(panel_width: float) -> int:
    """Columns of panels of this width that fit :data:`PAGE` (1 to :data:`WRAP`): wide bar panels wrap sooner."""
    return max(1, min(WRAP, int(PAGE // panel_width)))


@dataclass(frozen=True)
class Look:
    color: tuple | str
    marker: str


def model_styles(models) -> dict[str, Look]:
    """Model -> Look, deterministic in the order of ``models`` (duplicates ignored): the i-th defense gets
    colour i and marker i (mod 16; in the second round of 16 the marker shifts by one)."""
    out = {}
    i = 0
    for m in dict.fromkeys(models):
        if m in REFERENCE:
            out[m] = Look(*REFERENCE[m])
            continue
        lap = i // len(PALETTE)
        out[m] = Look(PALETTE[i % len(PALETTE)], MARKERS[(i + lap) % len(MARKERS)])
        i += 1
    return out


def order_models(models) -> list[str]:
    """The models in the rules' order: clean, backdoor, then the rest sorted by name (what
    workflow/rules/common.smk's MODELS is), so that any subset of them maps to the same looks."""
    present = set(models)
    return [m for m in REFERENCE if m in present] + sorted(present - set(REFERENCE))


def styles_for(models) -> dict[str, Look]:
    """:func:`model_styles` of :func:`order_models`: the same model, the same look, in every figure of a run."""
    return model_styles(order_models(models))


def facet_shape(n: int, wrap: int = WRAP) -> tuple[int, int]:
    """(rows, columns) of a grid of ``n`` panels wrapping after ``wrap`` columns."""
    if n < 1:
        return 1, 1
    cols = min(n, wrap)
    return math.ceil(n / cols), cols


def facets(keys, *, panel=(3.6, 3.0), wrap: int = WRAP, sharex=True, sharey=True):
    """A figure with one panel per key (e.g. per attack), shared axes, wrapping after ``wrap`` columns.

    Returns ``(fig, {key: ax})``; unused cells of the last row are switched off."""
    keys = list(dict.fromkeys(keys))
    rows, cols = facet_shape(len(keys), wrap)
    fig, axes = plt.subplots(rows, cols, figsize=(panel[0] * cols, panel[1] * rows), squeeze=False,
                             sharex=sharex, sharey=sharey, layout="constrained")
    flat = axes.ravel()
    for k, ax in enumerate(flat[len(keys):], start=len(keys)):
        ax.set_axis_off()
        if k >= cols:  # the panel above an empty cell is the last of its column: it shows the x tick labels
            flat[k - cols].xaxis.set_tick_params(labelbottom=True)
    return fig, dict(zip(keys, flat))


def label_panels(axes: dict, xlabel: str, ylabel: str) -> None:
    """Axis labels on the outer panels only: x under the last panel of each column, y left of the first column."""
    panels = list(axes.values())
    for i, ax in enumerate(panels):
        spec = ax.get_subplotspec()
        cols = spec.get_gridspec().ncols
        ax.set_xlabel(xlabel if i + cols >= len(panels) else "")
        ax.set_ylabel(ylabel if spec.is_first_col() else "")


def model_handles(looks: dict[str, Look], models, **kw) -> dict:
    """Legend entries (label -> handle) showing each model's colour and marker."""
    from matplotlib.lines import Line2D

    return {m: Line2D([], [], ls="", marker=looks[m].marker, color=looks[m].color, ms=6, **kw)
            for m in dict.fromkeys(models)}


def legend_right(fig, handles: dict) -> None:
    """One legend for the whole figure (label -> handle), right of the panels."""
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside right center", fontsize=7, frameon=False)
