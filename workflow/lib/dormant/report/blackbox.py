"""Tables and figures of the black-box re-activation attacks and the evidence analyses (docs/methods.md section 7).

* ``blackbox.csv``: per (attack, model) white-box, query-based and transfer-based re-activated ASR, the
  queries spent, and the queries the search needed to reach 90% of the white-box ASR.
* ``query_checkpoints.{csv,png}``: re-activation vs gUAA at fixed query counts (paper: 1k-7k); ``query.png``:
  the per-query curves.
* ``transfer.csv`` + ``transfer.png``: each surrogate set's delta of every variant (plain, momentum, mom) on
  every target;
  ``seen`` marks targets made by a defense method (type) the attacker also used, with its own settings,
  seed and clean data.
* ``evidence_cka.{csv,png}``, ``evidence_noise.{csv,png}``: CKA and random-noise analyses.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pandas as pd

from dormant.io import read_json
from dormant.reactivation.query import queries_to_reach
from dormant.report.common import savefig, write_csv_tex
from dormant.report.latex import best_for
from dormant.report.style import facets, label_panels, legend_right, model_handles, styles_for, wrap_for

REACH = 0.9  # "queries to reach 90% of the white-box ASR"
_REFS = {"model": ("clean", "backdoor")}  # reference models: no candidates for the best value
#: per table: its caption and which values are marked best (long tables mark none)
LATEX = {
    "summary": {"caption": "Re-activated ASR of the backdoored, clean and defended models: white-box, query-based "
                           "(queries spent, queries to reach 90% of the white-box ASR, query gUAA baseline) and "
                           "transferred from each surrogate set and variant; best defense per attack in bold",
                "exclude": _REFS, "group": "attack"},
    "checkpoints": {"caption": "Query-based re-activation vs. the gUAA baseline: ASR at fixed query counts per "
                               "attack and model", "best": {}, "group": "attack"},
    "transfer": {"caption": "Transfer-based re-activation: ASR of each surrogate set's perturbation (per variant) "
                            "on every target model; seen marks a defense method the attacker also used",
                 "best": {}, "group": "attack"},
    "cka": {"caption": "Linear CKA between each model's features on re-activated, gUAA and triggered images and "
                       "the backdoored model's features on triggered images", "best": {}, "group": "attack"},
    "noise": {"caption": "ASR under uniform random L-infinity noise of the trigger, the re-activated and the gUAA "
                         "perturbations, per attack and model", "best": {}, "group": "attack"},
}


def _order(df: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    rank = {m: i for i, m in enumerate(models)}
    return df.sort_values(["attack", "model"], key=lambda c: c.map(rank) if c.name == "model" else c,
                          kind="stable").reset_index(drop=True)


def summary_table(rows: list[dict], models: list[str]) -> pd.DataFrame:
    """rows: {attack, model, reactivation, query, transfer} (paths of stage JSONs)."""
    recs = []
    for r in rows:
        wb = read_json(r["reactivation"], keys=("metrics",))["metrics"]
        q = read_json(r["query"], keys=("metrics",))
        rec = {"attack": r["attack"], "model": r["model"], "asr_trigger": wb["asr_trigger"],
               "asr_whitebox": wb["asr_reactivated"], "asr_query": q["metrics"]["reactivated"]["asr"],
               "queries": q["metrics"]["reactivated"]["queries"],
               "queries_to_90": math.nan, "asr_query_guaa": q["metrics"]["guaa"]["asr"]}
        hit = None
        if wb["asr_reactivated"] > 0:  # reaching 90% of nothing says nothing
            hit = queries_to_reach(q["curves"]["reactivated"], REACH * wb["asr_reactivated"] / 100.0)
        if hit is not None:
            rec["queries_to_90"] = hit
        for surrogate, res in sorted(read_json(r["transfer"], keys=("metrics",))["metrics"].items()):
            for variant, asr in sorted(res.items()):
                rec[f"asr_transfer_{surrogate}_{variant}"] = asr
        recs.append(rec)
    return _order(pd.DataFrame.from_records(recs), models)


def query_checkpoints(rows: list[dict], models: list[str]) -> pd.DataFrame:
    recs = []
    for r in rows:
        m = read_json(r["query"], keys=("metrics",))["metrics"]
        for q in m["reactivated"]["asr_at"]:
            recs.append({"attack": r["attack"], "model": r["model"], "queries": int(q),
                         "reactivated": m["reactivated"]["asr_at"][q], "guaa": m["guaa"]["asr_at"][q]})
    df = pd.DataFrame.from_records(recs, columns=["attack", "model", "queries", "reactivated", "guaa"])
    return _order(df.sort_values("queries", kind="stable"), models)


def transfer_table(rows: list[dict], surrogates: dict, model_types: dict, models: list[str]) -> pd.DataFrame:
    """surrogates: set -> {"arch", "defense_types"}; model_types: defended model -> its defense type. A target
    is ``seen`` when the attacker used the same defense method (with its own settings, seed and data)."""
    recs = []
    for r in rows:
        for s, res in sorted(read_json(r["transfer"], keys=("metrics",))["metrics"].items()):
            for variant, asr in sorted(res.items()):
                recs.append({"attack": r["attack"], "model": r["model"], "surrogate": s,
                             "arch": surrogates[s]["arch"], "variant": variant, "asr": asr,
                             "seen": model_types.get(r["model"]) in surrogates[s]["defense_types"]})
    return _order(pd.DataFrame.from_records(recs), models)


def evidence_tables(rows: list[dict], models: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    cka, noise = [], []
    for r in rows:
        if not r.get("evidence"):
            continue
        m = read_json(r["evidence"], keys=("metrics",))["metrics"]
        cka.append({"attack": r["attack"], "model": r["model"], **m["cka"]})
        for level, v in m["noise"].items():
            noise.append({"attack": r["attack"], "model": r["model"], "noise": float(level), **v})
    cols = ["attack", "model", "trigger", "reactivated", "guaa"]
    return (_order(pd.DataFrame.from_records(cka, columns=cols), models),
            _order(pd.DataFrame.from_records(noise, columns=["attack", "model", "noise", *cols[2:]]), models))


def figure_query(rows: list[dict], path) -> None:
    """Batch ASR against queries spent, re-activation (solid) vs gUAA (dashed); one panel per attack (shared
    axes, wrapping), every model in its own colour and marker."""
    looks = styles_for(r["model"] for r in rows)
    fig, axes = facets(sorted({r["attack"] for r in rows}), panel=(4.0, 3.2))
    for a, ax in axes.items():
        for r in (x for x in rows if x["attack"] == a):
            curves = read_json(r["query"], keys=("curves",))["curves"]
            lk = looks[r["model"]]
            for name, style in (("reactivated", "-"), ("guaa", "--")):
                cur = curves[name]
                ax.plot([p[0] for p in cur], [100 * p[1] for p in cur], style, color=lk.color, lw=1,
                        marker=lk.marker, ms=4, markevery=max(1, len(cur) // 5))
        ax.set_title(a, fontsize=9)
        ax.set_ylim(-3, 103)
    label_panels(axes, "queries", "batch ASR (%)")
    from matplotlib.lines import Line2D

    legend_right(fig, {"query-based re-activation": Line2D([], [], color="0.3", ls="-"),
                       "gUAA": Line2D([], [], color="0.3", ls="--")} | model_handles(looks, looks))
    savefig(fig, path)


def figure_transfer(df: pd.DataFrame, path) -> None:
    """Transfer ASR per target model, one bar per (surrogate set, variant); hatched = seen defense method."""
    fig, axes = facets(sorted(df["attack"].unique()), panel=(5.0, 3.4), sharex=False)
    for a, ax in axes.items():
        sub = df[df["attack"] == a]
        models = list(dict.fromkeys(sub["model"]))
        keys = list(dict.fromkeys(zip(sub["surrogate"], sub["variant"])))
        w = 0.8 / max(1, len(keys))
        for k, (s, v) in enumerate(keys):
            part = sub[(sub["surrogate"] == s) & (sub["variant"] == v)].set_index("model").reindex(models)
            xs = [i - 0.4 + w * (k + 0.5) for i in range(len(models))]
            bars = ax.bar(xs, part["asr"], w, label=f"{s} ({v})", color=plt.cm.tab20(k % 20))
            for b, seen in zip(bars, part["seen"]):
                if seen:
                    b.set_hatch("//")
        ax.set_xticks(range(len(models)), models, fontsize=7)
        ax.set_ylim(0, 105)
        ax.set_ylabel("ASR (%)")
        ax.set_title(f"{a}: transferred re-activation", fontsize=8)
        ax.legend(fontsize=6, frameon=False)
    savefig(fig, path)


def _defended(df: pd.DataFrame) -> pd.DataFrame:
    return df[~df["model"].isin(["clean", "backdoor"])]


def _finish(ax, fig, path, xlabel, ylabel, title, ylim=(-3, 103)) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(*ylim)
    ax.legend(fontsize=6, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title, fontsize=9)
    savefig(fig, path)


def figure_cka(cka: pd.DataFrame, path) -> None:
    """(a) Linear CKA with the backdoored model's features on triggered images, per model; one panel per attack."""
    attacks = sorted(cka["attack"].unique()) or ["(none)"]
    n = max([(cka["attack"] == a).sum() for a in attacks] + [1])
    width = max(3.6, 0.5 * n + 1.0)  # bars of every model side by side
    fig, axes = facets(attacks, panel=(width, 3.0), wrap=wrap_for(width), sharex=False)
    w = 0.27
    for a, ax in axes.items():
        sub = cka[cka["attack"] == a].reset_index(drop=True)
        for k, (col, color) in enumerate((("trigger", "0.55"), ("reactivated", "tab:red"), ("guaa", "tab:blue"))):
            ax.bar([i + (k - 1) * w for i in range(len(sub))], sub[col], w, color=color, label=col)
        ax.set_xticks(range(len(sub)), sub["model"], rotation=60, ha="right", fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_title(a, fontsize=9)
    first = next(iter(axes.values()))
    label_panels(axes, "", "linear CKA with f_A(x + trigger)")
    legend_right(fig, dict(zip(*reversed(first.get_legend_handles_labels()))))
    fig.suptitle("(a) feature similarity", fontsize=9)
    savefig(fig, path)


def figure_checkpoints(checkpoints: pd.DataFrame, path) -> None:
    """(b) Query-based re-activation vs gUAA at fixed query counts, mean over each attack's defenses."""
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    for i, (a, grp) in enumerate(_defended(checkpoints).groupby("attack")):
        mean = grp.groupby("queries")[["reactivated", "guaa"]].mean()
        c = plt.cm.tab10(i % 10)
        ax.plot(mean.index, mean["reactivated"], "-o", color=c, label=f"{a} re-activation")
        ax.plot(mean.index, mean["guaa"], "--s", color=c, label=f"{a} gUAA")
    _finish(ax, fig, path, "queries", "ASR (%), mean over defenses", "(b) query-based: re-activation vs gUAA")


def figure_noise(noise: pd.DataFrame, path) -> None:
    """(c) ASR under uniform random L-inf noise, mean over each attack's defenses."""
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    for i, (a, grp) in enumerate(_defended(noise).groupby("attack")):
        mean = grp.groupby("noise")[["trigger", "reactivated", "guaa"]].mean()
        c = plt.cm.tab10(i % 10)
        ax.plot(mean.index, mean["trigger"], ":^", color=c, label=f"{a} trigger on f_A")
        ax.plot(mean.index, mean["reactivated"], "-o", color=c, label=f"{a} re-activation")
        ax.plot(mean.index, mean["guaa"], "--s", color=c, label=f"{a} gUAA")
    _finish(ax, fig, path, "L-inf noise", "ASR (%), mean over defenses", "(c) random-noise robustness")


def write_all(rows: list[dict], surrogates: dict, model_types: dict, models: list[str], out: dict) -> pd.DataFrame:
    """Writes every table and figure; ``out`` maps summary/checkpoints/transfer/cka/noise (CSVs) and
    fig_query/fig_transfer/fig_cka/fig_checkpoints/fig_noise (PNGs) to paths. Returns the summary."""
    summary = summary_table(rows, models)
    checkpoints = query_checkpoints(rows, models)
    transfer = transfer_table(rows, surrogates, model_types, models)
    cka, noise = evidence_tables(rows, models)
    for key, df in (("summary", summary), ("checkpoints", checkpoints), ("transfer", transfer), ("cka", cka),
                    ("noise", noise)):
        best = {c: w for c, w in best_for(df.columns).items() if c != "queries"} if key == "summary" else None
        write_csv_tex(df, out[key], **({"best": best} if best is not None else {}), **LATEX[key])
    figure_query(rows, out["fig_query"])
    figure_transfer(transfer, out["fig_transfer"])
    figure_cka(cka, out["fig_cka"])
    figure_checkpoints(checkpoints, out["fig_checkpoints"])
    figure_noise(noise, out["fig_noise"])
    return summary
