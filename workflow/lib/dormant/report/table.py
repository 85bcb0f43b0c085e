"""Paper-style outputs: one tidy table (a row per model) and the figures.

* table: attack, model (clean / backdoor / defense name), C-ACC, ASR, RA, DER, BEC (headline fraction, plus
  5/10/20% and the reference code's min-max variant), ASR after white-box re-activation, gUAA ASR, and where
  those stages ran, query-based re-activation (ASR, queries spent, query gUAA) and the transfer ASR per
  surrogate set of the variant ``report.transfer_variant``, named in the column (``asr_transfer_<set>_<variant>``;
  :mod:`dormant.report.blackbox` has every variant's detailed tables and figures).
* figure 1 of the re-activation paper: BEC (y) against ASR after defense (x).
* ASR with the original trigger vs. after re-activation vs. gUAA, per model.
* trigger gallery: clean image, poisoned image, amplified difference, per attack.
* per-model training histories (one CSV per trained or defended model: ``dvc plots show`` draws them).
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pandas as pd
import torch

from dormant.analysis.bec import minmax_bec
from dormant.analysis.metrics import poisoned_test_index
from dormant.data.augment import to_float
from dormant.errors import ConfigError
from dormant.io import read_json, write_json, write_text
from dormant.report.common import savefig, to_markdown, write_csv, write_csv_tex
from dormant.report.latex import best_for
from dormant.report.style import facets, label_panels, legend_right, model_handles, styles_for, wrap_for

TRANSFER_VARIANT = "mom"  # the reference code's momentum form (docs/methods.md section 7.4)
COLUMNS = ["attack", "model", "c_acc", "asr", "ra", "der", "bec", "bec_5", "bec_10", "bec_20", "bec_minmax",
           "asr_reactivated", "asr_guaa"]


def build_table(rows: list[dict], params: dict) -> pd.DataFrame:
    """rows: one dict per model with keys attack, model, metrics, bec, reactivation (paths to stage JSONs)."""
    recs = []
    variant = (params.get("report") or {}).get("transfer_variant", TRANSFER_VARIANT)
    for r in rows:
        m = read_json(r["metrics"], keys=("metrics",))["metrics"]
        b = read_json(r["bec"], keys=("metrics",))["metrics"]
        ra = read_json(r["reactivation"], keys=("metrics",))["metrics"]
        rec = {
            "attack": r["attack"], "model": r["model"], "c_acc": m["c_acc"], "asr": m["asr"], "ra": m["ra"],
            "der": m["der"], "bec": b["bec"], "bec_5": b.get("bec_5"), "bec_10": b.get("bec_10"),
            "bec_20": b.get("bec_20"), "S": b["S"],
            "asr_reactivated": ra["asr_reactivated"], "asr_guaa": ra["asr_guaa"],
        }
        if r.get("query"):
            q = read_json(r["query"], keys=("metrics",))["metrics"]
            rec.update(asr_query=q["reactivated"]["asr"], queries=q["reactivated"]["queries"],
                       asr_query_guaa=q["guaa"]["asr"])
        if r.get("transfer"):
            for surrogate, res in sorted(read_json(r["transfer"], keys=("metrics",))["metrics"].items()):
                if variant not in res:
                    raise ConfigError(f"report.transfer_variant: {variant!r} was not computed for {r['transfer']} "
                                      f"(it has {', '.join(sorted(res))}; see transfer.variants)")
                rec[f"asr_transfer_{surrogate}_{variant}"] = res[variant]
        recs.append(rec)
    df = pd.DataFrame.from_records(recs)
    df["bec_minmax"] = math.nan
    for _, grp in df.groupby("attack"):
        # the reference form: over the clean model and the defended models (not the backdoored one)
        pool = grp[grp["model"] != "backdoor"]
        if (pool["model"] != "clean").any():
            mm = minmax_bec(dict(zip(pool.index, pool["S"])))
            df.loc[list(mm), "bec_minmax"] = list(mm.values())
    extra = [c for c in ("asr_query", "queries", "asr_query_guaa") if c in df]
    extra += sorted(c for c in df if c.startswith("asr_transfer_"))
    return df[COLUMNS + extra]


def method_variants(rows: list[dict], defenses: dict | None, params: dict) -> list[str]:
    """One line per method whose variant the numbers depend on, read from what the stages recorded (BEC's
    sidecars, the query searches' precision, the defended models' settings): where this project offers both
    the reference code's form and another (docs/methods.md), the table says which one it holds."""
    out = []
    bec = [read_json(r["bec"]) for r in rows if r.get("bec")]
    if bec:
        b = bec[0]
        out.append(f"BEC: {b.get('channel_rounding', 'round')} of q x C channels per layer (at least 1), TAC ranked on "
                   f"{b.get('tac_images', b.get('n_images'))} and CKA on {b.get('n_images')} poisoned test images; "
                   "bec_minmax normalises S over each attack's clean model and its defenses")
    modes = set()
    for r in rows:
        if r.get("query"):
            for v in read_json(r["query"], keys=("metrics",))["metrics"].values():
                if isinstance(v, dict) and isinstance(v.get("precision"), dict):
                    modes.add(v["precision"].get("mode"))
    if modes:
        out.append(f"query oracle precision: {', '.join(sorted(m for m in modes if m))}")
    if any(r.get("transfer") for r in rows):
        variant = (params.get("report") or {}).get("transfer_variant", TRANSFER_VARIANT)
        out.append(f"transfer columns: the {variant!r} variant (every variant is in blackbox.csv)")
    seen = {}
    for path, who in sorted((defenses or {}).items()):
        cfg = read_json(path).get("config", {}).get("defense", {})
        t = cfg.get("type")
        if t == "pbe":
            seen[who["defense"]] = f"PBE, {cfg.get('adversarial_schedule', 'every_batch')} adversarial schedule"
        elif t == "clp":
            seen[who["defense"]] = f"CLP, {cfg.get('pairing', 'direct')} BN-conv pairing"
        elif t == "ftsam":
            seen[who["defense"]] = f"FT-SAM, ASAM ascent with eta {cfg.get('eta')}"
    out += [f"{name}: {text}" for name, text in sorted(seen.items())]
    return out


