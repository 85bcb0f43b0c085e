"""Results over several run seeds: per-seed rows, and mean, standard deviation and n per (attack, model).

A run with ``seeds: [...]`` repeats every seeded stage once per seed (poison draw, the defender's clean subset, the
attacker's seed, training shuffles, the images each analysis draws). Its per-seed tables have the same rows; this
module stacks them (a ``seed`` column first) and aggregates every numeric column over seeds: the mean, the sample
standard deviation (ddof = 1, so NaN for a single seed: one run says nothing about spread) and ``n``, the number
of seeds whose value is not missing (a metric that is undefined for a model, e.g. DER of the clean model, stays
NaN with n = 0).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from dormant.io import write_text
from dormant.report.common import savefig, tex_path, write_csv, write_csv_tex
from dormant.report.latex import best_for, write_latex
from dormant.report.style import facets, label_panels, legend_right, model_handles, styles_for, wrap_for

KEYS = ["attack", "model"]
REFS = ("clean", "backdoor")  # reference models: no candidates for a table's best value
# The columns of the Markdown summary, as "mean ± std" (all numeric columns are in the CSV)
SUMMARY = ["c_acc", "asr", "ra", "der", "bec", "asr_reactivated", "asr_guaa", "asr_query"]


def stack(per_seed: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """The per-seed tables one under the other, seed first; rows keep each table's order, seeds ascending."""
    if not per_seed:
        raise ValueError("no per-seed tables to stack")
    frames = [df.assign(seed=int(s))[["seed", *df.columns]] for s, df in sorted(per_seed.items())]
    return pd.concat(frames, ignore_index=True)


def aggregate(stacked: pd.DataFrame, keys: list[str] = KEYS) -> pd.DataFrame:
    """Per key (attack, model), in the order of first appearance: ``n``, then ``<col>_mean`` and ``<col>_std`` of
    every numeric column other than the keys and ``seed`` (sample std, ddof = 1; NaN where fewer than 2 values)."""
    numeric = [c for c in stacked.columns
               if c not in (*keys, "seed") and pd.api.types.is_numeric_dtype(stacked[c])]
    grouped = stacked.groupby(keys, sort=False)
    out = grouped.size().rename("seeds").reset_index()
    for c in numeric:
        g = grouped[c]
        out[f"{c}_mean"] = g.mean().to_numpy()
        out[f"{c}_std"] = g.std(ddof=1).to_numpy()
        out[f"{c}_n"] = g.count().to_numpy()
    return out


