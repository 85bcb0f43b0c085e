"""The cost model (dormant.plan, `dormant plan`), the rules' resources derived from it, and the CLI's lazy imports."""

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dormant import plan

ROOT = Path(__file__).resolve().parents[1]

RATES = {  # round numbers, so that every figure below can be computed by hand
    "gpu": {"infer_img_per_s": 100.0, "fp32_slowdown": 2.0, "reference_arch": "a", "source": "test"},
    "macs": {"a": 1000, "b": 500},
    "overhead": {"snakemake_parse_s": 10.0, "import_s": 2.0, "cuda_init_s": 3.0, "dataset_load_s": 1.0,
                 "snakemake_rss_mb": 900, "source": "test"},
    "checkpoint": {"write_gb_per_s": 1.0, "params": {"a": 1_000_000, "b": 10}, "source": "test"},
}


def _config(**train):
    return {"data": {"dataset": "cifar10", "train_per_class": 10, "test_per_class": 2},
            "model": {"arch": "a"}, "defense_data": {"clean_ratio": 0.5},
            "train": {"epochs": 4, "eval_every": 2, **train},
            "defenses": {"ft": {"type": "ft", "epochs": 2}, "aft": {"type": "aft", "epochs": 1, "steps": 3}},
            "query": {"budget": 10, "batch_size": 5}}


def test_work_of_training_defenses_and_query_by_hand():
    c = _config()  # 100 training and 20 test images
    w = plan.job_work("train_clean", {}, c)
    # 3 passes x 100 images x 4 epochs; evaluation: 2 x 20 test images every 2nd epoch (2 times) + 3 x 20 at the end
    assert w.bf16["a"] == 1200 + 80 + 60 and w.checkpoints["a"] == 4
    ft = plan.job_work("defend", {"attack": "x", "defense": "ft"}, c)
    assert ft.bf16["a"] == 3 * 50 * 2 + 60  # 50 clean images (clean_ratio 0.5), 2 epochs, then the evaluation
    aft = plan.job_work("defend", {"attack": "x", "defense": "aft"}, c)
    assert aft.bf16["a"] == 3 * 4 * 50 * 1 + 60  # every step: 3 PGD steps + the training step
    q = plan.job_work("query", {"attack": "x", "model": "ft"}, c, fast_query=False)
    assert q.fp32["a"] == 2 * 10 * 5 + 2 * 20 and not q.bf16  # two searches of budget x batch, fp32 oracle
    c["query"].update(budget=100, calibration=30)
    q = plan.job_work("query", {"attack": "x", "model": "ft"}, c)  # fast oracle after 30 calibration queries
    assert q.bf16["a"] == 2 * 100 * 5 and q.fp32["a"] == 2 * 30 * 5 + 2 * 20
    c["query"]["precision"] = "fp32"
    assert plan.job_work("query", {"attack": "x", "model": "ft"}, c).fp32["a"] == 2 * 100 * 5 + 2 * 20


def test_busy_seconds_scale_with_macs_precision_and_checkpoint_cadence():
    c = _config()
    b = plan.busy_seconds("train_clean", {}, c, RATES, cadence=False)
    assert b["compute"] == pytest.approx(1340 / 100)
    assert b["checkpoint"] == pytest.approx(4 * 8 * 1_000_000 / 1e9)  # weights + momentum, 4 bytes each, per epoch
    every2 = plan.busy_seconds("train_clean", {}, {**c, "runtime": {"checkpoint_every_epochs": 2}}, RATES)
    assert every2["checkpoint"] == pytest.approx(b["checkpoint"] / 2)
    every10 = plan.busy_seconds("train_clean", {}, c, RATES)  # runtime's default: every 10 epochs, and the last
    assert every10["checkpoint"] == pytest.approx(b["checkpoint"] / 4)
    q = plan.busy_seconds("query", {"attack": "x", "model": "ft"}, c, RATES, fast_query=False)
    assert q["compute"] == pytest.approx(140 / 100 * 2.0)  # fp32 at half the rate
    fast = plan.busy_seconds("query", {"attack": "x", "model": "ft"}, c, RATES)  # budget 10 < 50 calibration queries
    assert fast["compute"] == pytest.approx(100 / 100 + 140 / 100 * 2.0)  # each query scored in both precisions
    c2 = copy.deepcopy(c)
    c2["model"]["arch"] = "b"  # half the multiply-adds, half the time
    assert plan.busy_seconds("query", {}, c2, RATES, fast_query=False)["compute"] == pytest.approx(q["compute"] / 2)


