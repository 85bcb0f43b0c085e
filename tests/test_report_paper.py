"""Paper outputs of the report (issue 18): every figure also as a byte-reproducible PDF, every table also as LaTeX,
figures that grow with the grid faceted by attack, one colour and marker per model in every figure, and a
metrics.json that holds numbers only (what ``dvc metrics show`` lists)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import pytest
from dormant.report import blackbox, defenses, seeds, style, table
from dormant.report.common import savefig

ATTACKS = ["badnets", "blended", "wanet", "sig", "trojan"]
MODELS = ["clean", "backdoor", "anp", "ft", "nad"]


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


def _rows(tmp_path, attacks=ATTACKS[:2], models=MODELS):
    """Fabricated stage JSONs of every (attack, model): metrics, BEC, re-activation, query, transfer, evidence."""
    rows = []
    for i, a in enumerate(attacks):
        for j, m in enumerate(models):
            d = tmp_path / "analysis" / a / m
            d.mkdir(parents=True)
            asr = {"clean": 2.0, "backdoor": 99.0}.get(m, 10.0 + 7 * j + i)
            der = float("nan") if m == "clean" else 50.0 + j
            curve = [[q, min(1.0, 0.1 * k + 0.05 * j), 0] for k, q in enumerate((50, 100, 200, 400))]
            rows.append({
                "attack": a, "model": m,
                "metrics": _write(d / "metrics.json", {"metrics": {"c_acc": 90.0 - j, "asr": asr, "ra": 50.0 - j,
                                                                   "der": der}}),
                "bec": _write(d / "bec.json", {"metrics": {"bec": 0.1 * j, "bec_5": 0.1, "bec_10": 0.2,
                                                           "bec_20": 0.3, "S": 0.5 + 0.1 * j}}),
                "reactivation": _write(d / "reactivation.json", {"metrics": {
                    "asr_trigger": asr, "asr_reactivated": min(100.0, asr + 40), "asr_guaa": 5.0 + j}}),
                "query": _write(d / "query.json", {
                    "metrics": {"reactivated": {"asr": 80.0, "queries": 400, "asr_at": {"100": 50.0, "400": 80.0}},
                                "guaa": {"asr": 5.0, "asr_at": {"100": 3.0, "400": 5.0}}},
                    "curves": {"reactivated": curve, "guaa": [[q, f / 4, 0] for q, f, _ in curve]}}),
                "transfer": _write(d / "transfer.json", {"metrics": {"same_arch": {"mom": 70.0, "plain": 60.0}}}),
                "evidence": _write(d / "evidence.json", {"metrics": {
                    "cka": {"trigger": 0.9, "reactivated": 0.8, "guaa": 0.3},
                    "noise": {"0.05": {"trigger": 90.0, "reactivated": 80.0, "guaa": 10.0}}}}),
            })
    return rows


def _siblings_complete(folder):
    csv = sorted(p.stem for p in folder.glob("*.csv"))
    png = sorted(p.stem for p in folder.glob("*.png"))
    assert csv and sorted(p.stem for p in folder.glob("*.tex")) == csv
    assert sorted(p.stem for p in folder.glob("*.pdf")) == png
    for p in folder.glob("*.pdf"):
        assert p.read_bytes()[:5] == b"%PDF-", p
    for p in folder.glob("*.tex"):
        tex = p.read_text()
        label = tex.split("\\label{", 1)[1].split("}", 1)[0]
        assert "\\toprule" in tex and label.startswith("tab:") and label.endswith(p.stem), p
        assert len(tex.split("\\caption{", 1)[1].split("}", 1)[0]) > 40, p  # a caption that says something


def test_savefig_writes_png_and_byte_identical_pdf_without_fonttools_chatter(tmp_path, caplog):
    def draw(path):
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [3, 1, 2], "-o", label="ft_sam")
        ax.set_title("BEC vs. ASR")
        ax.legend()
        savefig(fig, path)

    with caplog.at_level(logging.DEBUG):
        draw(tmp_path / "a.png")
        draw(tmp_path / "b.png")
    a, b = (tmp_path / "a.pdf").read_bytes(), (tmp_path / "b.pdf").read_bytes()
    assert a[:5] == b"%PDF-" and a == b and b"CreationDate" not in a
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert not [r for r in caplog.records if r.name.startswith("fontTools") and r.levelno < logging.WARNING]
    assert not plt.get_fignums()  # closed


def test_table_family_has_a_pdf_per_figure_and_a_tex_per_table(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    rows = _rows(tmp_path)
    df = table.build_table(rows, {})
    table.write_table(df, out / "table.csv", out / "table.md", out / "metrics.json")
    table.figure_bec_vs_asr(df, out / "bec_vs_asr.png")
    table.figure_reactivation(df, out / "reactivation.png")
    rounds = table.rounds_table({})  # no progressive defense: an empty table still has its LaTeX copy
    table.write_csv_tex(rounds, out / "pbe_rounds.csv", caption=table.ROUNDS_CAPTION, best={}, group="attack")
    table.figure_rounds(rounds, out / "pbe_rounds.png")
    _siblings_complete(out)
    tex = (out / "table.tex").read_text()
    # the reference rows are not candidates: the best C-ACC among the defenses (anp, 88.00) is bold, not clean's
    assert "\\textbf{88.00}" in tex and "\\textbf{90.00}" not in tex


def test_blackbox_defenses_and_seeds_families_have_their_paper_files(tmp_path):
    rows = _rows(tmp_path)
    bb = tmp_path / "bb"
    bb.mkdir()
    names = {"summary": "blackbox.csv", "checkpoints": "query_checkpoints.csv", "transfer": "transfer.csv",
             "cka": "evidence_cka.csv", "noise": "evidence_noise.csv", "fig_query": "query.png",
             "fig_transfer": "transfer.png", "fig_cka": "evidence_cka.png", "fig_checkpoints": "query_checkpoints.png",
             "fig_noise": "evidence_noise.png"}
    summary = blackbox.write_all(rows, {"same_arch": {"arch": "cnn_tiny", "defense_types": ["ft"]}},
                                 {"anp": "anp", "ft": "ft", "nad": "nad"}, MODELS,
                                 {k: str(bb / v) for k, v in names.items()})
    _siblings_complete(bb)

    grid = tmp_path / "grid"
    grid.mkdir()
    grid_rows = [{"attack": r["attack"], "defense": r["model"], "type": r["model"], "metrics": r["metrics"],
                  "sidecar": None} for r in rows if r["model"] != "clean"]
    defenses.write_grid(grid_rows, grid / "defense_grid.csv", grid / "defense_grid.md", grid / "defense_grid.png")
    _siblings_complete(grid)

    sd = tmp_path / "seeds"
    sd.mkdir()
    per_seed = {s: table.build_table(rows, {}).assign(asr=lambda d, s=s: d["asr"] + s) for s in (0, 1, 2)}
    agg = seeds.write_seed_tables(per_seed, sd / "table_seeds.csv", sd / "table.csv", sd / "table.md",
                                  caption="the main table's metrics")
    seeds.write_seed_tables({s: summary for s in (0, 1)}, sd / "blackbox_seeds.csv", sd / "blackbox.csv")
    tex = (sd / "table.tex").read_text()
    assert "\\label{tab:seeds_table}" in tex and "c\\_acc\\_mean" not in tex and "asr\\_std" not in tex
    ft = next(line for line in tex.splitlines() if line.startswith("badnets & ft &"))
    assert "$\\pm$ 1.00" in ft  # ASR of seeds 0, 1, 2 is x, x + 1, x + 2: sample std 1
    seeds.figure_asr(agg, sd / "asr.png")
    seeds.figure_bec_vs_asr(agg, sd / "bec_vs_asr.png")
    _siblings_complete(sd)


def _capture(monkeypatch, module):
    figs = []
    monkeypatch.setattr(module, "savefig", lambda fig, path: figs.append(fig))
    return figs


def _looks(fig) -> dict:
    """Legend label -> (RGBA colour, marker) of a figure's legend entries that draw a marker."""
    out = {}
    for leg in fig.legends:
        for h, t in zip(leg.legend_handles, leg.get_texts()):
            if hasattr(h, "get_marker") and h.get_marker() not in (None, "None", ""):
                out[t.get_text()] = (mcolors.to_rgba(h.get_color()), h.get_marker())
    return out