def summary_markdown(agg: pd.DataFrame, columns: list[str] = SUMMARY, digits: int = 1) -> str:
    """A Markdown table of "mean ± std" cells for the main metrics (n = the number of seeds)."""
    cols = [c for c in columns if f"{c}_mean" in agg.columns]

    def cell(m, s):
        if isinstance(m, float) and math.isnan(m):
            return "n/a"
        return f"{m:.{digits}f}" if isinstance(s, float) and math.isnan(s) else f"{m:.{digits}f} ± {s:.{digits}f}"

    lines = ["| attack | model | seeds | " + " | ".join(cols) + " |", "|" + "---|" * (3 + len(cols))]
    for _, r in agg.iterrows():
        cells = [cell(r[f"{c}_mean"], r[f"{c}_std"]) for c in cols]
        lines.append(f"| {r['attack']} | {r['model']} | {int(r['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure_asr(agg: pd.DataFrame, path) -> None:
    """Per attack (one panel each, shared axes, wrapping): ASR after the defense (light) and after white-box
    re-activation (solid, the model's marker on top) per model, mean over seeds with standard-deviation error
    bars; each model in its own colour and marker."""
    looks = styles_for(agg["model"])
    attacks = list(dict.fromkeys(agg["attack"]))
    n = max([(agg["attack"] == a).sum() for a in attacks] + [1])
    width = max(3.6, 0.5 * n + 1.0)  # bars of every model side by side
    fig, axes = facets(attacks, panel=(width, 3.2), wrap=wrap_for(width), sharex=False)
    w = 0.38
    for a, ax in axes.items():
        d = agg[agg["attack"] == a].reset_index(drop=True)
        for i, r in d.iterrows():
            lk = looks[r["model"]]
            for off, col, alpha in ((-w / 2, "asr", 0.35), (w / 2, "asr_reactivated", 1.0)):
                ax.bar(i + off, r[f"{col}_mean"], w, yerr=np.nan_to_num(r[f"{col}_std"]), capsize=2,
                       color=lk.color, alpha=alpha)
            if not math.isnan(r["asr_reactivated_mean"]):
                ax.plot(i + w / 2, r["asr_reactivated_mean"] + np.nan_to_num(r["asr_reactivated_std"]) + 4, ls="",
                        marker=lk.marker, color=lk.color, ms=5)
        ax.set_xticks(range(len(d)), d["model"], rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{a} (n = {int(d['seeds'].max())} seeds)", fontsize=9)
        ax.set_ylim(0, 112)
    label_panels(axes, "", "ASR (%), mean ± std")
    from matplotlib.patches import Patch

    legend_right(fig, {"after the defense": Patch(color="0.3", alpha=0.35),
                       "white-box re-activation": Patch(color="0.3")} | model_handles(looks, looks))
    savefig(fig, path)


def figure_bec_vs_asr(agg: pd.DataFrame, path) -> None:
    """BEC vs ASR per (attack, model), mean over seeds with standard deviations on both axes; one panel per
    attack (shared axes, wrapping), each model in its own colour and marker."""
    looks = styles_for(agg["model"])
    fig, axes = facets(list(dict.fromkeys(agg["attack"])))
    for a, ax in axes.items():
        for _, r in agg[agg["attack"] == a].iterrows():
            lk = looks[r["model"]]
            ax.errorbar(r["asr_mean"], r["bec_mean"], xerr=np.nan_to_num(r["asr_std"]),
                        yerr=np.nan_to_num(r["bec_std"]), fmt=lk.marker, color=lk.color, ms=6, capsize=2, lw=0.8)
        ax.set_xlim(-3, 103)
        ax.set_title(a, fontsize=9)
    label_panels(axes, "ASR (%), mean ± std", "BEC, mean ± std")
    legend_right(fig, model_handles(looks, looks))
    savefig(fig, path)


def read_tables(paths: dict) -> dict[int, pd.DataFrame]:
    """``{seed: csv path}`` (JSON keys are strings) -> ``{seed: DataFrame}``; a missing file is named."""
    out = {}
    for s, p in paths.items():
        try:
            out[int(s)] = pd.read_csv(p)
        except FileNotFoundError:
            raise FileNotFoundError(f"seed {s}: table {p} does not exist") from None
    return out


def paper_view(agg: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """The aggregate as the paper shows it: attack, model, seeds, then per metric its mean (named as the metric)
    and its std (``<metric>_std``, shown in the mean's cell); the counts per metric are left to the CSV."""
    metrics = [c[: -len("_mean")] for c in agg.columns if c.endswith("_mean")]
    out = agg[[*KEYS, "seeds"]].copy()
    for m in metrics:
        out[m] = agg[f"{m}_mean"]
        out[f"{m}_std"] = agg[f"{m}_std"]
    return out, {m: f"{m}_std" for m in metrics}


def write_seed_tables(per_seed: dict[int, pd.DataFrame], seeds_csv, mean_csv, md=None,
                      caption: str | None = None) -> pd.DataFrame:
    """Writes the stacked per-seed rows and the aggregate (and its Markdown summary), each CSV also as LaTeX
    (``caption``: what the tables hold, e.g. "black-box re-activation"); returns the aggregate."""
    stacked = stack(per_seed)
    agg = aggregate(stacked)
    what = caption or "metrics"
    what = what[0].upper() + what[1:]
    write_csv_tex(stacked, seeds_csv, caption=f"{what} of every run seed, per attack and model", best={},
                  group="attack")
    write_csv(agg, mean_csv)
    compact, pm = paper_view(agg)
    best = {c: way for c, way in best_for(list(pm)).items() if c != "queries"}  # queries spent: the budget
    # label tab:seeds_<stem>: a run's own report has a table.tex / blackbox.tex labelled tab:<stem>
    write_latex(compact, tex_path(mean_csv), label=f"tab:seeds_{Path(mean_csv).stem}", best=best, pm=pm,
                exclude={"model": REFS}, group="attack",
                caption=f"{what} over {int(agg['seeds'].max())} run seeds per attack and model, each cell the mean "
                        "and, after it, the sample standard deviation; best defense per attack (by its mean) in bold")
    if md is not None:
        write_text(md, summary_markdown(agg))
    return agg
