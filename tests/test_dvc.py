"""DVC round trip: repro -> push -> fresh clone -> pull -> restore, and `snakemake -n` has nothing to do.

Runs a one-attack version of tests/tiny.yaml as the params.yaml of a temporary git + DVC repository
with a temporary local remote.
"""

import hashlib
import json
import os
import random
import sys

import pytest
import yaml

from .workflow_helpers import REPO, copy_workflow, env, run, snakemake, write_config

pytestmark = pytest.mark.slow
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org"]
DVC = [sys.executable, "-m", "dvc"]
RESTORE = REPO / "workflow" / "scripts" / "dvc_restore.sh"


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cached_files(root):
    return sorted(p for d in ("data", "attacks", "models", "analysis") for p in (root / d).rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """A repository whose pipeline ran (dvc repro), committed and pushed to a local remote."""
    base = tmp_path_factory.mktemp("dvc")
    o = copy_workflow(base / "origin", with_demo_data=True)
    cfg = yaml.safe_load((o / "tiny.yaml").read_text())
    del cfg["attacks"]["blended"]
    cfg["defenses"] = {"ft": cfg["defenses"]["ft"]}
    cfg["transfer"]["surrogates"] = {"same_arch": {"arch": "cnn_tiny", "defenses": ["ft"]}}
    write_config(o / "params.yaml", cfg)
    run([*GIT, "init", "-q", "-b", "main"], o)
    run([*DVC, "init", "-q"], o)
    run([*DVC, "remote", "add", "-q", "-d", "local", str(base / "remote")], o)
    run([*DVC, "repro"], o, timeout=900)
    run([*GIT, "add", "-A"], o)
    run([*GIT, "commit", "-qm", "results"], o)
    run([*DVC, "push"], o)
    return o


@pytest.fixture(scope="module")
def clone(origin):
    c = origin.parent / "clone"
    run([*GIT, "clone", "-q", str(origin), str(c)], origin.parent)
    return c


def test_status_metrics_and_plots_in_origin(origin):
    assert json.loads(run([*DVC, "status", "--json"], origin).stdout) == {}
    metrics = json.loads(run([*DVC, "metrics", "show", "--json"], origin).stdout)
    files = metrics[""]["data"]
    # only real metrics: the report's metrics.json, numbers only (not the CSV tables or the training histories)
    assert list(files) == ["results/tiny/report/metrics.json"], list(files)
    data = files["results/tiny/report/metrics.json"]["data"]
    assert data["badnets"]["backdoor"]["der"] == 50 and "bec" in data["badnets"]["ft"]

    def leaves(obj):
        return [x for v in obj.values() for x in leaves(v)] if isinstance(obj, dict) else [obj]

    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in leaves(data))
    plots = json.loads(run([*DVC, "plots", "show", "--json"], origin).stdout)
    names = set(plots["data"])
    assert any(n.endswith("report/table.csv") for n in names)  # BEC against ASR
    assert any(n.endswith("report/query_checkpoints.csv") for n in names)  # ASR against queries
    assert any(n.endswith("history/badnets_backdoor.csv") for n in names)
    assert not plots.get("errors")
    # the checkpoints are in the DVC cache and out of git; the report is in git
    tracked = run([*GIT, "ls-files"], origin).stdout.split()
    assert "results/tiny/report/table.csv" in tracked and "dvc.lock" in tracked
    assert not any("/models/" in t for t in tracked)


def test_pull_restores_identical_artifacts_and_nothing_reruns(origin, clone):
    run([*DVC, "pull"], clone)
    got = _cached_files(clone / "results/tiny")
    want = _cached_files(origin / "results/tiny")
    assert [p.relative_to(clone) for p in got] == [p.relative_to(origin) for p in want] and got
    assert all(_sha(a) == _sha(b) for a, b in zip(got, want))

    # The trap: file times after pull and checkout are arbitrary; here older than the sources, so
    # Snakemake on its own would rerun the pipeline.
    rng = random.Random(0)
    for p in got + sorted((clone / "results/tiny/report").rglob("*")):
        t = 1_600_000_000 + rng.randrange(10**6)
        os.utime(p, (t, t))
    before = snakemake(clone, "-n", configfile=None)
    assert "Nothing to be done" not in before.stdout + before.stderr

    r = run(["bash", str(RESTORE)], clone, env=env())
    assert "nothing to do" in r.stdout
    after = snakemake(clone, "-n", configfile=None)
    assert "Nothing to be done" in after.stdout + after.stderr
    # touching changed no content
    assert all(_sha(a) == _sha(b) for a, b in zip(_cached_files(clone / "results/tiny"), want))

    # after the restore Snakemake knows each job's params: one defense edit reruns that defense only
    cfg = yaml.safe_load((clone / "params.yaml").read_text())
    cfg["defenses"]["ft"]["lr"] = 0.02
    write_config(clone / "edited.yaml", cfg)
    dry = snakemake(clone, "-n", "--quiet", "rules", configfile="edited.yaml")
    out = dry.stdout + dry.stderr
    assert "defend" in out and "train_backdoor" not in out and "train_clean" not in out


def test_restore_refuses_when_params_differ_from_the_lock(origin, clone):
    if not (clone / "results/tiny/models").exists():
        run([*DVC, "pull"], clone)
    params = clone / "params.yaml"
    text = params.read_text()
    cfg = yaml.safe_load(text)
    cfg["defenses"]["ft"]["epochs"] = 5
    write_config(params, cfg)
    try:
        diff = run([*DVC, "params", "diff"], clone).stdout
        assert "defenses.ft.epochs" in diff
        r = run(["bash", str(RESTORE)], clone, env=env(), check=False)
        assert r.returncode != 0 and "not clean" in r.stderr
    finally:
        params.write_text(text)