@pytest.mark.parametrize("figure", ["bec", "reactivation", "query"])
def test_growing_figures_have_one_panel_per_attack_on_a_wrapping_grid(tmp_path, monkeypatch, figure):
    rows = _rows(tmp_path, attacks=ATTACKS)
    df = table.build_table(rows, {})
    figs = _capture(monkeypatch, blackbox if figure == "query" else table)
    if figure == "bec":
        table.figure_bec_vs_asr(df, "x.png")
    elif figure == "reactivation":
        table.figure_reactivation(df, "x.png")
    else:
        blackbox.figure_query(rows, "x.png")
    (fig,) = figs
    shown = [ax for ax in fig.axes if ax.axison]
    assert sorted(ax.get_title() for ax in shown) == sorted(ATTACKS)  # one panel per attack
    rows_, cols = style.facet_shape(len(ATTACKS))
    assert (rows_, cols) == (2, 4) and len(fig.axes) == 8  # wraps after 4; the 3 spare cells are switched off
    first = shown[0]
    assert all(ax.get_ylim() == first.get_ylim() for ax in shown)  # shared y axis
    plt.close(fig)


def test_same_model_same_colour_and_marker_in_every_figure(tmp_path, monkeypatch):
    rows = _rows(tmp_path)
    df = table.build_table(rows, {})
    captured = [_capture(monkeypatch, m) for m in (table, blackbox, seeds)]
    table.figure_bec_vs_asr(df, "x.png")
    table.figure_reactivation(df, "x.png")
    blackbox.figure_query(rows, "x.png")
    agg = seeds.aggregate(seeds.stack({0: df, 1: df}))
    seeds.figure_bec_vs_asr(agg, "x.png")
    seeds.figure_asr(agg, "x.png")
    looks = [_looks(f) for figs in captured for f in figs]
    assert len(looks) == 5
    want = {m: (mcolors.to_rgba(lk.color), lk.marker) for m, lk in style.styles_for(MODELS).items()}
    for got in looks:
        assert {m: got[m] for m in MODELS} == want
    plt.close("all")


