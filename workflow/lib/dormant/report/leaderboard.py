"""The dormancy leaderboard: one table and one figure per run (dataset x architecture) with, for every attack x
defense, what the defense reached and what re-activation gets back (Zhu, Liang & Wu, NeurIPS 2024, Table 2 and
Figure 1 in one place), plus two things no published table has: the queries the query-based search needed to reach
90% of the white-box re-activated ASR, and BEC at every channel fraction the BEC stage computed.

Columns (percent unless said otherwise):

* ``c_acc``, ``asr``: clean accuracy and attack success rate of the defended model (the original trigger);
* ``bec`` (headline fraction) and ``bec_<q>`` per channel fraction q in percent (section 6, Eq. 4-5);
* ``asr_whitebox``, ``asr_query``, ``asr_transfer_<set>``: ASR of the trigger plus the white-box, query-based
  and transfer-based re-activation perturbation (section 7; the transfer variant ``report.transfer_variant``);
* ``asr_guaa``: the white-box gUAA baseline (a universal perturbation without the trigger);
* ``queries_to_90``: first query count at which the query search's batch ASR reached 90% of the white-box ASR;
  undefined (empty in the CSV, "not reached" in the page) when it never did or the white-box ASR is 0.

Writers: CSV, Markdown, LaTeX (:mod:`dormant.report.latex`, grouped by attack), the figure as PNG and PDF, and a
self-contained HTML page (inline CSS and JavaScript, the figure as a base64 PNG, a table sortable by any column).
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from dormant.errors import ConfigError
from dormant.io import read_json, write_text
from dormant.report.common import savefig, to_markdown, write_csv
from dormant.report.latex import write_latex

REACH = 0.9  # "queries to reach 90% of the white-box re-activated ASR"
TRANSFER_VARIANT = "mom"
_BEC_COL = re.compile(r"^bec_\d+$")


def first_reach(curve, level: float) -> int | None:
    """The first query count of ``curve`` ([queries, batch ASR in [0, 1], ...] points, in query order) whose ASR
    is at least ``level``; None when the search never got there."""
    for point in curve:
        if point[1] >= level:
            return int(point[0])
    return None


def queries_to_fraction(curve, asr_whitebox: float, reach: float = REACH) -> float:
    """Queries needed to reach ``reach`` x the white-box ASR (percent); NaN when never reached or when the
    white-box ASR is 0 (90% of nothing says nothing)."""
    if not asr_whitebox > 0:
        return math.nan
    hit = first_reach(curve, reach * asr_whitebox / 100.0)
    return math.nan if hit is None else float(hit)


def build_leaderboard(rows: list[dict], params: dict) -> pd.DataFrame:
    """rows: one dict per (attack, defense) with the paths of its metrics, bec, reactivation, query and transfer
    JSONs; a row order of attack, then defense as given. Columns as in the module docstring."""
    variant = (params.get("report") or {}).get("transfer_variant", TRANSFER_VARIANT)
    dataset = (params.get("data") or {}).get("dataset", "")
    arch = (params.get("model") or {}).get("arch", "")
    recs = []
    for r in rows:
        m = read_json(r["metrics"], keys=("metrics",))["metrics"]
        b = read_json(r["bec"], keys=("metrics",))["metrics"]
        wb = read_json(r["reactivation"], keys=("metrics",))["metrics"]
        q = read_json(r["query"], keys=("metrics", "curves"))
        rec = {"dataset": dataset, "arch": arch, "attack": r["attack"], "defense": r["defense"],
               "c_acc": m["c_acc"], "asr": m["asr"], "bec": b["bec"]}
        rec.update({k: v for k, v in b.items() if _BEC_COL.match(k)})
        rec.update(asr_whitebox=wb["asr_reactivated"], asr_query=q["metrics"]["reactivated"]["asr"])
        for surrogate, res in sorted(read_json(r["transfer"], keys=("metrics",))["metrics"].items()):
            if variant not in res:
                raise ConfigError(f"report.transfer_variant: {variant!r} was not computed for {r['transfer']} "
                                  f"(it has {', '.join(sorted(res))}; see transfer.variants)")
            rec[f"asr_transfer_{surrogate}"] = res[variant]
        rec["asr_guaa"] = wb["asr_guaa"]
        rec["queries_to_90"] = queries_to_fraction(q["curves"]["reactivated"], wb["asr_reactivated"])
        recs.append(rec)
    df = pd.DataFrame.from_records(recs)
    if df.empty:  # a run without defenses
        return pd.DataFrame(columns=["dataset", "arch", "attack", "defense", "c_acc", "asr", "bec", "asr_whitebox",
                                     "asr_query", "asr_guaa", "queries_to_90"])
    becs = sorted((c for c in df if _BEC_COL.match(c)), key=lambda c: int(c.split("_")[1]))
    transfer = sorted(c for c in df if c.startswith("asr_transfer_"))
    cols = ["dataset", "arch", "attack", "defense", "c_acc", "asr", "bec", *becs, "asr_whitebox", "asr_query",
            *transfer, "asr_guaa", "queries_to_90"]
    return df[cols]


def _shown(df: pd.DataFrame) -> pd.DataFrame:
    """The table as people read it: dataset and architecture go to the title."""
    return df.drop(columns=[c for c in ("dataset", "arch") if c in df])


def title(df: pd.DataFrame) -> str:
    ds = ", ".join(sorted(set(df["dataset"]))) if "dataset" in df and len(df) else "?"
    arch = ", ".join(sorted(set(df["arch"]))) if "arch" in df and len(df) else "?"
    return f"Dormancy leaderboard: {ds}, {arch}"


def figure(df: pd.DataFrame):
    """Figure 1 of Zhu et al. per attack: for every defense, ASR after the defense (grey) against the ASR the
    white-box, query-based and transfer-based re-activations get back (transfer: the best surrogate set)."""
    attacks = list(dict.fromkeys(df["attack"])) or ["(none)"]
    width = max(5.0, 0.55 * max((df["attack"] == a).sum() for a in attacks) + 1.5)
    fig, axes = plt.subplots(len(attacks), 1, figsize=(width, 2.8 * len(attacks)), squeeze=False,
                             layout="constrained")  # panel titles clear of the tick labels above
    transfer = [c for c in df if c.startswith("asr_transfer_")]
    bars = [("asr", "after defense", "0.6"), ("asr_whitebox", "white-box re-activation", "tab:red"),
            ("asr_query", "query-based", "tab:orange"), ("_transfer", "transfer-based (best set)", "tab:purple")]
    for ax, a in zip(axes[:, 0], attacks):
        sub = df[df["attack"] == a].copy()
        sub["_transfer"] = sub[transfer].max(axis=1) if transfer else math.nan
        w = 0.8 / len(bars)
        for k, (col, label, color) in enumerate(bars):
            xs = [i - 0.4 + w * (k + 0.5) for i in range(len(sub))]
            ax.bar(xs, sub[col], w, color=color, label=label)
        ax.set_xticks(range(len(sub)), list(sub["defense"]), fontsize=7)
        ax.set_ylim(0, 105)
        ax.set_ylabel("ASR (%)")
        ax.set_title(f"{a}: ASR after the defense and after re-activation", fontsize=9)
    axes[0, 0].legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title(df), fontsize=10)
    return fig


def write_figure(fig, png) -> bytes:
    """The figure as PNG and, next to it, PDF (dormant.report.common.savefig, byte-reproducible); returns the
    PNG's bytes."""
    savefig(fig, png)
    return Path(png).read_bytes()


