"""A training job killed with SIGKILL mid-way resumes from its last epoch checkpoint when the workflow is
rerun, and ends with exactly the weights of an uninterrupted run (pinned to the CPU: ``env()``; same seed)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors import safe_open

from .workflow_helpers import copy_workflow, env, run, snakemake, write_config

pytestmark = pytest.mark.slow
EPOCHS = 12


def _config(wd):
    cfg = yaml.safe_load((wd / "tiny.yaml").read_text())
    cfg["name"] = "kill"
    cfg["data"]["train_per_class"] = 250
    cfg["data"]["synthetic"]["image_size"] = 32
    cfg["train"].update(epochs=EPOCHS, eval_every=EPOCHS)
    cfg["runtime"] = {"checkpoint_every_epochs": 1}  # a checkpoint after each epoch, so the kill lands between two
    return write_config(wd / "kill.yaml", cfg), cfg


def _epochs_done(ckpt) -> int:
    try:
        with safe_open(str(ckpt), "pt") as f:
            return json.loads(f.metadata()["dormant"])["epoch"] + 1
    except Exception:  # not there yet, or being replaced
        return 0


def _weights(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_sigkill_mid_training_then_rerun_resumes_to_identical_weights(tmp_path):
    wd = copy_workflow(tmp_path / "wf")
    _, cfg = _config(wd)
    target = "results/kill/models/clean/model.safetensors"
    ckpt = wd / "resume/kill/clean.safetensors"
    snakemake(wd, "results/kill/data/dataset.safetensors", configfile="kill.yaml")

    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", target, "--configfile", "kill.yaml"]
    proc = subprocess.Popen(cmd, cwd=wd, env=env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while _epochs_done(ckpt) < 3:
            assert proc.poll() is None, "the workflow ended before it could be killed"
            assert time.monotonic() < deadline, "no epoch checkpoint within 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # snakemake and the training job, no clean-up
        proc.wait()
    killed_after = _epochs_done(ckpt)
    assert 3 <= killed_after < EPOCHS
    assert not (wd / target).exists()

    # the documented recovery (README): --unlock (the killed run still holds the lock), then rerun
    snakemake(wd, "--unlock", configfile="kill.yaml")
    snakemake(wd, target, "--rerun-incomplete", configfile="kill.yaml")
    log = (wd / "logs/kill/train_clean.log").read_text()
    assert f"after epoch {killed_after}" in log, log[-2000:]
    assert f"epoch {killed_after}/{EPOCHS}" not in log.split("resumed from")[1]  # no epoch trained twice
    side = json.loads((wd / "results/kill/models/clean/model.json").read_text())
    assert [h["epoch"] for h in side["history"]] == list(range(1, EPOCHS + 1))

    # an uninterrupted run of the same stage, same params, one thread like the rule
    params = json.dumps({"model": cfg["model"], "train": cfg["train"], "seed": cfg["seed"]}, sort_keys=True)
    ref = tmp_path / "ref.safetensors"
    run([sys.executable, "-m", "dormant.cli", "train-clean", "--threads", "1", "--params", params,
         "--dataset", wd / "results/kill/data/dataset.safetensors", "--model", ref,
         "--checkpoint", tmp_path / "ref_resume.safetensors"], wd)
    a, b = _weights(wd / target), _weights(ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
