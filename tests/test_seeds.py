"""Several run seeds (`seeds: [...]`): per-seed pipelines under results/<name>/seed-<s>/, tables over seeds with
mean, sample standard deviation and n, and adding a seed runs only that seed's jobs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from dormant.report import seeds as rep

from .workflow_helpers import REPO, copy_workflow, job_counts, snakemake, write_config


def _table(seed_values: dict) -> dict[int, pd.DataFrame]:
    return {s: pd.DataFrame({"attack": ["badnets", "badnets"], "model": ["backdoor", "ft"],
                             "asr": v, "der": [float("nan"), 50.0 + s]})
            for s, v in seed_values.items()}


def test_aggregate_is_mean_sample_std_and_count_by_hand():
    agg = rep.aggregate(rep.stack(_table({0: [90.0, 10.0], 1: [96.0, 30.0], 2: [93.0, 20.0]})))
    assert list(agg["model"]) == ["backdoor", "ft"]
    ft = agg.iloc[1]
    assert ft["seeds"] == 3 and ft["asr_mean"] == pytest.approx(20.0)
    assert ft["asr_std"] == pytest.approx(10.0)  # sqrt(((10-20)^2 + 0 + (30-20)^2) / (3 - 1))
    assert agg.iloc[0]["asr_std"] == pytest.approx(3.0)
    assert ft["der_mean"] == pytest.approx(51.0) and ft["der_n"] == 3
    assert math.isnan(agg.iloc[0]["der_mean"]) and agg.iloc[0]["der_n"] == 0  # undefined stays undefined


def test_one_seed_has_no_spread_and_stack_puts_seed_first():
    stacked = rep.stack(_table({7: [90.0, 10.0]}))
    assert list(stacked.columns[:3]) == ["seed", "attack", "model"] and set(stacked["seed"]) == {7}
    agg = rep.aggregate(stacked)
    assert math.isnan(agg.iloc[0]["asr_std"]) and agg.iloc[0]["asr_n"] == 1
    md = rep.summary_markdown(agg)
    assert "| badnets | ft | 1 | 10.0 |" in md and "±" not in md


def test_summary_shows_mean_plus_minus_std():
    md = rep.summary_markdown(rep.aggregate(rep.stack(_table({0: [90.0, 10.0], 1: [96.0, 30.0]}))))
    assert "93.0 ± 4.2" in md and "20.0 ± 14.1" in md


def _seeds_config(tmp_path, seeds: list[int]):
    cfg = yaml.safe_load((tmp_path / "tiny.yaml").read_text())
    cfg["name"] = "seeds"
    cfg["seeds"] = seeds
    cfg["attacks"] = {"badnets": cfg["attacks"]["badnets"]}
    cfg["defenses"] = {"ft": cfg["defenses"]["ft"]}
    cfg["transfer"]["defenses"] = {"ft": cfg["transfer"]["defenses"]["ft"]}
    cfg["transfer"]["surrogates"] = {"same_arch": {"arch": cfg["model"]["arch"], "defenses": ["ft"]}}
    return write_config(tmp_path / "seeds.yaml", cfg)


@pytest.mark.slow
def test_three_seeds_then_a_fourth_runs_only_its_jobs(tmp_path):
    copy_workflow(tmp_path)
    _seeds_config(tmp_path, [0, 1, 2])
    snakemake(tmp_path, configfile="seeds.yaml", timeout=1200)

    out = tmp_path / "results" / "seeds"
    per_seed = {s: pd.read_csv(out / f"seed-{s}" / "report" / "table.csv") for s in (0, 1, 2)}
    # the seed reaches every seeded stage: poison draw, training, clean subset, attacker
    assert not per_seed[0][["c_acc", "asr"]].equals(per_seed[1][["c_acc", "asr"]])
    subsets = [yaml.safe_load((out / f"seed-{s}" / "data" / "clean_subset.json").read_text()) for s in (0, 1)]
    assert subsets[0] != subsets[1]
    stacked = pd.read_csv(out / "report" / "seeds" / "table_seeds.csv")
    agg = pd.read_csv(out / "report" / "seeds" / "table.csv")
    assert sorted(set(stacked["seed"])) == [0, 1, 2] and len(stacked) == 3 * len(per_seed[0])
    for _, r in agg.iterrows():
        vals = pd.Series([t.set_index("model").loc[r["model"], "asr"] for t in per_seed.values()])
        assert r["seeds"] == 3 and r["asr_mean"] == pytest.approx(vals.mean(), abs=1e-4)
        assert r["asr_std"] == pytest.approx(vals.std(ddof=1), abs=1e-4)
    assert (out / "report" / "seeds" / "asr.png").stat().st_size > 0
    for f in ("asr.pdf", "bec_vs_asr.pdf", "table.tex", "table_seeds.tex", "blackbox.tex", "blackbox_seeds.tex"):
        assert (out / "report" / "seeds" / f).stat().st_size > 0, f  # the paper's copies
    assert "±" in (out / "report" / "seeds" / "table.md").read_text()

    # report_seeds loads only library files that are inputs of its job (test_workflow checks the other stages)
    from dormant.codedeps import code_files, module_file

    args = {"params": json.dumps({"seeds": [0, 1, 2]}),
            "tables": json.dumps({str(s): str(out / f"seed-{s}" / "report" / "table.csv") for s in (0, 1, 2)}),
            "blackbox": json.dumps({str(s): str(out / f"seed-{s}" / "report" / "blackbox.csv") for s in (0, 1, 2)})}
    traced = tmp_path / "traced"
    traced.mkdir()
    for name in ("table_seeds_csv", "table_csv", "table_md", "blackbox_seeds_csv", "blackbox_csv"):
        args[name] = str(traced / f"{name}.{name.rsplit('_', 1)[1]}")
    args.update(fig_asr=str(traced / "asr.png"), fig_bec=str(traced / "bec.png"))
    p = subprocess.run([sys.executable, str(REPO / "tests" / "trace_stage.py"), "seeds", "report_seeds",
                        json.dumps(args)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    loaded = json.loads(p.stdout.split("LOADED ", 1)[1])
    files = {"workflow/lib/dormant/" + str(module_file(m).relative_to(module_file("dormant").parent))
             for m in loaded}
    assert files <= set(code_files("report_seeds")), files - set(code_files("report_seeds"))

    _seeds_config(tmp_path, [0, 1, 2, 3])
    dry = snakemake(tmp_path, "-n", "--quiet", "rules", configfile="seeds.yaml").stdout
    jobs = job_counts(dry)
    assert jobs.pop("report_seeds") == 1 and jobs.pop("all") == 1 and jobs.pop("total")
    assert jobs and all(r.startswith("seed3_") for r in jobs), jobs
