"""Bad inputs, table-driven: broken configs, damaged artifacts and datasets are each stopped with the project's
own error (exit code 2 from a stage or from Snakemake) whose message names the key or the file, before any
work and without touching what results/ already holds. Also: SIGKILL during writes leaves no partial artifact
and a rerun completes; two concurrent writers never hand a reader a mismatched weights/sidecar pair.

Most configs are checked through :func:`dormant.config.load`, the code path the Snakefile runs on every config
file; a representative handful goes through ``snakemake -n --configfile BAD.yaml`` as a user runs it."""

from __future__ import annotations

import copy
import json
import math
import os
import random
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from dormant import config
from dormant.errors import CheckpointError, ConfigError, DataError, DormantError, NonFiniteError

from .workflow_helpers import REPO, copy_workflow, env, snakemake, stage_artifacts

TINY = yaml.safe_load((REPO / "tests" / "tiny.yaml").read_text())


def _tree(root: Path) -> dict:
    """path -> (size, mtime_ns) of every file under ``root`` (what 'unchanged' means for results/)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module", autouse=True)
def results_untouched():
    """Nothing in the repository's results/ changes while these tests feed it bad input."""
    before = _tree(REPO / "results")
    yield
    assert _tree(REPO / "results") == before


# ---------------------------------------------------------------------------------------------------- configs

def _set(path: str, value):
    """A mutation setting the dotted key ``path`` of the config."""

    def mutate(cfg):
        *head, last = path.split(".")
        node = cfg
        for k in head:
            node = node.setdefault(k, {})
        node[last] = value

    return mutate


def _do(*fns):
    def mutate(cfg):
        for f in fns:
            f(cfg)

    return mutate


PBE = {"type": "pbe", "rounds": 3, "init_fraction": 0.05, "keep_fractions": [0.2, 0.5], "epochs": 1, "lr": 0.001}