def test_model_styles_are_deterministic_distinct_and_independent_of_row_order():
    defs = [f"d{i:02d}" for i in range(16)]
    a = style.styles_for(["clean", "backdoor", *defs])
    b = style.styles_for(list(reversed(defs)) + ["backdoor", "clean", "d03"])
    assert a == b and list(a)[:2] == ["clean", "backdoor"]
    colours = [mcolors.to_rgba(a[d].color) for d in defs]
    assert len(set(colours)) == 16 and len({a[d].marker for d in defs}) == 16
    refs = {mcolors.to_rgba(a[m].color) for m in ("clean", "backdoor")}
    assert not refs & set(colours)
    more = style.model_styles([f"d{i:02d}" for i in range(32)])
    assert len({(mcolors.to_rgba(v.color), v.marker) for v in more.values()}) == 32  # pairs stay distinct
    assert style.facet_shape(1) == (1, 1) and style.facet_shape(8) == (2, 4) and style.facet_shape(9) == (3, 4)


def test_metrics_json_holds_numbers_only(tmp_path):
    df = table.build_table(_rows(tmp_path), {})
    assert df["der"].isna().any() and df["bec_minmax"].isna().any()  # undefined metrics exist
    table.write_table(df, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "metrics.json")
    metrics = json.loads((tmp_path / "metrics.json").read_text())

    def leaves(obj):
        if isinstance(obj, dict):
            for v in obj.values():
                yield from leaves(v)
        else:
            yield obj

    values = list(leaves(metrics))
    assert values and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                          for v in values)
    assert "der" not in metrics["badnets"]["clean"] and metrics["badnets"]["backdoor"]["asr"] == 99.0


def test_rules_declare_the_paper_files():
    text = (Path(__file__).parents[1] / "workflow" / "rules" / "common.smk").read_text()
    ns: dict = {}
    src = text.split("def paper_files(outputs):", 1)[1].split("\n\n\n", 1)[0]
    exec("import os\ndef paper_files(outputs):" + src, ns)  # the helper as the rules define it
    got = ns["paper_files"]({"csv": "r/table.csv", "md": "r/table.md", "fig": "r/a.png", "json": "r/m.json"})
    assert got == ["r/table.tex", "r/a.pdf"]
