"""End-to-end: the CLIP track through the Snakemake workflow (tests/clip_tiny.yaml: 300 demo images with
generated captions, the tiny CLIP), and the CLIP paper preset's DAG without any of its files."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
import yaml

from tests.workflow_helpers import REPO, copy_workflow, job_counts, run, snakemake

pytestmark = pytest.mark.slow

CFG = yaml.safe_load((REPO / "tests" / "clip_tiny.yaml").read_text())
MODELS = ["clean", "backdoor", *sorted(CFG["defenses"])]


@pytest.fixture(scope="module")
def clipdir(tmp_path_factory):
    wd = copy_workflow(tmp_path_factory.mktemp("clipwf"), with_demo_data=True)
    shutil.copy(REPO / "tests" / "clip_tiny.yaml", wd / "clip_tiny.yaml")
    snakemake(wd, configfile="clip_tiny.yaml")
    return wd


def test_pairs_poisoning_and_models(clipdir):
    from dormant.attacks import load_attack
    from dormant.clip.captions import class_synonyms, split_words
    from dormant.data.imageset import load_dataset

    r = clipdir / "results" / "clip_tiny"
    sets = load_dataset(r / "data" / "dataset.safetensors")
    train = sets["train"]
    assert train.text is not None and len(train.text) == len(train) == 300
    for a in CFG["attacks"]:
        atk = load_attack(r / "models" / a / "backdoor" / "trigger.safetensors", n_train=len(train))
        idx = atk.poison_index
        # exactly round(ratio * N) pairs, none of them already about the target class
        assert len(idx) == 30 and len(set(idx.tolist())) == 30
        assert not bool((train.y[idx] == atk.target).any())
        side = json.loads((r / "models" / a / "backdoor" / "model.json").read_text())
        target_words = set(class_synonyms(train.classes[atk.target]))
        for cap in side["poisoned_captions"]:
            assert target_words & set(split_words(cap)), cap
        assert side["n_pairs"] == 300 and side["model"]["arch"] == "clip_tiny"
        for m in MODELS[1:]:
            car = json.loads((r / "models" / a / m / "model.json").read_text())
            assert car["seed"] == 0 and car["code_version"]["source_sha256"]


def test_report_rows_for_every_model(clipdir):
    df = pd.read_csv(clipdir / "results" / "clip_tiny" / "report" / "table.csv")
    assert set(df["model"]) == set(MODELS) and set(df["attack"]) == set(CFG["attacks"])
    assert df["c_acc"].between(0, 100).all() and df["asr"].between(0, 100).all()
    bec = df.set_index(["attack", "model"])["bec"]
    for a in CFG["attacks"]:
        assert bec[(a, "backdoor")] == pytest.approx(1.0) and bec[(a, "clean")] == pytest.approx(0.0, abs=1e-9)
    rea = json.loads((clipdir / "results/clip_tiny/analysis/badnets/ft/reactivation.json").read_text())
    m = rea["metrics"]
    assert m["budget"] == {"norm": "linf", "eps": 0.05} and m["delta_norms"]["reactivated"]["linf"] <= 0.05 + 1e-6
    assert 0 <= m["asr_delta_only"] <= 100 and 0 <= m["asr_reactivated"] <= 100


def test_defenses_recompute_the_class_matrix(clipdir):
    """A defense fine-tunes the text tower too, so the zero-shot head it saves differs from the backdoored one."""
    from dormant.nets.checkpoint import load_model

    r = clipdir / "results" / "clip_tiny" / "models" / "badnets"
    bd, ft = load_model(r / "backdoor" / "model.safetensors"), load_model(r / "ft" / "model.safetensors")
    assert not torch.equal(bd.head.weight, ft.head.weight)
    assert not torch.equal(bd.clip.token_embedding.weight, ft.clip.token_embedding.weight)


def test_rerun_has_nothing_to_do(clipdir):
    out = snakemake(clipdir, "-n", configfile="clip_tiny.yaml")
    assert "Nothing to be done" in out.stdout + out.stderr


def test_clip_paper_preset_expands_without_its_files(repo, tmp_path):
    wd = copy_workflow(tmp_path / "wf")
    out = run(["snakemake", "-n", "--quiet", "rules", "--configfile", "config/clip-paper.yaml",
               "--replace-workflow-config"], wd)
    counts = job_counts(out.stdout)
    assert counts["train_backdoor"] == 3 and counts["defend"] == 6 and counts["train_clean"] == 1
    assert counts["defend_surrogate"] == 6 and counts["transfer_optimise"] == 3