REFERENCE_MODELS = ("clean", "backdoor")  # not candidates for a table's best value: the defenses are compared
TABLE_CAPTION = ("Clean accuracy (C-ACC), attack success rate (ASR), robust accuracy (RA), defense effectiveness "
                 "(DER), backdoor existence coefficient (BEC) and ASR after re-activation and of gUAA, per attack "
                 "and model; best defense per attack in bold (the clean and backdoored models are references)")
OBSERVATION_CAPTION = ("PBE's observation: share of untargeted adversarial examples that succeed and that land on "
                       "the target class, and feature cosine similarities, clean vs. backdoored model per attack")
ROUNDS_CAPTION = ("Progressive Backdoor Erasing per round: selected subset, its precision, and C-ACC, ASR and RA "
                  "after the round")


def write_table(df: pd.DataFrame, csv_path, md_path, json_path=None, notes: list[str] | None = None) -> None:
    """CSV (for pandas and DVC plots), Markdown (for people; ``notes`` as a list under it) and nested JSON (for
    ``dvc metrics``: attack -> model -> metric -> number, undefined metrics left out). The CSV also as LaTeX."""
    best = {c: way for c, way in best_for(df.columns).items() if c != "queries"}  # spent: the search's budget
    write_csv_tex(df, csv_path, caption=TABLE_CAPTION, best=best, exclude={"model": REFERENCE_MODELS},
                  group="attack")
    md = to_markdown(df)
    if notes:
        md = md.rstrip("\n") + "\n\nMethod variants:\n\n" + "".join(f"- {n}\n" for n in notes)
    write_text(md_path, md)
    if json_path is not None:
        nested: dict = {}
        for _, r in df.iterrows():
            # numbers only (``dvc metrics show`` lists each): a metric undefined for a model (NaN) is left out
            nested.setdefault(r["attack"], {})[r["model"]] = {
                k: round(float(v), 4) for k, v in r.items()
                if k not in ("attack", "model") and v is not None and not (isinstance(v, float) and math.isnan(v))}
        write_json(json_path, nested)