# (id, mutation of tests/tiny.yaml (synthetic: 4 classes, 16x16 images), what the message must name)
CONFIG_CASES = [
    ("epochs-float", _set("train.epochs", 10.0), "train.epochs"),
    ("epochs-bool", _set("train.epochs", True), "train.epochs"),
    ("epochs-huge", _set("train.epochs", 10**12), "train.epochs"),
    ("epochs-string", _set("train.epochs", "ten"), "train.epochs"),
    ("batch-1e20", _set("train.batch_size", 1e20), "train.batch_size"),
    ("batch-zero", _set("train.batch_size", 0), "train.batch_size"),
    ("batch-huge", _set("train.batch_size", 10**6), "train.batch_size"),
    ("seed-2**70", _set("seed", 2**70), "seed"),
    ("seed-negative", _set("seed", -1), "seed"),
    ("seed-float", _set("seed", 0.5), "seed"),
    ("seed-offset-overflow", _do(_set("seed", 2**63 - 1), _set("transfer.seed_offset", 1)), "transfer.seed_offset"),
    ("lr-nan", _set("train.lr", math.nan), "train.lr"),
    ("lr-inf", _set("train.lr", math.inf), "train.lr"),
    ("momentum-minus-inf", _set("train.momentum", -math.inf), "train.momentum"),
    ("clean-ratio-nan", _set("defense_data.clean_ratio", math.nan), "defense_data.clean_ratio"),
    ("crop-padding-bool", _set("train.crop_padding", True), "train.crop_padding"),
    ("schedule-unknown", _set("train.schedule", "linear"), "train.schedule"),
    ("linf-eps-2", _set("reactivation.eps", 2.0), "reactivation.eps"),
    ("query-linf-eps", _set("query.eps", 1.5), "query.eps"),
    ("transfer-l2-eps", _do(_set("transfer.norm", "l2"), _set("transfer.eps", 1000.0)), "transfer.eps"),
    ("ibau-radius", _set("defenses.ib", {"type": "ibau", "radius": 1000.0}), "defenses.ib.radius"),
    ("sau-eps", _set("defenses.sa", {"type": "sau", "eps": 5.0}), "defenses.sa.eps"),
    ("patch-100", _set("attacks.badnets.patch_size", 100), "attacks.badnets.patch_size"),
    ("patch-whole-image", _set("attacks.badnets.patch_size", 32), "attacks.badnets.patch_size"),
    ("trojannn-patch", _set("attacks.tro", {"type": "trojannn", "ratio": 0.1, "target": 0, "patch_size": 40}),
     "attacks.tro.patch_size"),
    ("wanet-k", _set("attacks.wa", {"type": "wanet", "ratio": 0.1, "target": 0, "k": 100}), "attacks.wa.k"),
    ("target-equals-classes", _set("attacks.badnets.target", 4), "attacks.badnets.target"),
    ("target-10", _set("attacks.blended.target", 10), "attacks.blended.target"),
    ("target-negative", _set("attacks.blended.target", -1), "attacks.blended.target"),
    ("ratio-1.5", _set("attacks.badnets.ratio", 1.5), "attacks.badnets.ratio"),
    ("attack-type-unknown", _set("attacks.badnets.type", "badnetz"), "attacks.badnets.type"),
    ("attack-unknown-key", _set("attacks.badnets.alpha", 0.2), "alpha"),
    ("pattern-path-missing", _set("attacks.blended.pattern_path", "/nonexistent/pattern.png"),
     "attacks.blended.pattern_path"),
    ("pbe-keep-decreasing", _set("defenses.pbe", {**PBE, "keep_fractions": [0.5, 0.2]}), "keep_fractions"),
    ("pbe-keep-length", _set("defenses.pbe", {**PBE, "keep_fractions": [0.5]}), "keep_fractions"),
    ("defense-unknown-key", _set("defenses.ft.epochz", 3), "defenses.ft"),
    ("defense-reserved-name", _set("defenses.backdoor", {"type": "ft", "epochs": 1, "lr": 0.1}), "backdoor"),
    ("name-300", _set("name", "a" * 300), "name"),
    ("name-traversal", _set("name", "../x"), "name"),
    ("name-dotfile", _set("name", ".hidden"), "name"),
    ("name-empty", _set("name", ""), "name"),
    ("attack-name-slash", lambda c: c["attacks"].update({"bad/name": c["attacks"]["badnets"]}), "attacks"),
    ("attack-name-long", lambda c: c["attacks"].update({"a" * 100: c["attacks"]["badnets"]}), "attacks"),
    ("data-path-missing", _do(_set("data.dataset", "cifar10"), _set("data.source", "path"),
                              _set("data.path", "/nonexistent/cifar.tar.gz")), "data.path"),
    ("data-path-null", _do(_set("data.dataset", "cifar10"), _set("data.source", "path"), _set("data.path", None)),
     "data.path"),
    ("data-path-wrong-kind", _do(_set("data.dataset", "cifar10"), _set("data.source", "path"),
                                 _set("data.path", str(REPO / "params.yaml"))), "data.path"),
    ("data-path-no-layout", _do(_set("data.dataset", "cifar10"), _set("data.source", "path"),
                                _set("data.path", str(REPO / "docs"))), "data.path"),
    ("tiny-imagenet-torchvision", _do(_set("data.dataset", "tiny_imagenet"), _set("data.source", "torchvision")),
     "data.source"),
    ("synthetic-with-demo", _set("data.source", "demo"), "data.dataset"),
    ("one-class", _set("data.synthetic.num_classes", 1), "data.synthetic.num_classes"),
    ("image-size-huge", _set("data.synthetic.image_size", 100000), "data.synthetic.image_size"),
    ("synthetic-too-big", _do(_set("data.synthetic.image_size", 4096), _set("data.train_per_class", 10**6)),
     "data.synthetic"),
    ("checkpoints-past-budget", _set("query.checkpoints", [10**6]), "query.checkpoints"),
    ("surrogate-unknown-defense", _set("transfer.surrogates.s1", {"arch": "cnn_tiny", "defenses": ["nope"]}),
     "transfer.surrogates.s1.defenses"),
    ("headline-not-in-fractions", _set("bec.headline_fraction", 0.3), "bec.headline_fraction"),
    ("unknown-section", _set("trainn", {"epochs": 1}), "trainn"),
    ("missing-section", lambda c: c.pop("bec"), "bec"),
    ("arch-unknown", _set("model.arch", "resnet9000"), "model.arch"),
    ("ssba-width-huge", _set("attacks.ss", {"type": "ssba", "ratio": 0.1, "target": 0, "width": 10**7}),
     "attacks.ss.width"),
    ("ssba-bits-huge", _set("attacks.ss", {"type": "ssba", "ratio": 0.1, "target": 0, "n_bits": 10**7}),
     "attacks.ss.n_bits"),
]


@pytest.mark.parametrize("mutate,names", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_is_refused_naming_the_key(tmp_path, mutate, names):
    cfg = copy.deepcopy(TINY)
    mutate(cfg)
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(cfg, sort_keys=False))
    with pytest.raises(ConfigError) as e:
        config.load(f)
    msg = str(e.value)
    assert names in msg and str(f) in msg, msg
    assert len(msg) < 2000  # no 300-character value quoted in full, no traceback


# (id, file text (bytes), what the one-line message must name besides the file)
FILE_CASES = [
    ("binary", b"name: x\n\x00\x01\x02\xff", "binary"),
    ("not-utf8", "name: caf\u00e9\n".encode("latin-1"), "UTF-8"),
    ("duplicate-key", b"name: a\nseed: 0\nname: b\n", "lines 1 and 3"),
    ("duplicate-attack", b"attacks:\n  badnets: {type: badnets, ratio: 0.1, target: 0}\n"
                         b"  badnets: {type: badnets, ratio: 0.2, target: 0}\n", "lines 2 and 3"),
    ("unclosed-bracket", b"name: x\ntrain: {epochs: [1, 2\n", ":3:"),
    ("bad-indent", b"name: x\n  seed: 0\n", ":2:"),
    ("yte", b"__use_yte__: true\nname: ?str(1 + 1)\n", "__use_yte__"),
    ("top-level-list", b"- 1\n- 2\n", "mapping"),
    ("top-level-scalar", b"hello\n", "mapping"),
]


