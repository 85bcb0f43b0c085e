"""The workflow through the SLURM executor on a real one-node Slurm (workflow/scripts/slurm_one_node.sh).

Needs a running cluster: SLURM_CONF set and `sinfo` answering. .ci/run installs and starts one and sets
DORMANT_REQUIRE_SLURM=1, which turns a missing cluster into a failure instead of a skip.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from .workflow_helpers import copy_workflow, run, write_config

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
GPU_RULES = {"train_clean", "train_backdoor", "defend"}  # the CI profile's GPU requests


def _cluster_up() -> str | None:
    """None if a Slurm cluster answers, else why not."""
    if not shutil.which("sinfo"):
        return "no Slurm client (sinfo) on PATH"
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0 or not r.stdout.strip():
        return f"no Slurm cluster answers: {r.stderr.strip()[:200]}"
    return None


@pytest.fixture(scope="module")
def cluster():
    why = _cluster_up()
    if why:
        if os.environ.get("DORMANT_REQUIRE_SLURM") == "1":
            pytest.fail(f"DORMANT_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)


def _jobs_of_run(run_id: str) -> list[dict]:
    """Jobs of one Snakemake run (its run id is the Slurm job name), finished ones included (MinJobAge)."""
    out = run(["squeue", "-h", "--states=all", "-O", "Name:60,Comment:80,State:20,tres-per-job:30,MinMemory:12"],
              ".").stdout
    jobs = []
    for line in out.splitlines():
        name, comment, state, tres, mem = line.split()
        if name == run_id:
            jobs.append({"rule": re.sub(r"^rule_|_wildcards_.*$", "", comment), "state": state, "tres": tres,
                         "mem": mem})
    return jobs


def test_tiny_workflow_runs_to_completion_through_the_slurm_executor(cluster, tmp_path):
    wd = copy_workflow(tmp_path / "wf")
    cfg = yaml.safe_load((wd / "tiny.yaml").read_text())
    cfg["name"] = "slurm"
    del cfg["attacks"]["blended"]
    cfg["defenses"] = {"ft": cfg["defenses"]["ft"]}
    cfg["transfer"]["surrogates"] = {"same_arch": {"arch": "cnn_tiny", "defenses": ["ft"]}}
    write_config(wd / "params.yaml", cfg)  # the config itself, not an overlay: one attack, one defense

    cmd = [sys.executable, "-m", "snakemake", "--profile", "profiles/slurm-ci"]
    r = run(cmd, wd, timeout=1200)
    out = r.stdout + r.stderr
    assert "35 of 35 steps (100%) done" in out, out[-3000:]

    run_id = re.search(r"SLURM run ID: (\S+)", out).group(1)
    jobs = _jobs_of_run(run_id)
    rules = sorted(j["rule"] for j in jobs)
    # every job went through sbatch but the local rules: the target `all`, prepare_data (it may download, and
    # compute nodes often have no internet) and the five reports
    assert len(jobs) == 28, rules
    local = {"prepare_data", "report", "report_blackbox", "report_defenses", "report_budget", "leaderboard"}
    assert not local & set(rules), rules
    assert all(j["state"] == "COMPLETED" for j in jobs), jobs
    for j in jobs:  # GPU requests come from the profile, memory from rule or profile
        assert ("gpu:1" in j["tres"]) == (j["rule"] in GPU_RULES), j
    assert {j["mem"] for j in jobs if j["rule"] == "train_clean"} == {"2000M"}
    assert {j["mem"] for j in jobs if j["rule"] == "trigger"} == {"1000M"}

    res = wd / "results/slurm"
    for rel in ("report/table.csv", "models/badnets/ft/model.safetensors", "analysis/badnets/ft/bec.json"):
        assert (res / rel).is_file(), rel
    # a rerun through the profile submits nothing
    again = run([*cmd, "-n"], wd)
    assert "Nothing to be done" in again.stdout + again.stderr
