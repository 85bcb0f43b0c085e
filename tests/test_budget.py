"""The budget ablation (docs/methods.md section 7.6): re-activation and gUAA along reactivation.budgets."""

import copy
import json
import re

import pandas as pd
import pytest
import torch
import yaml
from dormant.analysis.metrics import attack_success_rate, poisoned_test_index, predict
from dormant.config import ConfigError, validate
from dormant.reactivation.budget import COLUMNS, budget_curve, budget_points
from dormant.reactivation.whitebox import run_reactivation

from .workflow_helpers import REPO, job_counts, snakemake, stage_artifacts

CFG = {"norm": "linf", "eps": 0.05, "lr": 0.05, "epochs": 1, "steps": 2, "batch_size": 16, "n_images": 32}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A small dataset, a model and a BadNets trigger, written as the stages write them."""
    return stage_artifacts(tmp_path_factory.mktemp("budget"), train_per_class=30, test_per_class=10, config={})


def test_budget_points_are_ordered_by_norm_then_eps():
    assert budget_points({"l2": [1.0, 0.5], "linf": [0.1, 0.02]}) == [("linf", 0.02), ("linf", 0.1), ("l2", 0.5),
                                                                     ("l2", 1.0)]
    assert budget_points(None) == [] == budget_points({"linf": [], "l2": None})
    with pytest.raises(ValueError, match="reactivation.budgets"):
        budget_points({"l1": [0.1]})


def test_every_perturbation_respects_its_budget(artifacts):
    """A large step size drives the deltas to the boundary; projection keeps each inside its own budget."""
    sets, atk = artifacts["sets"], artifacts["attack"]
    budgets = {"linf": [0.03, 0.2], "l2": [0.3, 2.0]}
    rows, deltas = budget_curve(artifacts["net"], sets["train"], sets["test"], atk, {**CFG, "lr": 5.0}, budgets,
                                seed=0, keep_deltas=True)
    assert [(r["norm"], r["eps"]) for r in rows] == budget_points(budgets) == list(deltas)
    for r in rows:
        for name in ("delta_reactivated", "delta_guaa"):
            d = deltas[(r["norm"], r["eps"])][name]
            size = float(d.abs().max()) if r["norm"] == "linf" else float(d.norm())
            assert size <= r["eps"] * (1 + 1e-5) + 1e-7, (r, name, size)
            assert size >= 0.5 * r["eps"], (r, name, size)  # the step size really pushed it out to the budget
        assert r["size_reactivated"] <= r["eps"] * (1 + 1e-5) + 1e-7 and r["size_guaa"] <= r["eps"] * (1 + 1e-5) + 1e-7
        assert all(0 <= r[k] <= 100 for k in ("asr_reactivated", "asr_guaa", "asr_trigger", "asr_clean"))


def test_zero_budget_gives_the_model_s_own_asr(artifacts):
    """eps -> 0: both deltas vanish; re-activation scores the model's ASR under the trigger alone, gUAA its rate of
    the target class on clean non-target images (both computed here directly)."""
    sets, atk, net = artifacts["sets"], artifacts["attack"], artifacts["net"]
    rows, deltas = budget_curve(net, sets["train"], sets["test"], atk, CFG, {"linf": [0.0], "l2": [0.0]}, seed=0,
                                keep_deltas=True)
    x = sets["test"].x[poisoned_test_index(sets["test"].y, 0)]
    own = attack_success_rate(predict(net, x, atk.apply), 0)
    clean = attack_success_rate(predict(net, x), 0)
    assert len(rows) == 2
    for r in rows:
        assert all(torch.all(d == 0) for d in deltas[(r["norm"], 0.0)].values())
        assert r["asr_reactivated"] == r["asr_trigger"] == own
        assert r["asr_guaa"] == r["asr_clean"] == clean


def test_each_point_is_the_reactivation_attack_at_that_budget(artifacts):
    """The curve reuses the re-activation attack: each row equals run_reactivation with that norm and eps."""
    sets, atk, net = artifacts["sets"], artifacts["attack"], artifacts["net"]
    rows = budget_curve(net, sets["train"], sets["test"], atk, CFG, {"linf": [0.1], "l2": [1.0]}, seed=3)
    for r in rows:
        res, _ = run_reactivation(net, sets["train"], sets["test"], atk, {**CFG, "norm": r["norm"], "eps": r["eps"]},
                                  seed=3)
        assert (r["asr_reactivated"], r["asr_guaa"], r["asr_trigger"]) == (res["asr_reactivated"], res["asr_guaa"],
                                                                           res["asr_trigger"])


def test_stage_writes_csv_and_sidecar_matching_a_direct_call(artifacts, tmp_path):
    from dormant.cli import main

    d, sets = artifacts["dir"], artifacts["sets"]
    cfg = {**CFG, "budgets": {"linf": [0.05, 0.1], "l2": [0.5]}}
    out = tmp_path / "budget.csv"
    assert main(["budget", "--params", json.dumps({"reactivation": cfg, "seed": 1}), "--dataset",
                 str(d / "dataset.safetensors"), "--trigger", str(d / "trigger.safetensors"), "--model",
                 str(d / "model.safetensors"), "--result", str(out)]) == 0
    df = pd.read_csv(out)
    assert list(df.columns) == COLUMNS and len(df) == 3
    want = budget_curve(artifacts["net"], sets["train"], sets["test"], artifacts["attack"], cfg, cfg["budgets"], 1)
    got = df.to_dict("records")
    for g, w in zip(got, want):
        assert g["norm"] == w["norm"] and g["eps"] == w["eps"]
        for k in ("asr_reactivated", "asr_guaa", "asr_trigger", "asr_clean", "size_reactivated", "size_guaa"):
            assert g[k] == pytest.approx(w[k], abs=1e-9), k
    side = json.loads((tmp_path / "budget.json").read_text())
    assert side["seed"] == 1 and side["config"]["reactivation"]["budgets"] == cfg["budgets"]
    assert side["metrics"]["points"] == 3 and side["rows"][0]["eps"] == 0.05


@pytest.mark.parametrize("budgets,key,what", [
    ({"linf": [0.1, 0.1]}, "reactivation.budgets.linf", "non-unique"),
    ({"linf": [0.0]}, "reactivation.budgets.linf.0", "less than or equal to the minimum"),
    ({"l2": [-1]}, "reactivation.budgets.l2.0", "less than or equal to the minimum"),
    ({"linf": 0.1}, "reactivation.budgets.linf", "is not of type 'array'"),
    ({"linf": ["a"]}, "reactivation.budgets.linf.0", "is not of type 'number'"),
    ({"l1": [0.1]}, "reactivation.budgets", "l1"),
    ({"linf": [1.5]}, "reactivation.budgets.linf", "exceeds 1"),
    ({"l2": [200.0]}, "reactivation.budgets.l2", "exceeds the L2 diameter"),
])
def test_schema_rejects_bad_budget_lists_naming_the_key(params, budgets, key, what):
    params["reactivation"]["budgets"] = budgets
    with pytest.raises(ConfigError) as e:
        validate(params)
    msg = str(e.value)
    assert re.search(rf"{re.escape(key)}: .*{re.escape(what)}", msg), msg


def test_budget_lists_may_be_empty_or_omitted(params):
    for b in ({}, {"linf": []}, {"l2": [0.5, 1, 3]}):
        validate({**params, "reactivation": {**params["reactivation"], "budgets": b}})
    validate({**params, "reactivation": {k: v for k, v in params["reactivation"].items() if k != "budgets"}})


def test_presets_list_the_paper_s_budgets():
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())["reactivation"]["budgets"]
    assert paper == {"linf": [0.01, 0.02, 0.03, 0.05, 0.1], "l2": [0.5, 1, 1.5, 2, 3]}
    default = yaml.safe_load((REPO / "params.yaml").read_text())["reactivation"]["budgets"]
    assert default["linf"] == [0.02, 0.1] and not default.get("l2")


def test_dry_run_of_the_tiny_config_has_the_budget_jobs(repo):
    """One budget job per (attack, defense) and the report; the single-budget reactivate jobs do not get the list
    (so editing it reruns none of them)."""
    tiny = yaml.safe_load((repo / "tests" / "tiny.yaml").read_text())
    r = snakemake(repo, "-n", "-p", "--forceall", configfile="tests/tiny.yaml")
    out = r.stdout + r.stderr
    c = job_counts(out)
    assert c["budget"] == len(tiny["attacks"]) * len(tiny["defenses"]) and c["report_budget"] == 1, c
    assert "results/tiny/report/budget.png" in out and "results/tiny/analysis/badnets/ft/budget.csv" in out
    assert "analysis/badnets/backdoor/budget.csv" not in out and "analysis/badnets/clean/budget.csv" not in out
    shells = re.findall(r"^Shell command: dormant ([\w-]+) (.*)$", out, re.M)
    assert {cmd for cmd, _ in shells} >= {"reactivate", "budget", "report-budget"}
    for cmd, line in shells:
        if cmd in ("reactivate", "budget"):
            assert ("budgets" in line) == (cmd == "budget"), line


def test_no_budgets_no_budget_jobs(repo, tmp_path):
    tiny = yaml.safe_load((repo / "tests" / "tiny.yaml").read_text())
    tiny["reactivation"]["budgets"] = {"linf": [], "l2": []}
    (repo_cfg := tmp_path / "nobudget.yaml").write_text(yaml.safe_dump(tiny))
    r = snakemake(repo, "-n", "--forceall", configfile=str(repo_cfg))
    c = job_counts(r.stdout + r.stderr)
    assert "budget" not in c and "report_budget" not in c and c["reactivate"] > 0, c


def _fabricated(tmp_path) -> list[dict]:
    rows = []
    for attack, defense, base in (("badnets", "ft", 10.0), ("badnets", "nad", 20.0), ("blended", "ft", 5.0)):
        recs = [{"norm": n, "eps": e, "asr_reactivated": base + 100 * e / (1 + e), "asr_guaa": base / 2 + 10 * e,
                 "asr_trigger": base, "asr_clean": base / 2, "size_reactivated": e, "size_guaa": e}
                for n, eps in (("linf", (0.02, 0.1)), ("l2", (0.5, 1.0))) for e in eps]
        p = tmp_path / f"{attack}_{defense}.csv"
        pd.DataFrame.from_records(recs, columns=COLUMNS).to_csv(p, index=False)
        rows.append({"attack": attack, "defense": defense, "type": defense, "csv": str(p)})
    return rows


def test_report_table_and_figure_from_fabricated_csvs(tmp_path):
    from dormant.cli import main

    rows = _fabricated(tmp_path)
    out = {k: tmp_path / f"budget.{k}" for k in ("csv", "md", "png")}
    assert main(["report-budget", "--params", "{}", "--rows", json.dumps(rows), "--csv", str(out["csv"]), "--md",
                 str(out["md"]), "--fig", str(out["png"])]) == 0
    df = pd.read_csv(out["csv"])
    assert len(df) == 12 and list(df[["attack", "defense"]].drop_duplicates().itertuples(index=False, name=None)) == [
        ("badnets", "ft"), ("badnets", "nad"), ("blended", "ft")]
    nad = df[(df["defense"] == "nad") & (df["norm"] == "l2") & (df["eps"] == 1.0)].iloc[0]
    assert nad["asr_reactivated"] == pytest.approx(20 + 50, abs=1e-4) and nad["asr_guaa"] == pytest.approx(20.0)
    assert nad["gap"] == pytest.approx(50.0, abs=1e-4) and nad["asr_trigger"] == 20.0
    md = out["md"].read_text()
    assert "| attack | defense | type | norm | eps |" in md and md.count("\n| badnets | nad |") == 4
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_names_a_csv_without_the_columns(tmp_path):
    from dormant.errors import CheckpointError
    from dormant.report.budget import budget_table

    bad = tmp_path / "bad.csv"
    bad.write_text("norm,eps\nlinf,0.1\n")
    with pytest.raises(CheckpointError, match="bad.csv: missing column"):
        budget_table([{"attack": "a", "defense": "ft", "csv": str(bad)}])


def test_plan_counts_the_work_of_every_budget_point(params):
    from dormant import plan

    cfg = copy.deepcopy(params)
    cfg["reactivation"]["budgets"] = {"linf": [0.1]}
    one = plan.job_work("budget", {"attack": "badnets", "model": "ft"}, cfg)
    cfg["reactivation"]["budgets"] = {"linf": [0.1, 0.2], "l2": [1.0]}
    three = plan.job_work("budget", {"attack": "badnets", "model": "ft"}, cfg)
    react = plan.job_work("reactivate", {"attack": "badnets", "model": "ft"}, cfg)
    arch = cfg["model"]["arch"]
    assert three.bf16[arch] == pytest.approx(3 * one.bf16[arch]) == pytest.approx(3 * react.bf16[arch])
    assert "budget" in plan.GPU_RULES and "report_budget" in plan.LOCAL_RULES
    assert plan.runtime_min("budget", {}, cfg) >= 15 and plan.mem_mb("budget", cfg) > 0