HISTORY_COLUMNS = ["epoch", "loss", "train_acc", "lr", "c_acc", "asr", "ra"]


def write_history(sidecar, csv_path) -> pd.DataFrame:
    """The per-epoch history of one model's sidecar as a CSV with fixed columns (empty cells where a
    value was not measured: test metrics only every ``eval_every`` epochs, none for defenses)."""
    hist = read_json(sidecar, expect=dict).get("history") or []
    df = pd.DataFrame.from_records(hist, columns=HISTORY_COLUMNS)
    write_csv(df, csv_path)
    return df


def figure_bec_vs_asr(df: pd.DataFrame, path) -> None:
    """Figure 1 of Zhu et al.: defenses drive ASR down while BEC stays high. One panel per attack (shared axes,
    wrapping), every model in its own colour and marker (:mod:`dormant.report.style`)."""
    looks = styles_for(df["model"])
    fig, axes = facets(sorted(df["attack"].unique()))
    for a, ax in axes.items():
        sub = df[df["attack"] == a]
        for _, r in sub.iterrows():
            lk = looks[r["model"]]
            ax.scatter(r["asr"], r["bec"], marker=lk.marker, color=lk.color, s=55, edgecolor="white",
                       linewidth=0.5, zorder=3)
        ax.axhline(0, color="0.85", lw=0.8, zorder=1)
        ax.axhline(1, color="0.85", lw=0.8, zorder=1)
        ax.set_xlim(-3, 103)
        ax.set_title(a, fontsize=9)
    label_panels(axes, "ASR (%)", "BEC")
    legend_right(fig, model_handles(looks, looks))
    fig.suptitle("Backdoor existence vs. attack success", fontsize=10)
    savefig(fig, path)


def figure_reactivation(df: pd.DataFrame, path) -> None:
    """ASR with the original trigger (light), after white-box re-activation (solid, the model's marker on top)
    and of the gUAA baseline (hatched), per model; one panel per attack, shared axes, wrapping."""
    looks = styles_for(df["model"])
    attacks = sorted(df["attack"].unique())
    n = max((df["attack"] == a).sum() for a in attacks) if attacks else 1
    width = max(3.6, 0.55 * n + 1.0)  # bars of every model side by side
    fig, axes = facets(attacks, panel=(width, 3.0), wrap=wrap_for(width), sharex=False)
    w = 0.27
    for a, ax in axes.items():
        sub = df[df["attack"] == a].reset_index(drop=True)
        for i, r in sub.iterrows():
            lk = looks[r["model"]]
            ax.bar(i - w, r["asr"], w, color=lk.color, alpha=0.35)
            ax.bar(i, r["asr_reactivated"], w, color=lk.color)
            ax.bar(i + w, r["asr_guaa"], w, color="white", edgecolor=lk.color, hatch="////", lw=0.6)
            if not math.isnan(r["asr_reactivated"]):
                ax.plot(i, r["asr_reactivated"] + 4, ls="", marker=lk.marker, color=lk.color, ms=5)
        ax.set_xticks(range(len(sub)), sub["model"], rotation=60, ha="right", fontsize=7)
        ax.set_ylim(0, 110)
        ax.set_title(a, fontsize=9)
    label_panels(axes, "", "ASR (%)")
    from matplotlib.patches import Patch

    legend_right(fig, {"original trigger": Patch(color="0.3", alpha=0.35),
                       "trigger + re-activation": Patch(color="0.3"),
                       "gUAA (no trigger)": Patch(facecolor="white", edgecolor="0.3", hatch="////")}
                 | model_handles(looks, looks))
    fig.suptitle("Re-activation restores the backdoor", fontsize=10)
    savefig(fig, path)


