"""The budget ablation (docs/methods.md section 7.6; Zhu, Liang & Wu 2024): re-activated and gUAA ASR of every
defended model as the perturbation budget eps varies, from the ``budget`` stage's CSVs.

* ``budget.csv`` / ``.md``: one row per (attack, defense, norm, eps), with the model's ASR without delta
  (``asr_trigger``) and the gap between re-activation and gUAA.
* ``budget.png``: ASR against eps, one panel per (attack, norm), a line per defense, solid for
  re-activation and dashed for gUAA; every line starts at eps = 0 from the model's own ASR (re-activation)
  or its clean-image target rate (gUAA), where both deltas are zero.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from dormant.errors import CheckpointError
from dormant.io import write_text
from dormant.report.common import savefig, to_markdown, write_csv_tex

COLUMNS = ["attack", "defense", "type", "norm", "eps", "asr_trigger", "asr_reactivated", "asr_guaa", "gap",
           "asr_clean"]
NEEDED = ("norm", "eps", "asr_reactivated", "asr_guaa", "asr_trigger", "asr_clean")
NORM_LABEL = {"linf": "L-inf", "l2": "L2"}


def budget_table(rows: list[dict]) -> pd.DataFrame:
    """rows: {attack, defense, type, csv (path of a budget stage's CSV)}, in the order the table should have."""
    parts = []
    for r in rows:
        try:
            df = pd.read_csv(r["csv"])
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise CheckpointError(f"{r['csv']}: not a budget CSV ({e})") from None
        missing = [c for c in NEEDED if c not in df.columns]
        if missing:
            raise CheckpointError(f"{r['csv']}: missing column(s) {', '.join(missing)}")
        parts.append(df.assign(attack=r["attack"], defense=r["defense"], type=r.get("type", r["defense"])))
    if not parts:
        return pd.DataFrame(columns=COLUMNS)
    out = pd.concat(parts, ignore_index=True)
    out["gap"] = out["asr_reactivated"] - out["asr_guaa"]
    return out[COLUMNS]


def figure_budget(df: pd.DataFrame, path) -> None:
    """ASR (%) against eps: rows of panels per attack, columns per norm; solid re-activation, dashed gUAA."""
    attacks = list(dict.fromkeys(df["attack"])) or [""]
    norms = [n for n in NORM_LABEL if n in set(df["norm"])] or ["linf"]
    fig, axes = plt.subplots(len(attacks), len(norms), figsize=(4.2 * len(norms), 3.2 * len(attacks)),
                             squeeze=False, constrained_layout=True)
    defenses = list(dict.fromkeys(df["defense"]))
    colours = {d: plt.get_cmap("tab10")(i % 10) for i, d in enumerate(defenses)}
    for i, a in enumerate(attacks):
        for j, n in enumerate(norms):
            ax = axes[i][j]
            sub = df[(df["attack"] == a) & (df["norm"] == n)]
            for d in defenses:
                s = sub[sub["defense"] == d].sort_values("eps")
                if s.empty:
                    continue
                eps = [0.0, *s["eps"]]
                ax.plot(eps, [s["asr_trigger"].iloc[0], *s["asr_reactivated"]], "-o", ms=3, color=colours[d],
                        label=f"{d} re-activation")
                ax.plot(eps, [s["asr_clean"].iloc[0], *s["asr_guaa"]], "--s", ms=3, color=colours[d],
                        label=f"{d} gUAA")
            ax.set_ylim(-2, 102)
            ax.set_xlabel(f"budget eps ({NORM_LABEL[n]}, [0, 1] pixel scale)")
            ax.set_ylabel("ASR (%)")
            ax.set_title(f"{a} ({NORM_LABEL[n]})" if a else NORM_LABEL[n])
            ax.grid(alpha=0.3)
    legend = {}
    for ax in fig.axes:  # every defense once, whichever panel drew it
        for h, lab in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(lab, h)
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="outside right upper", fontsize=7)
    savefig(fig, path)


def write_budget(rows: list[dict], csv_path, md_path, fig_path) -> pd.DataFrame:
    df = budget_table(rows)
    write_csv_tex(df, csv_path, best={},
                  caption="Budget ablation: white-box re-activated (RA) and gUAA ASR (%) per defense at each "
                          "perturbation budget eps ([0, 1] pixel scale); gap = RA - gUAA")
    write_text(md_path, "Re-activated (RA) and gUAA ASR (%) at each budget eps ([0, 1] pixel scale); "
                        "asr_trigger is the model's ASR without delta, gap = RA - gUAA.\n\n" + to_markdown(df))
    figure_budget(df, fig_path)
    return df