DRYRUN = """Building DAG of jobs...
[Wed Dec  2 13:14:43 2026]
rule prepare_data:
    output: results/x/data/dataset.safetensors
    resources: tmpdir=/tmp, mem_mb=1400, slurm_partition=cpu, runtime=30
[Wed Dec  2 13:14:43 2026]
rule train_clean:
    wildcards: none=1
    resources: tmpdir=/tmp, mem_mb=3300, slurm_partition=gpu, runtime=40, gpu=1
[Wed Dec  2 13:14:43 2026] Group job model_x_ft (jobs in lexicogr. order):

    [Wed Dec  2 13:14:43 2026]
    rule metrics:
        wildcards: attack=x, model=ft
        resources: tmpdir=/tmp, mem_mb=3300, runtime=15, gpu=0, gres=gpu:1

    [Wed Dec  2 13:14:43 2026]
    rule query:
        wildcards: attack=x, model=ft
        resources: tmpdir=/tmp, mem_mb=3300, runtime=20, gpu=0, gres=gpu:1
"""


def test_dry_run_parsing_and_grouped_layout_by_hand():
    jobs = plan.parse_dryrun(DRYRUN)
    assert [(j.rule, j.local, j.group) for j in jobs] == [
        ("prepare_data", True, None), ("train_clean", False, None), ("metrics", False, "model_x_ft"),
        ("query", False, "model_x_ft")]
    assert jobs[2].wildcards == {"attack": "x", "model": "ft"} and jobs[2].resources["runtime"] == 15
    c = _config()
    busy = {j.rule: plan.busy_seconds(j.rule, j.wildcards, c, RATES, cadence=False) for j in jobs[1:]}
    start = 10 + 2 + 3 + 1  # job step parse, imports, CUDA, dataset
    before = plan.project(jobs, c, RATES, grouped=False, cadence=False)
    after = plan.project(jobs, c, RATES, grouped=True, cadence=False)
    assert before["submissions"] == 4 and after["submissions"] == 2  # prepare_data became local, two jobs grouped
    work = {r: b["compute"] + b["checkpoint"] for r, b in busy.items()}
    assert before["held_h"] * 3600 == pytest.approx(3 * start + sum(work.values()))
    # the group: one job step parse, the two members start side by side and share the GPU
    assert after["held_h"] * 3600 == pytest.approx(2 * start + sum(work.values()))
    assert before["requested_h"] * 60 == pytest.approx(40 + 15 + 20)
    assert after["requested_h"] * 60 == pytest.approx(40 + 20)  # gres gpu:1 once, the longer member's runtime


def test_memory_request_scales_with_the_dataset_and_doubles_on_retry(monkeypatch):
    c = _config()
    small = plan.mem_mb("metrics", c)
    c["data"]["train_per_class"], c["data"]["test_per_class"] = 5000, 1000  # 60,000 images: 184 MB, held twice
    big = plan.mem_mb("metrics", c)
    assert big - small == pytest.approx(1.25 * 2 * (60000 - 120) * 3072 / 1e6, abs=200)
    assert plan.mem_mb("metrics", c, attempt=2) == 2 * big
    assert plan.mem_mb("prepare_data", c) < big  # no CUDA, no job step (local rule)


def test_local_rules_of_the_workflow_are_the_plans():
    text = "".join(f.read_text() for f in sorted((ROOT / "workflow/rules").glob("*.smk")))
    assert set(re.findall(r"^rule (\w+):\n    localrule: True$", text, re.M)) == set(plan.LOCAL_RULES)


def test_paper_runtime_requests_are_right_sized():
    c = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    train = plan.runtime_min("train_clean", {}, c)
    assert 20 <= train <= 120  # 100 epochs of 50,000 images: minutes on a GPU, not the 720 asked before
    assert plan.runtime_min("train_clean", {}, c, attempt=2) == 2 * train
    assert plan.runtime_min("metrics", {"attack": "badnets", "model": "ft"}, c) == 15


def test_cli_help_does_not_import_torch():
    code = ("import sys; from dormant.cli import build_parser; build_parser().format_help(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