def figure_trigger_gallery(test, attacks: dict, path, n: int = 3, seed: int = 0) -> None:
    """Per attack: n clean test images, their poisoned versions, and |difference| scaled to full range."""
    names = sorted(attacks)
    fig, axes = plt.subplots(len(names), 3 * n, figsize=(1.1 * 3 * n, 1.25 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        atk = attacks[name]
        idx = poisoned_test_index(test.y, atk.target)
        g = torch.Generator().manual_seed(seed)
        pick = idx[torch.randperm(len(idx), generator=g)[:n]]
        x = to_float(test.x[pick])
        xp = atk.apply(x).clamp(0, 1)
        diff = (xp - x).abs()
        diff = diff / diff.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8)  # per image
        for j in range(n):
            for k, (img, title) in enumerate(((x[j], "clean"), (xp[j], "poisoned"), (diff[j], "|diff| (scaled)"))):
                ax = axes[row, 3 * j + k]
                ax.imshow(img.permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(title, fontsize=6)
            axes[row, 0].set_ylabel(name, fontsize=8)
    fig.suptitle("Triggers", fontsize=9)
    savefig(fig, path)


OBSERVATION_COLUMNS = ["attack", "model", "n_images", "adv_success", "adv_to_target", "cos_adv_trigger",
                       "cos_clean_trigger"]


def observation_table(observations: dict) -> pd.DataFrame:
    """observations: path of an observation JSON -> {"attack", "model"}."""
    recs = [{**who, **read_json(path, keys=("metrics",))["metrics"]} for path, who in observations.items()]
    return pd.DataFrame.from_records(recs, columns=[*OBSERVATION_COLUMNS, "target", "matrix_percent"])


def figure_observation(df: pd.DataFrame, path) -> None:
    """PBE's observation: where untargeted adversarial examples land (rows: true label, columns: label of the
    adversarial example, percent of the row), clean vs. backdoored model, per attack."""
    attacks = sorted(df["attack"].unique())
    models = ["clean", "backdoor"]
    fig, axes = plt.subplots(len(attacks), 2, figsize=(6.4, 3.0 * len(attacks)), squeeze=False)
    for i, a in enumerate(attacks):
        for j, m in enumerate(models):
            ax = axes[i, j]
            row = df[(df["attack"] == a) & (df["model"] == m)]
            if row.empty:
                ax.set_axis_off()
                continue
            r = row.iloc[0]
            im = ax.imshow(r["matrix_percent"], vmin=0, vmax=100, cmap="magma")
            ax.set_title(f"{a} / {m}: {r['adv_to_target']:.0f}% to target {r['target']}", fontsize=8)
            ax.set_xlabel("adversarial label", fontsize=7)
            ax.set_ylabel("true label", fontsize=7)
            ax.tick_params(labelsize=6)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="% of the true label's images")
    fig.suptitle("Where untargeted adversarial examples land: clean vs. backdoored model", fontsize=9)
    savefig(fig, path)


ROUND_COLUMNS = ["attack", "defense", "round", "selected", "fraction", "precision", "poisoned_selected", "c_acc",
                 "asr", "ra", "loss", "train_acc"]


def rounds_table(sidecars: dict) -> pd.DataFrame:
    """Per-round records of progressive defenses (PBE): sidecar path -> {"attack", "defense"}; defenses
    without rounds contribute nothing."""
    recs = []
    for path, who in sidecars.items():
        for r in read_json(path, expect=dict).get("rounds") or []:
            recs.append({**who, **r})
    return pd.DataFrame.from_records(recs, columns=ROUND_COLUMNS)


def figure_rounds(df: pd.DataFrame, path) -> None:
    """PBE per round: C-ACC and ASR after the round, precision of the subset it fine-tuned on."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    if df.empty:
        ax.text(0.5, 0.5, "no progressive defense in this config", ha="center", va="center")
        ax.set_axis_off()
    for i, ((a, d), grp) in enumerate(df.groupby(["attack", "defense"])):
        c = plt.cm.tab10(i % 10)
        ax.plot(grp["round"], grp["asr"], "-o", color=c, label=f"{a}/{d} ASR")
        ax.plot(grp["round"], grp["c_acc"], "--s", color=c, label=f"{a}/{d} C-ACC")
        ax.plot(grp["round"], grp["precision"], ":^", color=c, label=f"{a}/{d} precision")
    if not df.empty:
        ax.set_xticks(sorted(df["round"].unique()))
        ax.set_xlabel("round")
        ax.set_ylabel("%")
        ax.set_ylim(-3, 103)
        ax.legend(fontsize=6, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("Progressive Backdoor Erasing, per round")
    savefig(fig, path)
