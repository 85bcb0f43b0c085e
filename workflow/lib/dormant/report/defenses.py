"""The attack x defense grid (docs/methods.md sections 3 and 5): C-ACC, ASR, RA and DER of every defended model
next to the backdoored one, plus what each defense decided, from its sidecar.

* ``defense_grid.csv`` / ``.md``: one row per (attack, defense); ``changed`` says whether the defense touched
  the model at all (NC returns it unchanged when it flags nothing), ``flagged`` the labels NC flagged, and
  ``decision`` the level a defense chose on its held-out split (FP channels, ANP threshold, CLP channels).
* ``defense_grid.png``: C-ACC and ASR heatmaps, attacks x defenses.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pandas as pd

from dormant.io import read_json, write_text
from dormant.report.common import savefig, to_markdown, write_csv_tex

COLUMNS = ["attack", "defense", "type", "c_acc", "asr", "ra", "der", "changed", "flagged", "decision"]


def decision(info: dict) -> str:
    """A short account of the level a defense chose, from its sidecar ('' when it chooses none)."""
    if "flagged" in info:
        idx = info.get("anomaly_index") or []
        top = max(idx) if idx else float("nan")
        return f"max anomaly index {top:.2f}"
    if "pruned_channels" in info:
        return f"pruned {info['pruned_channels']}/{info['channels']} channels"
    if "pruned_neurons" in info:
        return f"threshold {info['threshold']:.2f}, pruned {info['pruned_neurons']}/{info['neurons']} neurons"
    if "pruned" in info and isinstance(info["pruned"], dict):
        return f"pruned {sum(len(v) for v in info['pruned'].values())} channels"
    return ""


def grid_table(rows: list[dict]) -> pd.DataFrame:
    """rows: {attack, defense, type, metrics (path), sidecar (path, the defended model's JSON; None for the
    backdoored model)}, in the order the table should have."""
    recs = []
    for r in rows:
        m = read_json(r["metrics"], keys=("metrics",))["metrics"]
        info = read_json(r["sidecar"], expect=dict) if r.get("sidecar") else {}
        flagged = info.get("flagged")
        recs.append({"attack": r["attack"], "defense": r["defense"], "type": r["type"], "c_acc": m["c_acc"],
                     "asr": m["asr"], "ra": m["ra"], "der": m.get("der", float("nan")),
                     "changed": info.get("changed", "") if r.get("sidecar") else "",
                     "flagged": " ".join(str(t) for t in flagged) if flagged else ("none" if flagged == [] else ""),
                     "decision": decision(info)})
    return pd.DataFrame.from_records(recs, columns=COLUMNS)


def figure_grid(df: pd.DataFrame, path) -> None:
    """C-ACC and ASR heatmaps, one above the other (attacks x defenses, the backdoored model first)."""
    defenses = list(dict.fromkeys(df["defense"]))
    attacks = list(dict.fromkeys(df["attack"]))
    fig, axes = plt.subplots(2, 1, figsize=(1.5 + 0.6 * len(defenses), 2 * (1.0 + 0.4 * len(attacks))),
                             constrained_layout=True)
    for ax, col, cmap in zip(axes, ("c_acc", "asr"), ("Greens", "Reds")):
        piv = df.pivot(index="attack", columns="defense", values=col).reindex(index=attacks, columns=defenses)
        ax.imshow(piv.to_numpy(dtype=float), cmap=cmap, vmin=0, vmax=100, aspect="auto")
        ax.set_xticks(range(len(defenses)), defenses, rotation=60, ha="right")
        ax.set_yticks(range(len(attacks)), attacks)
        ax.set_title({"c_acc": "C-ACC (%)", "asr": "ASR (%)"}[col])
        for i, a in enumerate(attacks):
            for j, d in enumerate(defenses):
                v = piv.loc[a, d]
                if not (isinstance(v, float) and math.isnan(v)):
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if v > 60 else "black")
    savefig(fig, path)


GRID_CAPTION = ("The attack x defense grid: C-ACC, ASR, RA and DER of each defended model next to the backdoored "
                "one, and what each defense decided; best defense per attack in bold")


def write_grid(rows: list[dict], csv_path, md_path, fig_path) -> pd.DataFrame:
    df = grid_table(rows)
    write_csv_tex(df, csv_path, caption=GRID_CAPTION, exclude={"defense": ("backdoor",)}, group="attack")
    write_text(md_path, to_markdown(df))
    figure_grid(df, fig_path)
    return df