def _cell(col: str, v) -> tuple[str, str]:
    """(text shown, sort key) of one cell; undefined numbers show as "not reached" / "n/a" and sort last."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if math.isnan(v):
            return ("not reached" if col == "queries_to_90" else "n/a"), ""
        digits = 0 if col == "queries_to_90" else 3 if col.startswith("bec") else 1
        return f"{v:.{digits}f}", repr(float(v))
    return str(v), str(v)


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px}
th{background:#eee;cursor:pointer;user-select:none;white-space:nowrap}td.num{text-align:right}
th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}td.undef{color:#999}
img{max-width:100%;border:1px solid #ddd;margin-top:1em}p.note{font-size:13px;max-width:60em}"""

# Click a header: sort by that column, numbers as numbers (data-v), undefined cells last; click again: reverse.
_JS = """(function(){var t=document.getElementById('leaderboard');var hs=t.tHead.rows[0].cells;
function key(td){var v=td.getAttribute('data-v');if(v===''||v===null)return null;var n=parseFloat(v);
return isNaN(n)?v:n;}
function sort(i){var th=hs[i];var asc=!th.classList.contains('asc');for(var j=0;j<hs.length;j++){
hs[j].classList.remove('asc','desc');}th.classList.add(asc?'asc':'desc');var b=t.tBodies[0];
var rows=Array.prototype.slice.call(b.rows);rows.sort(function(r,s){var a=key(r.cells[i]),c=key(s.cells[i]);
if(a===null&&c===null)return 0;if(a===null)return 1;if(c===null)return -1;
var d=(typeof a==='number'&&typeof c==='number')?a-c:String(a).localeCompare(String(c));return asc?d:-d;});
rows.forEach(function(r){b.appendChild(r);});}
for(var i=0;i<hs.length;i++){(function(i){hs[i].addEventListener('click',function(){sort(i);});})(i);}
window.sortLeaderboard=sort;})();"""


