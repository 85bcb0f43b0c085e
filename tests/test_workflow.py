"""End-to-end: the Snakemake workflow on tests/tiny.yaml (synthetic data, toy model), every artifact checked."""

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow


def _snakemake(cwd, *args, configfile="tiny.yaml", check=True):
    """Runs Snakemake in ``cwd`` with ``configfile``; with ``check`` a failure raises with its output."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", configfile, *args]
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    if check and r.returncode != 0:
        raise AssertionError(f"snakemake failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
    return r


def _copy_workflow(repo, dest):
    """A runnable copy of the workflow (Snakefile, params.yaml, workflow/, config/, tests/tiny.yaml) in ``dest``."""
    for f in ("Snakefile", "params.yaml", "tests/tiny.yaml"):
        shutil.copy(repo / f, dest)
    for d in ("workflow", "config"):
        shutil.copytree(repo / d, dest / d, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, repo):
    wd = _copy_workflow(repo, tmp_path_factory.mktemp("wf"))
    _snakemake(wd)
    return wd


def test_every_artifact_exists_with_sidecar(workdir):
    r = workdir / "results" / "tiny"
    cfg = yaml.safe_load((workdir / "tiny.yaml").read_text())
    for rel in ["data/dataset.safetensors", "data/dataset.json", "data/clean_subset.json",
                "models/clean/model.safetensors", "models/clean/model.json"]:
        assert (r / rel).is_file(), rel
    for a in cfg["attacks"]:
        assert (r / f"attacks/{a}/trigger.safetensors").is_file()
        for m in ["backdoor", "ft"]:
            side = json.loads((r / f"models/{a}/{m}/model.json").read_text())
            assert side["seed"] == 0 and side["code_version"]["source_sha256"] and "config" in side
        for m in ["clean", "backdoor", "ft"]:
            for f in ["metrics.json", "bec.json", "reactivation.json", "delta.safetensors"]:
                assert (r / f"analysis/{a}/{m}/{f}").is_file(), (a, m, f)
    subset = json.loads((r / "data/clean_subset.json").read_text())
    assert len(subset["indices"]) == round(0.2 * 50) * 4
    metrics = json.loads((r / "report/metrics.json").read_text())
    assert set(metrics) == {"badnets", "blended"} and metrics["badnets"]["backdoor"]["der"] == 50
    for f in ["table.csv", "table.md", "bec_vs_asr.png", "reactivation.png", "triggers.png"]:
        p = r / "report" / f
        assert p.is_file() and p.stat().st_size > 100, f
    assert (r / "report/bec_vs_asr.png").read_bytes()[:4] == b"\x89PNG"
    assert (workdir / "logs/tiny/train_clean.log").is_file()
    assert (workdir / "benchmarks/tiny/train_clean.tsv").is_file()


def test_table_rows_and_invariants(workdir):
    df = pd.read_csv(workdir / "results/tiny/report/table.csv")
    assert len(df) == 6 and set(df["attack"]) == {"badnets", "blended"}
    assert set(df["model"]) == {"clean", "backdoor", "ft"}
    assert {"c_acc", "asr", "ra", "der", "bec", "bec_5", "bec_20", "bec_minmax", "asr_reactivated",
            "asr_guaa"} <= set(df.columns)
    bd = df[df.model == "backdoor"]
    assert (bd["bec"] - 1).abs().max() < 1e-6 and (bd["der"] == 50).all()
    assert df[df.model == "clean"]["bec"].abs().max() < 1e-9
    assert df[df.model == "clean"]["der"].isna().all()
    assert df[["c_acc", "asr", "ra", "asr_reactivated", "asr_guaa"]].stack().between(0, 100).all()
    md = (workdir / "results/tiny/report/table.md").read_text()
    assert md.count("\n") == 8 and "| badnets | backdoor |" in md


def test_rerun_has_nothing_to_do(workdir):
    r = _snakemake(workdir, "-n")
    assert "Nothing to be done" in r.stdout + r.stderr


def test_bad_config_fails_early_and_deletes_nothing(workdir):
    before = sorted(p for p in (workdir / "results").rglob("*") if p.is_file())
    bad = yaml.safe_load((workdir / "tiny.yaml").read_text())
    bad["attacks"]["badnets"]["ratio"] = 1.5
    (workdir / "bad.yaml").write_text(yaml.safe_dump(bad))
    r = _snakemake(workdir, configfile="bad.yaml", check=False)
    assert r.returncode != 0
    assert "attacks.badnets.ratio" in r.stdout + r.stderr
    after = sorted(p for p in (workdir / "results").rglob("*") if p.is_file())
    assert before == after


def test_missing_dataset_path_fails_before_any_job(workdir):
    bad = yaml.safe_load((workdir / "tiny.yaml").read_text())
    bad["data"].update(dataset="cifar10", source="path", path="/nonexistent/cifar.tar.gz")
    (workdir / "bad2.yaml").write_text(yaml.safe_dump(bad))
    r = _snakemake(workdir, "-n", configfile="bad2.yaml", check=False)
    assert r.returncode != 0 and "/nonexistent/cifar.tar.gz" in r.stdout + r.stderr
    assert (workdir / "results/tiny/data/dataset.safetensors").is_file()


def _job_counts(out: str) -> dict:
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def test_paper_preset_replaces_params_and_expands_the_grid(repo, tmp_path):
    """The paper grid: 1 clean + 2 backdoored models, 2 FT, 3 models x 2 attacks analysed; params.yaml's
    entries must not leak in (here an extra attack is added to params.yaml)."""
    _copy_workflow(repo, tmp_path)
    p = yaml.safe_load((tmp_path / "params.yaml").read_text())
    p["attacks"]["extra"] = {"type": "badnets", "ratio": 0.1, "target": 0}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    r = _snakemake(tmp_path, "-n", "--replace-workflow-config", configfile="config/paper.yaml")
    c = _job_counts(r.stdout + r.stderr)
    assert c["train_clean"] == 1 and c["train_backdoor"] == 2 and c["defend"] == 2, c
    assert c["metrics"] == c["bec"] == c["reactivate"] == 6 and c["report"] == 1, c
    assert "results/paper/models/badnets/ft/model.safetensors" in r.stdout + r.stderr


def test_full_archive_overlay_dry_run(repo):
    from .conftest import SHARED_ARCHIVE

    if not SHARED_ARCHIVE.exists():
        pytest.skip(f"no archive at {SHARED_ARCHIVE}")
    r = _snakemake(repo, "-n", "--quiet", "rules", configfile="config/full-archive.yaml")
    assert "train_backdoor" in r.stdout + r.stderr
