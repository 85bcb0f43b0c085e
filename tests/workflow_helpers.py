"""Helpers for tests that run the Snakemake workflow (or DVC) in a temporary copy of the repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # snakemake, dvc and dormant of the environment running the tests


def env() -> dict:
    """The test environment with this interpreter's bin folder first on PATH (for dvc's and Slurm's jobs), pinned
    to the CPU: the tests check bit-identical results, which CUDA gives only in deterministic mode; heartbeat
    lines at every step, so that the tests can read them in the job logs."""
    e = dict(os.environ)
    e["DORMANT_DEVICE"] = "cpu"
    e.setdefault("DORMANT_HEARTBEAT_SECONDS", "0")  # every loop step writes its heartbeat line to the job log
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    return e


def copy_workflow(dest: Path, with_demo_data: bool = False) -> Path:
    """A runnable copy of the workflow (Snakefile, params.yaml, dvc.yaml, workflow/, config/, profiles/,
    tests/tiny.yaml as tiny.yaml) in ``dest``; ``with_demo_data`` adds data/cifar10-demo.tar.gz."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in ("Snakefile", "params.yaml", "dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / f, dest / f)
    shutil.copy(REPO / "tests" / "tiny.yaml", dest / "tiny.yaml")
    for d in ("workflow", "config", "profiles"):
        shutil.copytree(REPO / d, dest / d, ignore=shutil.ignore_patterns("__pycache__"))
    if with_demo_data:
        (dest / "data").mkdir(exist_ok=True)
        shutil.copy(REPO / "data" / "cifar10-demo.tar.gz", dest / "data")
    return dest


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run(cmd: list, cwd, check: bool = True, timeout: int = 900, **kw) -> subprocess.CompletedProcess:
    """Runs ``cmd`` in ``cwd``; with ``check`` a failure raises with the tail of its output."""
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env=kw.pop("env", None) or env(), **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout[-4000:]}\n"
                             f"{r.stderr[-6000:]}")
    return r


def _is_complete(config: Path, params: Path) -> bool:
    """Whether ``config`` has every section the schema requires (optional ones such as ``runtime`` may be
    absent: they have defaults)."""
    try:
        sections = yaml.safe_load(config.read_text())
        schema = params.parent / "workflow" / "schemas" / "params.schema.yaml"
        required = set(yaml.safe_load(schema.read_text())["required"])
        return isinstance(sections, dict) and required <= set(sections)
    except (OSError, ValueError, yaml.YAMLError):  # unreadable, not UTF-8 or not YAML: not a complete config
        return False


def snakemake(cwd, *args, configfile: str | None = "tiny.yaml", check: bool = True, cores: int = 2,
              timeout: int = 900) -> subprocess.CompletedProcess:
    """Runs Snakemake in ``cwd`` with ``configfile``, unless None. A complete config (every section the schema
    requires, as tests/tiny.yaml and the configs derived from it) replaces params.yaml, so that the
    default run's entries never leak into a test run; an overlay is merged over params.yaml, as a user's
    would be. The configfile goes last, since ``--configfile`` would swallow targets that follow it."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(cores), *args]
    if configfile:
        if _is_complete(Path(cwd) / configfile, Path(cwd) / "params.yaml") and "--replace-workflow-config" not in args:
            cmd.append("--replace-workflow-config")
        cmd += ["--configfile", configfile]
    return run(cmd, cwd, check=check, timeout=timeout)


def planned_jobs(output: str) -> set[tuple[str, str]]:
    """(rule, wildcards) of every job a dry run (``snakemake -n``) plans, e.g. ("defend", "attack=badnets,
    defense=ft"); rules without wildcards have "" as second element."""
    jobs, rule = set(), None
    for line in output.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):\s*$", line)
        if m:
            if rule is not None:
                jobs.add((rule, ""))
            rule = m.group(1)
            continue
        m = re.match(r"^\s+wildcards: (.*)$", line)
        if m and rule is not None:
            jobs.add((rule, m.group(1).strip()))
            rule = None
        elif line.strip() == "" and rule is not None:
            jobs.add((rule, ""))
            rule = None
    if rule is not None:
        jobs.add((rule, ""))
    return jobs


def job_counts(out: str) -> dict:
    """The 'Job stats' table of a Snakemake run or dry run as {rule: count}."""
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def job_blocks(output: str) -> list[tuple[str, str]]:
    """(rule, its text: the indented input/output/wildcards/resources lines and, with ``-p``, the shell
    command) for every job of a dry run's output, whatever separates the jobs (blank lines or timestamps); the
    members of a group job are printed indented under it."""
    pattern = r"^[ \t]*(?:local)?rule (\w+):\n((?:[ \t]+.*(?:\n|$))*(?:Shell command: .*(?:\n|$))?)"
    return [(m.group(1), m.group(2)) for m in re.finditer(pattern, output, re.M)]


def stage_artifacts(d: Path, *, train_per_class: int, test_per_class: int, config: dict) -> dict:
    """A small synthetic dataset (4 classes, 16 px), a cnn_tiny model with its sidecar (``config``) and a BadNets
    trigger, written into ``d`` as the stages write them: what stage-level tests feed the library."""
    import torch
    from dormant.attacks import create_attack, save_attack
    from dormant.data.imageset import save_dataset
    from dormant.data.sources import make_synthetic
    from dormant.nets import build_model
    from dormant.nets.checkpoint import save_model

    sets = make_synthetic(num_classes=4, train_per_class=train_per_class, test_per_class=test_per_class,
                          image_size=16, seed=0)
    save_dataset(sets, d / "dataset.safetensors", {"source": "synthetic"})
    torch.manual_seed(0)
    net = build_model("cnn_tiny", 4)
    save_model(net, d / "model.safetensors", arch="cnn_tiny", num_classes=4, config=config, seed=0)
    atk = create_attack({"type": "badnets", "ratio": 0.1, "target": 0}, sets["train"].x, sets["train"].y, 4, seed=0)
    save_attack(atk, d / "trigger.safetensors")
    return {"dir": d, "sets": sets, "net": net, "attack": atk}