def html_page(df: pd.DataFrame, png: bytes) -> str:
    """One self-contained page: the sortable table and the figure (base64 PNG); no external resource."""
    shown = _shown(df)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in shown.columns)
    body = []
    for _, row in shown.iterrows():
        cells = []
        for col in shown.columns:
            text, key = _cell(col, row[col])
            cls = "num" if isinstance(row[col], (int, float)) else ""
            cls += " undef" if key == "" and cls else ""
            cells.append(f'<td class="{cls.strip()}" data-v="{html.escape(key)}">{html.escape(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    name = html.escape(title(df))
    img = base64.b64encode(png).decode("ascii")
    note = ("Percent unless said otherwise. asr: the original trigger on the defended model; asr_whitebox, "
            "asr_query, asr_transfer_*: the trigger plus the white-box, query-based and transfer-based "
            "re-activation perturbation; asr_guaa: a universal perturbation without the trigger; bec_q: BEC with "
            "q% of each layer's channels; queries_to_90: queries the query search needed to reach 90% of the "
            "white-box ASR. Click a column header to sort.")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{name}</title>"
            f"<style>{_CSS}</style></head><body>\n<h1>{name}</h1>\n<p class=\"note\">{html.escape(note)}</p>\n"
            f"<table id=\"leaderboard\"><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body)
            + f"\n</tbody></table>\n<img id=\"figure\" alt=\"{name}\" src=\"data:image/png;base64,{img}\">\n"
            f"<script>{_JS}</script>\n</body></html>\n")


def write_all(df: pd.DataFrame, out: dict) -> None:
    """``out``: csv, md, tex, png, html -> path; the PDF goes next to the PNG (same stem)."""
    write_csv(df, out["csv"])
    shown = _shown(df)
    md = shown.astype({"queries_to_90": object})
    md["queries_to_90"] = [_cell("queries_to_90", v)[0] for v in shown["queries_to_90"]]
    write_text(out["md"], f"# {title(df)}\n\n" + to_markdown(md, digits=2))
    tex = shown.astype({"queries_to_90": object})  # whole numbers; NaN stays NaN (a dash)
    tex["queries_to_90"] = pd.Series([v if math.isnan(v) else int(v) for v in shown["queries_to_90"]],
                                     index=shown.index, dtype=object)
    write_latex(tex, out["tex"], caption=title(df) + " (percent; queries_to_90: queries to 90% of the "
                "white-box re-activated ASR, a dash where not reached)", label="tab:leaderboard",
                group="attack" if "attack" in shown else None)
    png = write_figure(figure(df), out["png"])
    write_text(out["html"], html_page(df, png))