@pytest.mark.parametrize("blob,names", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_bad_config_file_is_one_line_naming_file_and_line(tmp_path, blob, names):
    f = tmp_path / "bad.yaml"
    f.write_bytes(blob)
    with pytest.raises(ConfigError) as e:
        config.read_file(f)
    msg = str(e.value)
    assert str(f) in msg and names in msg and "\n" not in msg, msg


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found.*nope.yaml"):
        config.read_file(tmp_path / "nope.yaml")


def test_yte_opt_in(tmp_path, monkeypatch):
    f = tmp_path / "t.yaml"
    f.write_text("__use_yte__: true\nname: x\n")
    monkeypatch.setenv(config.ALLOW_YTE_ENV, "1")
    assert config.read_file(f)["name"] == "x"


# What a user runs: snakemake -n --configfile BAD.yaml --replace-workflow-config, in a copy of the workflow that
# already holds results. (id, file bytes, what the message names)
CLI_CASES = [
    ("duplicate-attack", None, "lines"),
    ("epochs-float", None, "train.epochs"),
    ("name-300", None, "name"),
    ("yte-code", b"__use_yte__: true\nname: ?str(__import__('pathlib').Path('PWNED').touch())\n", "__use_yte__"),
    ("binary", b"\x00\x01name: x\xff\n", "binary"),
    ("unclosed-bracket", b"name: x\ntrain: {epochs: [1, 2\n", ":3:"),
    ("missing", b"", "not found"),
]


@pytest.fixture(scope="module")
def cli_workdir(tmp_path_factory):
    wd = copy_workflow(tmp_path_factory.mktemp("badcli"))
    done = wd / "results" / "tiny" / "data" / "dataset.safetensors"
    done.parent.mkdir(parents=True)
    done.write_bytes(b"an artifact of an earlier run")
    return wd


def _cli_config(case: str, blob, wd: Path) -> str:
    cfg = copy.deepcopy(TINY)
    if case == "missing":
        return "nope.yaml"
    if blob is not None:
        (wd / f"{case}.yaml").write_bytes(blob)
        return f"{case}.yaml"
    text = yaml.safe_dump(cfg, sort_keys=False)
    if case == "duplicate-attack":
        text = text.replace("attacks:\n", "attacks:\n  badnets: {type: badnets, ratio: 0.3, target: 1}\n", 1)
    elif case == "epochs-float":
        text = text.replace("epochs: 3\n", "epochs: 3.0\n", 1)
    elif case == "name-300":
        text = text.replace("name: tiny\n", f"name: {'n' * 300}\n", 1)
    (wd / f"{case}.yaml").write_text(text)
    return f"{case}.yaml"


@pytest.mark.parametrize("case,blob,names", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_snakemake_refuses_bad_config_with_exit_2(cli_workdir, case, blob, names):
    wd = cli_workdir
    before = _tree(wd / "results")
    f = _cli_config(case, blob, wd)
    r = snakemake(wd, "-n", "--replace-workflow-config", configfile=f, check=False, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out[-3000:]
    errors = [ln for ln in out.splitlines() if ln.startswith("error: ")]
    assert errors and f in errors[0] and names in out, out[-3000:]
    assert "Traceback" not in out
    assert not (wd / "PWNED").exists()  # the template's code never ran
    assert _tree(wd / "results") == before


def test_error_header_names_the_file_given(cli_workdir):
    wd = cli_workdir
    cfg = copy.deepcopy(TINY)
    cfg["train"]["lr"] = -1.0
    (wd / "neg.yaml").write_text(yaml.safe_dump(cfg))
    r = snakemake(wd, "-n", "--replace-workflow-config", configfile="neg.yaml", check=False, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 2 and "neg.yaml (--replace-workflow-config)" in out and "train.lr" in out, out[-2000:]
    assert "params.yaml" not in [ln for ln in out.splitlines() if ln.startswith("error:")][0]


# -------------------------------------------------------------------------------------------------- artifacts

@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A small dataset, a model with its sidecar and a trigger, as the stages write them."""
    return stage_artifacts(tmp_path_factory.mktemp("good"), train_per_class=10, test_per_class=4, config={"x": 1})


def _safetensors(path: Path, tensors: dict, meta) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
              metadata={"dormant": meta if isinstance(meta, str) else json.dumps(meta)})
    return path


def _model_tensors(good):
    return {k: v.clone() for k, v in good["net"].state_dict().items()}


def _first_weight(t):
    return next(k for k in t if k.endswith("weight"))


def _model_case(kind):
    """A damaged model file: (build(good, path) -> None, field the message names)."""

    def meta_with(**kw):
        return lambda g, p: _safetensors(p, _model_tensors(g), {"arch": "cnn_tiny", "num_classes": 4, **kw})

    def tensors_with(change):
        def build(g, p):
            t = _model_tensors(g)
            change(t)
            _safetensors(p, t, {"arch": "cnn_tiny", "num_classes": 4})

        return build

    return {
        "truncated": (lambda g, p: p.write_bytes((g["dir"] / "model.safetensors").read_bytes()[:500]), "corrupt"),
        "garbage": (lambda g, p: p.write_bytes(os.urandom(4000)), "corrupt"),
        "empty": (lambda g, p: p.write_bytes(b""), "corrupt"),
        "arch-unknown": (meta_with(arch="resnet9000"), "'arch'"),
        "arch-number": (meta_with(arch=7), "'arch'"),
        "no-arch": (lambda g, p: _safetensors(p, _model_tensors(g), {"num_classes": 4}), "'arch'"),
        "classes-string": (meta_with(num_classes="4"), "'num_classes'"),
        "classes-negative": (meta_with(num_classes=-3), "'num_classes'"),
        "classes-2**40": (meta_with(num_classes=2**40), "'num_classes'"),
        "classes-bool": (meta_with(num_classes=True), "'num_classes'"),
        "classes-missing": (lambda g, p: _safetensors(p, _model_tensors(g), {"arch": "cnn_tiny"}), "'num_classes'"),
        "classes-mismatch": (meta_with(num_classes=5), "shape"),
        "meta-list": (lambda g, p: _safetensors(p, _model_tensors(g), [1, 2]), "JSON object"),
        "meta-not-json": (lambda g, p: _safetensors(p, _model_tensors(g), "{not json"), "not valid JSON"),
        "meta-nan": (lambda g, p: _safetensors(p, _model_tensors(g), '{"arch": "cnn_tiny", "num_classes": NaN}'),
                     "not valid JSON"),
        "float64-weights": (tensors_with(lambda t: t.update({k: v.double() for k, v in t.items()
                                                             if v.is_floating_point()})), "dtype"),
        "nan-weights": (tensors_with(lambda t: t[_first_weight(t)].fill_(math.nan)), "NaN"),
        "inf-weights": (tensors_with(lambda t: t[_first_weight(t)].fill_(math.inf)), "NaN or infinite"),
        "missing-tensor": (tensors_with(lambda t: t.pop(_first_weight(t))), "missing"),
        "extra-tensor": (tensors_with(lambda t: t.update(evil=torch.zeros(3))), "evil"),
    }[kind]


def _assert_refused(error, path, field, load, *args, **kwargs):
    """``load(path, *args, **kwargs)`` raises ``error`` with a message naming the file and the field."""
    with pytest.raises(error) as e:
        load(path, *args, **kwargs)
    assert str(path) in str(e.value) and field in str(e.value), str(e.value)


MODEL_CASES = ["truncated", "garbage", "empty", "arch-unknown", "arch-number", "no-arch", "classes-string",
               "classes-negative", "classes-2**40", "classes-bool", "classes-missing", "classes-mismatch",
               "meta-list", "meta-not-json", "meta-nan", "float64-weights", "nan-weights", "inf-weights",
               "missing-tensor", "extra-tensor"]


@pytest.mark.parametrize("kind", MODEL_CASES)
def test_damaged_model_file_is_refused_naming_file_and_field(good, tmp_path, kind):
    from dormant.nets.checkpoint import load_model

    build, field = _model_case(kind)
    p = tmp_path / "model.safetensors"
    build(good, p)
    _assert_refused(CheckpointError, p, field, load_model)


# (id, sidecar bytes (None: from the good sidecar with a change), field named)
SIDECAR_CASES = [
    ("not-utf8", b'{"model": "\xff\xfe"}', "UTF-8"),
    ("not-json", b'{"model": ', "corrupt JSON"),
    ("not-object", b"[1, 2, 3]", "JSON object"),
    ("nan", None, "NaN"),
    ("other-weights", None, "weights_sha256"),
    ("no-model-field", b'{"seed": 0}', "model"),
]


@pytest.mark.parametrize("blob,field", [c[1:] for c in SIDECAR_CASES], ids=[c[0] for c in SIDECAR_CASES])
def test_damaged_sidecar_is_refused(good, tmp_path, blob, field):
    from dormant.nets.checkpoint import read_model

    p = tmp_path / "model.safetensors"
    p.write_bytes((good["dir"] / "model.safetensors").read_bytes())
    car = json.loads((good["dir"] / "model.json").read_text())
    if blob is None and field == "NaN":
        blob = json.dumps({**car, "seed": math.nan}).encode()
    elif blob is None:
        blob = json.dumps({**car, "weights_sha256": "0" * 64}).encode()
    (tmp_path / "model.json").write_bytes(blob)
    with pytest.raises(CheckpointError) as e:
        read_model(p)
    assert "model" in str(e.value) and field in str(e.value), str(e.value)


def _trigger_case(kind):
    def meta_edit(change):
        def build(g, src, p):
            from safetensors import safe_open

            with safe_open(str(src), "pt") as f:
                t = {k: f.get_tensor(k) for k in f.keys()}
                meta = json.loads(f.metadata()["dormant"])
            change(t, meta)
            _safetensors(p, t, meta)

        return build

    return {
        "no-config": (meta_edit(lambda t, m: m.pop("config")), "'config'"),
        "no-poison-index": (meta_edit(lambda t, m: t.pop("poison_index")), "poison_index"),
        "unknown-type": (meta_edit(lambda t, m: m["config"].update(type="rootkit")), "'type'"),
        "index-out-of-range": (meta_edit(lambda t, m: t.update(poison_index=torch.tensor([0, 10**6]))),
                               "poison_index"),
        "index-negative": (meta_edit(lambda t, m: t.update(poison_index=torch.tensor([-1, 2]))), "poison_index"),
        "index-float": (meta_edit(lambda t, m: t.update(poison_index=torch.tensor([0.5, 2.7]))), "poison_index"),
        "index-repeated": (meta_edit(lambda t, m: t.update(poison_index=torch.tensor([3, 3]))), "poison_index"),
        "image-shape-huge": (meta_edit(lambda t, m: m.update(image_shape=[3, 10**6, 10**6])), "image_shape"),
        "classes-string": (meta_edit(lambda t, m: m.update(num_classes="4")), "num_classes"),
        "config-width-huge": (meta_edit(lambda t, m: m.update(config={"type": "input_aware", "ratio": 0.1, "target": 0,
                                                                      "width": 10**7})), "width"),
        "config-ratio-inf": (meta_edit(lambda t, m: m["config"].update(ratio=math.inf)), "Infinity"),
        "config-ratio-string": (meta_edit(lambda t, m: m["config"].update(ratio="all")), "ratio"),
        "target-out-of-range": (meta_edit(lambda t, m: m["config"].update(target=9)), "target"),
        "resource-nan": (meta_edit(lambda t, m: t.update({"res.x": torch.full((3,), math.nan)})), "res.x"),
        "unexpected-tensor": (meta_edit(lambda t, m: t.update(evil=torch.zeros(2))), "evil"),
    }[kind]


TRIGGER_CASES = ["no-config", "no-poison-index", "unknown-type", "index-out-of-range", "index-negative",
                 "index-float", "index-repeated", "image-shape-huge", "classes-string", "target-out-of-range",
                 "resource-nan", "unexpected-tensor", "config-width-huge", "config-ratio-inf",
                 "config-ratio-string"]


@pytest.mark.parametrize("kind", TRIGGER_CASES)
def test_damaged_trigger_file_is_refused(good, tmp_path, kind):
    from dormant.attacks import load_attack

    build, field = _trigger_case(kind)
    p = tmp_path / "trigger.safetensors"
    build(good, good["dir"] / "trigger.safetensors", p)
    _assert_refused(CheckpointError, p, field, load_attack, n_train=len(good["sets"]["train"]))


def _dataset_case(kind):
    def tensors(g):
        return {f"{s}_{k}": getattr(g["sets"][s], k).clone() for s in ("train", "test") for k in ("x", "y")}

    def with_(change, meta=None):
        def build(g, p):
            t = tensors(g)
            m = {"classes": g["sets"]["train"].classes} if meta is None else meta
            change(t)
            _safetensors(p, t, m)

        return build

    return {
        "no-classes": (with_(lambda t: None, meta={"source": "x"}), "'classes'"),
        "classes-not-list": (with_(lambda t: None, meta={"classes": "abcd"}), "'classes'"),
        "no-test-tensors": (with_(lambda t: [t.pop("test_x"), t.pop("test_y")]), "test_x"),
        "float-images": (with_(lambda t: t.update(train_x=t["train_x"].float())), "train_x"),
        "count-mismatch": (with_(lambda t: t.update(train_y=t["train_y"][:-3])), "train_y"),
        "labels-out-of-range": (with_(lambda t: t["test_y"].__setitem__(0, 7)), "labels"),
        "one-class": (with_(lambda t: [t.update({f"{s}_y": torch.zeros_like(t[f"{s}_y"])}) for s in ("train", "test")],
                            meta={"classes": ["only"]}), "at least 2"),
        "empty-class": (with_(lambda t: t["train_y"].masked_fill_(t["train_y"] == 3, 2)), "no train images"),
        "int32-labels": (with_(lambda t: t.update(train_y=t["train_y"].int())), "train_y"),
    }[kind]


DATASET_CASES = ["no-classes", "classes-not-list", "no-test-tensors", "float-images", "count-mismatch",
                 "labels-out-of-range", "one-class", "empty-class", "int32-labels"]


@pytest.mark.parametrize("kind", DATASET_CASES)
def test_damaged_dataset_file_is_refused(good, tmp_path, kind):
    from dormant.data.imageset import load_dataset

    build, field = _dataset_case(kind)
    p = tmp_path / "dataset.safetensors"
    build(good, p)
    _assert_refused(DormantError, p, field, load_dataset)


DELTA_CASES = [
    ("nan", {"delta_a": torch.full((3, 16, 16), math.nan)}, "delta_a"),
    ("wrong-shape", {"delta_a": torch.zeros(3, 99, 99)}, "shape"),
    ("integer", {"delta_a": torch.zeros(3, 16, 16, dtype=torch.int64)}, "dtype"),
    ("unexpected-tensor", {"delta_a": torch.zeros(3, 16, 16), "evil": torch.zeros(1)}, "evil"),
    ("missing-required", {"delta_a": torch.zeros(3, 16, 16)}, "delta_guaa"),
]


@pytest.mark.parametrize("tensors,field", [c[1:] for c in DELTA_CASES], ids=[c[0] for c in DELTA_CASES])
def test_damaged_delta_file_is_refused(tmp_path, tensors, field):
    from dormant.io import load_deltas

    p = _safetensors(tmp_path / "delta.safetensors", tensors, {"budget": 0.05})
    _assert_refused(CheckpointError, p, field, load_deltas, (3, 16, 16),
                    required=("delta_guaa",) if field == "delta_guaa" else ())


def test_damaged_resume_checkpoint_is_one_error(good, tmp_path):
    from dormant.training.resume import try_resume

    p = _safetensors(tmp_path / "ck.safetensors", {"model.x": torch.zeros(1)},
                     {"epoch": 0, "history": [], "config_hash": "k"})  # no rng, no weights of this model
    net = good["net"]
    with pytest.raises(CheckpointError, match="ck.safetensors.*damaged"):
        try_resume(p, net, torch.optim.SGD(net.parameters(), lr=0.1), torch.Generator(), "k")


def _image_folder(root: Path, classes: dict[str, int], empty: tuple[str, ...] = ()) -> Path:
    from dormant.data.imageset import encode_image

    for split in ("train", "test"):
        for c, n in classes.items():
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = torch.full((3, 8, 8), 40 * i, dtype=torch.uint8)
                (root / split / c / f"{i}.png").write_bytes(encode_image(img, "png"))
        for c in empty:
            (root / split / c).mkdir(parents=True, exist_ok=True)
    return root


@pytest.mark.parametrize("kind", ["empty-class-folder", "one-class", "empty-class-in-tar"])
def test_bad_dataset_source_is_refused(tmp_path, kind):
    from dormant.data.sources import load_source

    if kind == "one-class":
        src = _image_folder(tmp_path / "d", {"cat": 2})
    else:
        src = _image_folder(tmp_path / "d", {"cat": 2, "dog": 2}, empty=("emu",))
    if kind == "empty-class-in-tar":
        tar = tmp_path / "d.tar"
        with tarfile.open(tar, "w") as t:
            t.add(src, arcname="cifar")
        src = tar
    with pytest.raises(DataError) as e:
        load_source({"dataset": "cifar10", "source": "path", "path": str(src)})
    assert str(src) in str(e.value) and ("emu" in str(e.value) or "at least 2" in str(e.value)), str(e.value)


# ------------------------------------------------------------------- stages: exit 2, one line, nothing written

def _defend_args(g, tmp_path, backdoored):
    sub = tmp_path / "subset.json"
    sub.write_text(json.dumps({"indices": [0, 1, 2, 3]}))
    params = {"defense": {"type": "ft", "epochs": 1, "lr": 0.01, "batch_size": 4}, "seed": 0}
    return ["defend", "--params", json.dumps(params), "--dataset", str(g["dir"] / "dataset.safetensors"),
            "--subset", str(sub), "--trigger", str(g["dir"] / "trigger.safetensors"),
            "--backdoored", str(backdoored), "--model", str(tmp_path / "out" / "model.safetensors")]


@pytest.mark.parametrize("kind", ["mismatched-sidecar", "truncated-sidecar", "classes-2**40", "subset-out-of-range"])
def test_defend_reads_every_input_first_and_exits_2(good, tmp_path, capsys, kind):
    from dormant.cli import main

    bd = tmp_path / "bd.safetensors"
    bd.write_bytes((good["dir"] / "model.safetensors").read_bytes())
    car = (good["dir"] / "model.json").read_text()
    args = _defend_args(good, tmp_path, bd)
    if kind == "mismatched-sidecar":
        car = car.replace(json.loads(car)["weights_sha256"], "f" * 64)
    elif kind == "truncated-sidecar":
        car = car[: len(car) // 2]
    elif kind == "classes-2**40":
        _model_case("classes-2**40")[0](good, bd)
        car = json.dumps({k: v for k, v in json.loads(car).items() if k != "weights_sha256"})
    else:
        (tmp_path / "subset.json").write_text(json.dumps({"indices": [0, 10**6]}))
    (tmp_path / "bd.json").write_text(car)
    t0 = time.perf_counter()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and ("bd." in err[0] or "subset.json" in err[0]), err
    assert not (tmp_path / "out").exists()  # nothing written, and no defense ran
    assert time.perf_counter() - t0 < 20


@pytest.mark.parametrize("params", ['{"seed": 0, "seed": 1, "data": {}}', "yaml"])
def test_stage_params_with_duplicate_keys_exit_2(tmp_path, capsys, params):
    from dormant.cli import main

    if params == "yaml":
        (tmp_path / "p.yaml").write_text("seed: 0\ndata: {}\nseed: 1\n")
        params = str(tmp_path / "p.yaml")
    assert main(["prepare-data", "--params", params, "--dataset", str(tmp_path / "d.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "duplicate key" in err and "seed" in err, err
    assert not (tmp_path / "d.safetensors").exists()


def test_diverging_training_stops_and_writes_no_model(good, tmp_path, capsys):
    from dormant.cli import main

    params = {"model": {"arch": "cnn_tiny"}, "seed": 0,
              "train": {"epochs": 2, "batch_size": 8, "lr": 1e30, "augment": False}}
    out = tmp_path / "m" / "model.safetensors"
    assert main(["train-clean", "--params", json.dumps(params), "--dataset", str(good["dir"] / "dataset.safetensors"),
                 "--model", str(out)]) == 2
    err = capsys.readouterr().err
    assert "NaN or infinite" in err and "no model was written" in err, err
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_non_finite_model_is_never_saved(good, tmp_path):
    from dormant.nets import build_model
    from dormant.nets.checkpoint import save_model

    net = build_model("cnn_tiny", 4)
    with torch.no_grad():
        next(iter(net.parameters())).fill_(math.inf)
    with pytest.raises(NonFiniteError):
        save_model(net, tmp_path / "x.safetensors", arch="cnn_tiny", num_classes=4, config={}, seed=0)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------- writes

@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_artifacts_follow_the_umask(good, tmp_path, umask, mode):
    from dormant.nets.checkpoint import save_model

    old = os.umask(umask)
    try:
        save_model(good["net"], tmp_path / "a" / "model.safetensors", arch="cnn_tiny", num_classes=4, config={},
                   seed=0)
    finally:
        os.umask(old)
    for f in ("model.safetensors", "model.json"):
        assert (tmp_path / "a" / f).stat().st_mode & 0o777 == mode, f
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o777 & ~umask


WRITER = textwrap.dedent("""
    import sys, torch
    from dormant.nets import build_model
    from dormant.nets.checkpoint import save_model
    out, seeds, rounds = sys.argv[1], [int(s) for s in sys.argv[2].split(",")], int(sys.argv[3])
    nets = {}
    for s in seeds:
        torch.manual_seed(s)
        nets[s] = build_model("cnn_small", 10)
    print("ready", flush=True)
    for i in range(rounds):
        s = seeds[i % len(seeds)]
        save_model(nets[s], out, arch="cnn_small", num_classes=10, config={"writer": s}, seed=s)
""")


def _writer(tmp_path, out, seeds, rounds):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return subprocess.Popen([sys.executable, str(script), str(out), ",".join(map(str, seeds)), str(rounds)],
                            stdout=subprocess.PIPE, text=True, env=env())


def _reference_digests(tmp_path, seeds):
    """sha256 of each seed's weights file, written once without interference."""
    from dormant.nets import build_model
    from dormant.nets.checkpoint import save_model

    out = {}
    for s in seeds:
        torch.manual_seed(s)
        p = tmp_path / f"ref{s}" / "model.safetensors"
        save_model(build_model("cnn_small", 10), p, arch="cnn_small", num_classes=10, config={"writer": s}, seed=s)
        out[s] = json.loads(p.with_suffix(".json").read_text())["weights_sha256"]
    return out


def test_sigkill_during_writes_leaves_no_partial_artifact(tmp_path):
    from dormant.nets.checkpoint import read_model

    refs = _reference_digests(tmp_path, [1, 2])
    out = tmp_path / "run" / "model.safetensors"
    rng = random.Random(0)
    for _ in range(4):
        w = _writer(tmp_path, out, [1, 2], 10**6)
        assert w.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))
        w.send_signal(signal.SIGKILL)
        w.wait()
        if out.exists():  # never partial: a complete file of one writer's weights, or a detected mismatch
            try:
                _, _, car = read_model(out)
                assert car["weights_sha256"] == refs[car["seed"]]
            except CheckpointError as e:
                assert "does not match its sidecar" in str(e)
    # the rerun completes, removes what the killed writers left, and ends with the reference result
    w = _writer(tmp_path, out, [2], 1)
    assert w.wait(timeout=120) == 0
    assert not [f.name for f in out.parent.iterdir() if f.name.endswith(".tmp")]
    _, _, car = read_model(out)
    assert car["weights_sha256"] == refs[2]


def test_concurrent_writers_never_give_a_reader_a_mismatched_pair(tmp_path):
    from dormant.io import tensor_digest
    from dormant.nets import build_model
    from dormant.nets.checkpoint import read_model

    refs = _reference_digests(tmp_path, [1, 2])
    weights = {}
    for s in (1, 2):
        torch.manual_seed(s)
        weights[s] = tensor_digest(*build_model("cnn_small", 10).state_dict().values())
    out = tmp_path / "shared" / "model.safetensors"
    writers = [_writer(tmp_path, out, [s], 10**6) for s in (1, 2)]
    for w in writers:
        assert w.stdout.readline().strip() == "ready"
    while not out.with_suffix(".json").exists():  # a pair exists once a writer finished its first save
        time.sleep(0.01)
    ok = detected = 0
    deadline = time.time() + 5
    try:
        while time.time() < deadline:
            try:
                net, _, car = read_model(out)
            except CheckpointError as e:  # the reader noticed a pair of two writers and refused it
                assert "does not match its sidecar" in str(e) or "missing" in str(e), str(e)
                detected += 1
                continue
            # the sidecar describes these very weights: its digest, and the weights of its writer's seed
            assert car["weights_sha256"] == refs[car["seed"]]
            assert tensor_digest(*net.state_dict().values()) == weights[car["seed"]]
            ok += 1
    finally:
        for w in writers:
            w.kill()
            w.wait()
    assert ok > 0, (ok, detected)


def test_leftovers_of_killed_writes_are_ignored_by_git_and_dvc_and_cleaned(tmp_path):
    import fnmatch

    from dormant.io import _HOST, write_text

    for ignore in (".gitignore", ".dvcignore"):
        assert ".*.tmp" in (REPO / ignore).read_text().split("\n"), ignore
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".a.json.{_HOST}.{int(dead.stdout)}.abc123.tmp"
    stale.write_text("partial")
    other_host = tmp_path / f".a.json.elsewhere.{int(dead.stdout)}.abc123.tmp"
    other_host.write_text("a writer on another machine")
    assert fnmatch.fnmatch(stale.name, ".*.tmp")
    write_text(tmp_path / "b.json", "{}\n")
    assert not stale.exists() and other_host.exists()  # another host's writer may still be alive
    assert sorted(p.name for p in tmp_path.iterdir()) == [other_host.name, "b.json"]


TINY_TARGET = "results/tiny/models/badnets/ft/model.safetensors"


def _tiny_workflow(dest: Path) -> Path:
    wd = copy_workflow(dest)
    cfg = copy.deepcopy(TINY)
    cfg["attacks"] = {"badnets": cfg["attacks"]["badnets"]}
    cfg["train"]["epochs"] = 2
    (wd / "t.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return wd


def _weights_digests(wd: Path) -> dict:
    from dormant.io import load_tensors, tensor_digest

    return {str(p.relative_to(wd)): tensor_digest(*load_tensors(p)[0].values())
            for p in sorted((wd / "results").rglob("model.safetensors"))}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real (tiny) run up to a defended model, uninterrupted."""
    wd = _tiny_workflow(tmp_path_factory.mktemp("tinyrun"))
    snakemake(wd, "--replace-workflow-config", TINY_TARGET, configfile="t.yaml", timeout=600)
    return wd


@pytest.mark.slow
def test_tiny_run_writes_shareable_paired_artifacts(tiny_run):
    """Every artifact readable by the group and others under the umask, every model paired with its sidecar
    by digest, no temporary file left."""
    from dormant.io import current_umask, file_sha256
    from dormant.nets.checkpoint import read_model

    files = [p for p in (tiny_run / "results").rglob("*") if p.is_file()]
    assert files and not [p for p in files if p.name.endswith(".tmp")]
    mode = 0o666 & ~current_umask()
    assert {p.stat().st_mode & 0o777 for p in files} == {mode}
    models = [p for p in files if p.name == "model.safetensors"]
    assert len(models) == 2  # backdoored and defended
    for m in models:
        _, meta, car = read_model(m)
        assert car["weights_sha256"] == file_sha256(m) and car["model"] == meta


@pytest.mark.slow
def test_sigkill_of_a_run_leaves_no_partial_artifact_and_the_rerun_ends_the_same(tiny_run, tmp_path):
    """The whole Snakemake process group is killed twice at random points; whatever is in results/ then is
    complete (every tensor file and JSON reads), and the rerun ends with the uninterrupted run's weights."""
    from dormant.io import load_tensors, read_json

    wd = _tiny_workflow(tmp_path / "wf")
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--rerun-incomplete", "--replace-workflow-config",
           TINY_TARGET, "--configfile", "t.yaml"]
    for _ in range(2):
        proc = subprocess.Popen(cmd, cwd=wd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        time.sleep(rng.uniform(2, 8))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for f in (wd / "results").rglob("*"):
            if f.name.endswith(".safetensors"):
                load_tensors(f)  # complete, or it raises: a partial artifact fails the test
            elif f.name.endswith(".json"):
                read_json(f)
        subprocess.run([sys.executable, "-m", "snakemake", "--unlock", "--configfile", "t.yaml"], cwd=wd, env=env(),
                       capture_output=True)
    snakemake(wd, "--rerun-incomplete", "--replace-workflow-config", TINY_TARGET, configfile="t.yaml", timeout=600)
    assert _weights_digests(wd) == _weights_digests(tiny_run), f"random seed {seed}"
    assert not [f for f in (wd / "results").rglob("*.tmp")]
