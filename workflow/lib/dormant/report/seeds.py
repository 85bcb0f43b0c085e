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

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from dormant.io import write_text
from dormant.report.common import savefig, write_csv

KEYS = ["attack", "model"]
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
    """Per attack: ASR after the defense and after white-box re-activation per model, mean over seeds with
    standard-deviation error bars."""
    attacks = list(dict.fromkeys(agg["attack"]))
    fig, axes = plt.subplots(1, len(attacks), figsize=(max(4.0, 0.7 * agg.shape[0] + 2), 3.6), squeeze=False,
                             sharey=True)
    w = 0.38
    for ax, a in zip(axes[0], attacks):
        d = agg[agg["attack"] == a]
        x = np.arange(len(d))
        for off, col, label, color in ((-w / 2, "asr", "after the defense", "0.55"),
                                       (w / 2, "asr_reactivated", "white-box re-activation", "tab:red")):
            ax.bar(x + off, d[f"{col}_mean"], w, yerr=d[f"{col}_std"].fillna(0), capsize=2, label=label,
                   color=color)
        ax.set_xticks(x, d["model"], rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{a} (n = {int(d['seeds'].max())} seeds)", fontsize=9)
        ax.set_ylim(0, 105)
    axes[0][0].set_ylabel("ASR (%), mean ± std")
    axes[0][-1].legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    savefig(fig, path)


def figure_bec_vs_asr(agg: pd.DataFrame, path) -> None:
    """BEC vs ASR per (attack, model), mean over seeds with standard deviations on both axes."""
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    markers = dict(zip(dict.fromkeys(agg["attack"]), "osD^vP*Xh"))
    models = list(dict.fromkeys(agg["model"]))
    colors = {m: plt.cm.tab20(i % 20) for i, m in enumerate(models)}
    for _, r in agg.iterrows():
        ax.errorbar(r["asr_mean"], r["bec_mean"], xerr=np.nan_to_num(r["asr_std"]),
                    yerr=np.nan_to_num(r["bec_std"]), fmt=markers[r["attack"]], color=colors[r["model"]],
                    ms=6, capsize=2, lw=0.8)
    for a, mk in markers.items():
        ax.plot([], [], mk, color="0.3", label=f"attack: {a}")
    for m, c in colors.items():
        ax.plot([], [], "s", color=c, label=m)
    ax.set_xlabel("ASR (%), mean ± std")
    ax.set_ylabel("BEC, mean ± std")
    ax.set_xlim(-3, 103)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
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


def write_seed_tables(per_seed: dict[int, pd.DataFrame], seeds_csv, mean_csv, md=None) -> pd.DataFrame:
    """Writes the stacked per-seed rows and the aggregate (and its Markdown summary); returns the aggregate."""
    stacked = stack(per_seed)
    agg = aggregate(stacked)
    write_csv(stacked, seeds_csv)
    write_csv(agg, mean_csv)
    if md is not None:
        write_text(md, summary_markdown(agg))
    return agg
