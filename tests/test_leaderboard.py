"""The dormancy leaderboard (dormant.report.leaderboard): the table from fabricated stage JSONs (one row per
attack x defense, BEC per channel fraction, queries to 90% of the white-box ASR hand-computed and undefined where
never reached), the writers, and the self-contained HTML page rendered in a real headless Chromium (screenshot
with the table and the figure, sorting by a header click)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess

import pandas as pd
import pytest
from dormant.report.leaderboard import build_leaderboard, first_reach, queries_to_fraction, write_all

# (attack, defense): c_acc, asr, headline bec, white-box ASR, query ASR, query curve (queries, batch ASR 0-1)
CASES = {
    ("badnets", "ft"): (57.7, 58.2, 0.81, 80.0, 70.0, [[1, 0.10, 0], [50, 0.60, 0], [120, 0.72, 0], [300, 0.74, 0]]),
    ("badnets", "pbe"): (50.1, 97.3, 0.95, 98.0, 97.0, [[1, 0.5, 0], [9, 0.99, 0]]),  # needs 0.882: at 9
    ("blended", "ft"): (56.0, 85.8, 0.70, 40.0, 20.0, [[1, 0.05, 0], [300, 0.35, 0]]),  # needs 0.36: never
    ("blended", "fst"): (42.5, 3.2, 0.10, 0.0, 0.0, [[1, 0.0, 0], [300, 0.0, 0]]),  # white-box 0: undefined
}
FRACTIONS = {"bec_5": 0.5, "bec_10": None, "bec_20": 0.9}  # None: the headline value


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return str(path)


def _rows(tmp_path):
    rows = []
    for (a, d), (c_acc, asr, bec, wb, qa, curve) in CASES.items():
        base = tmp_path / a / d
        bec_m = {"bec": bec, "S": 0.5, "S_clean": 0.1,
                 **{k: (bec if v is None else v) for k, v in FRACTIONS.items()}}
        rows.append({
            "attack": a, "defense": d,
            "metrics": _write(base / "metrics.json", {"metrics": {"c_acc": c_acc, "asr": asr, "ra": 1.0, "der": 50}}),
            "bec": _write(base / "bec.json", {"metrics": bec_m}),
            "reactivation": _write(base / "reactivation.json",
                                   {"metrics": {"asr_reactivated": wb, "asr_guaa": 5.0, "asr_trigger": asr}}),
            "query": _write(base / "query.json", {"metrics": {"reactivated": {"asr": qa, "queries": 300},
                                                              "guaa": {"asr": 3.0}},
                                                  "curves": {"reactivated": curve, "guaa": [[1, 0.0, 0]]}}),
            "transfer": _write(base / "transfer.json", {"metrics": {
                "same_arch": {"plain": 10.0, "mom": qa + 1}, "cross_arch": {"plain": 9.0, "mom": qa / 2}}}),
        })
    return rows


PARAMS = {"report": {"transfer_variant": "mom"}, "data": {"dataset": "cifar10"}, "model": {"arch": "cnn_small"}}


def test_queries_to_90_hand_computed():
    curve = CASES[("badnets", "ft")][5]
    assert first_reach(curve, 0.72) == 120 and first_reach(curve, 0.75) is None
    assert queries_to_fraction(curve, 80.0) == 120  # 90% of 80% = 0.72, first at 120 queries
    assert queries_to_fraction(curve, 60.0) == 50  # 0.54: at 50
    assert math.isnan(queries_to_fraction(curve, 90.0))  # 0.81 never reached
    assert math.isnan(queries_to_fraction([[1, 0.0, 0]], 0.0))  # 90% of nothing: undefined, not 1


def test_one_row_per_attack_and_defense_with_every_column(tmp_path):
    df = build_leaderboard(_rows(tmp_path), PARAMS)
    assert list(zip(df["attack"], df["defense"])) == list(CASES)
    assert list(df.columns) == ["dataset", "arch", "attack", "defense", "c_acc", "asr", "bec", "bec_5", "bec_10",
                                "bec_20", "asr_whitebox", "asr_query", "asr_transfer_cross_arch",
                                "asr_transfer_same_arch", "asr_guaa", "queries_to_90"]
    r = df.set_index(["attack", "defense"])
    assert r.loc[("badnets", "ft"), "queries_to_90"] == 120
    assert r.loc[("badnets", "pbe"), "queries_to_90"] == 9
    assert math.isnan(r.loc[("blended", "ft"), "queries_to_90"])
    assert math.isnan(r.loc[("blended", "fst"), "queries_to_90"])
    assert r.loc[("badnets", "ft"), "bec_5"] == 0.5 and r.loc[("badnets", "ft"), "bec_20"] == 0.9
    assert r.loc[("badnets", "ft"), "bec_10"] == r.loc[("badnets", "ft"), "bec"] == 0.81
    assert r.loc[("blended", "ft"), "asr_transfer_same_arch"] == 21.0  # the mom variant, not plain
    assert r.loc[("blended", "ft"), "asr_transfer_cross_arch"] == 10.0
    assert (df["dataset"] == "cifar10").all() and (df["arch"] == "cnn_small").all()


def test_missing_transfer_variant_names_the_key(tmp_path):
    with pytest.raises(Exception, match="report.transfer_variant"):
        build_leaderboard(_rows(tmp_path), {**PARAMS, "report": {"transfer_variant": "momentum"}})


def _outputs(tmp_path):
    df = build_leaderboard(_rows(tmp_path / "in"), PARAMS)
    out = {ext: str(tmp_path / f"leaderboard.{ext}") for ext in ("csv", "md", "tex", "png", "pdf", "html")}
    write_all(df, out)
    return df, out


def test_writers_keep_undefined_undefined(tmp_path):
    df, out = _outputs(tmp_path)
    csv = pd.read_csv(out["csv"])
    assert len(csv) == len(CASES) and csv["queries_to_90"].isna().sum() == 2  # empty cells, not a number
    md = open(out["md"]).read()
    assert md.count("not reached") == 2 and "| badnets | ft |" in md
    tex = open(out["tex"]).read()
    assert re.search(r"& (\\textbf\{120\}|120) \\\\", tex) and " & 9 \\\\" in tex  # whole queries
    assert tex.count(" & -- \\\\") == 2  # undefined: a dash
    assert "\\caption{" in tex and "\\label{tab:leaderboard}" in tex and tex.count("\\midrule") == 2  # 2 attacks
    assert open(out["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    pdf = open(out["pdf"], "rb").read()
    assert pdf.startswith(b"%PDF") and b"CreationDate" not in pdf


def test_html_is_self_contained(tmp_path):
    _, out = _outputs(tmp_path)
    page = open(out["html"]).read()
    assert "http://" not in page and "https://" not in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)  # the figure, embedded
    assert "<link" not in page and "<script src" not in page
    assert page.count("<tr>") == len(CASES) + 1 and page.count("not reached") == 2


def _chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("DORMANT_REQUIRE_CHROMIUM") == "1":
            pytest.fail("DORMANT_REQUIRE_CHROMIUM=1 but no chromium on PATH")
        pytest.skip("chromium is not installed")
    return exe


def _run_chromium(exe, tmp_path, *args):
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def test_chromium_renders_table_and_figure(tmp_path):
    """The page in a real browser: the screenshot holds the table (dark text on a light page, top) and the
    figure's coloured bars (the white-box red), and the DOM after JavaScript ran holds every row."""
    import numpy as np
    from PIL import Image

    exe = _chromium()
    _, out = _outputs(tmp_path)
    shot = tmp_path / "shot.png"
    _run_chromium(exe, tmp_path, f"--screenshot={shot}", "--window-size=1400,2400", f"file://{out['html']}")
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[0] >= 2000 and img.std() > 10  # not blank
    dark = (img.sum(axis=2) < 200).mean(axis=1)
    assert dark[: img.shape[0] // 4].max() > 0.01  # table text in the top quarter
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    red = (r > 180) & (g < 80) & (b < 80)  # matplotlib's tab:red (214, 39, 40)
    purple = (r > 120) & (r < 170) & (g < 120) & (b > 160)  # tab:purple (148, 103, 189)
    assert red.sum() > 200 and purple.sum() > 200  # the figure's bars were drawn
    dom = _run_chromium(exe, tmp_path, "--dump-dom", f"file://{out['html']}").stdout
    assert dom.count("<tr>") == len(CASES) + 1 and 'id="figure"' in dom


def test_chromium_sorts_by_a_header_click_numerically(tmp_path):
    """Sorting runs in the browser: a copy of the page clicks the c_acc header on load; the DOM then lists the rows
    by C-ACC (42.5 before 50.1 before 56.0 before 57.7), queries_to_90 as numbers (9 before 120, which text order
    would swap) with undefined cells last."""
    exe = _chromium()
    _, out = _outputs(tmp_path)
    page = open(out["html"]).read()

    def dom_after(script):
        p = tmp_path / "sorted.html"
        p.write_text(page.replace("</body>", f"<script>{script}</script></body>"))
        return _run_chromium(exe, tmp_path, "--dump-dom", f"file://{p}").stdout

    def column(dom, name):
        header = re.findall(r"<th[^>]*>([^<]*)</th>", dom)
        i = header.index(name)
        rows = re.findall(r"<tr>(.*?)</tr>", dom, re.S)
        return [re.findall(r"<td[^>]*>([^<]*)</td>", row)[i] for row in rows if "<td" in row]

    click = ("var hs=document.querySelectorAll('#leaderboard th');for(var i=0;i<hs.length;i++)"
             "if(hs[i].textContent==='{0}')hs[i].click();")
    dom = dom_after(click.format("c_acc"))
    assert column(dom, "c_acc") == ["42.5", "50.1", "56.0", "57.7"]
    dom = dom_after(click.format("c_acc") + click.format("c_acc"))  # twice: descending
    assert column(dom, "c_acc") == ["57.7", "56.0", "50.1", "42.5"]
    dom = dom_after(click.format("queries_to_90"))
    assert column(dom, "queries_to_90") == ["9", "120", "not reached", "not reached"]  # 9 < 120 as numbers
    dom = dom_after(click.format("asr"))  # 3.2 < 58.2 < 85.8 < 97.3: numeric, not text order
    assert column(dom, "asr") == ["3.2", "58.2", "85.8", "97.3"]
