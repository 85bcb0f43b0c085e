"""Models trained elsewhere (dormant.importing): exact name mappings, safe loading, round trips."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from dormant.errors import CheckpointError
from dormant.importing.convert import bb_state, export_record, import_model
from dormant.importing.layouts import bb_key
from dormant.importing.safeload import load_pickle
from dormant.nets import build_model
from dormant.nets.checkpoint import load_model, save_model


class Payload:
    """A class the restricted unpickler must never instantiate."""


class RunsCode:
    def __reduce__(self):
        return (print, ("pwned",))


def _model(arch="preact_resnet_tiny", n=10, seed=0):
    torch.manual_seed(seed)
    m = build_model(arch, n)
    for mod in m.modules():  # non-trivial BN statistics, so a mix-up of BN buffers changes the logits
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.1, 0.1)
            mod.num_batches_tracked.fill_(7)
    return m.eval()


def _record(net, arch, path, **over):
    name = {"preact_resnet18": "preactresnet18"}.get(arch, arch)
    rec = {"model_name": name, "num_classes": net.linear.out_features, "model": bb_state(net, arch),
           "data_path": "./data/cifar10", "img_size": (32, 32, 3), "clean_data": "cifar10",
           # BackdoorBench keeps its poisoned sets' states as numpy arrays: these must load
           "bd_train": {"poison_indicator": np.zeros(50, dtype=np.int64), "original_index_array": np.arange(50)},
           "bd_test": {"bd_data_container": {0: (np.zeros((32, 32, 3), dtype=np.uint8), 0)}}}
    rec.update(over)
    torch.save(rec, path)
    return path


X = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_backdoorbench_names_of_preact_resnet18():
    """Hand-written check against BackdoorBench's models/preact_resnet.py names (PreActResNet18)."""
    keys = set(bb_state(build_model("preact_resnet18", 10), "preact_resnet18"))
    for k in ("conv1.weight", "layer1.0.bn1.weight", "layer1.0.bn1.running_var", "layer1.0.conv1.weight",
              "layer1.0.bn2.num_batches_tracked", "layer1.1.conv2.weight", "layer2.0.shortcut.0.weight",
              "layer3.0.shortcut.0.weight", "layer4.0.shortcut.0.weight", "layer4.1.conv2.weight",
              "linear.weight", "linear.bias"):
        assert k in keys, k
    assert not any(k.startswith(("bn.", "bn1.", "normalize", "layer1.0.shortcut")) for k in keys)
    assert not any(k.endswith("shortcut.weight") for k in keys)
    # 1 stem conv + 8 blocks x (2 BN x 5 tensors + 2 convs) + 3 shortcut convs + 2 linear
    assert len(keys) == 1 + 8 * 12 + 3 + 2
    assert bb_key("layer2.0.shortcut.weight") == "layer2.0.shortcut.0.weight"
    assert bb_key("layer2.0.conv1.weight") == "layer2.0.conv1.weight"


def test_backdoorbench_record_imports_with_same_logits(tmp_path):
    m = _model("preact_resnet18")
    imp = import_model(_record(m, "preact_resnet18", tmp_path / "attack_result.pt"), "backdoorbench")
    assert (imp.arch, imp.num_classes) == ("preact_resnet18", 10)
    assert imp.source["format"] == "backdoorbench" and len(imp.source["sha256"]) == 64
    assert imp.source["model_name"] == "preactresnet18" and imp.source["dataset"] == "cifar10"
    with torch.no_grad():
        assert torch.equal(imp.model(X), m(X))


def test_round_trip_export_import(tmp_path):
    m = _model("preact_resnet_tiny", n=4)
    ckpt = tmp_path / "model.safetensors"
    save_model(m, ckpt, arch="preact_resnet_tiny", num_classes=4, config={}, seed=0)
    for kind in ("attack", "defense"):
        out = tmp_path / f"{kind}_result.pt"
        export_record(ckpt, out, kind=kind)
        imp = import_model(out, "backdoorbench", arch="preact_resnet_tiny" if kind == "defense" else None)
        with torch.no_grad():
            assert torch.equal(imp.model(X), load_model(ckpt)(X))
    # the CLI: import writes a checkpoint whose sidecar names the source
    out = tmp_path / "attack_result.pt"
    new = tmp_path / "imported.safetensors"
    r = subprocess.run([sys.executable, "-m", "dormant.cli", "import", str(out), "--format", "backdoorbench",
                        "--model", str(new)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import json
    car = json.loads(new.with_suffix(".json").read_text())
    assert car["imported"]["format"] == "backdoorbench" and car["imported"]["architecture"] == "preact_resnet_tiny"
    with torch.no_grad():
        assert torch.equal(load_model(new)(X), m(X))


@pytest.mark.parametrize("names", ["dormant", "backdoorbench"])
def test_plain_state_dict(tmp_path, names):
    m = _model("preact_resnet_tiny")
    sd = m.state_dict() if names == "dormant" else bb_state(m, "preact_resnet_tiny")
    torch.save({k: v.double() if v.is_floating_point() else v for k, v in sd.items()}, tmp_path / "sd.pt")
    imp = import_model(tmp_path / "sd.pt", "state_dict", arch="preact_resnet_tiny", num_classes=10)
    assert imp.source["layout"] == names
    with torch.no_grad():
        torch.testing.assert_close(imp.model(X), m(X))  # float64 -> float32: equal to rounding
    with pytest.raises(CheckpointError, match="a model of 10 classes, the dataset has 4"):
        import_model(tmp_path / "sd.pt", "state_dict", arch="preact_resnet_tiny", num_classes=4)


def test_state_dict_of_other_architecture(tmp_path):
    m = _model("cnn_tiny")
    torch.save(m.state_dict(), tmp_path / "sd.pt")
    imp = import_model(tmp_path / "sd.pt", "state_dict", arch="cnn_tiny")
    with torch.no_grad():
        assert torch.equal(imp.model(X), m(X))
    with pytest.raises(CheckpointError, match="does not fit preact_resnet_tiny"):
        import_model(tmp_path / "sd.pt", "state_dict", arch="preact_resnet_tiny")


@pytest.mark.parametrize("payload", [Payload(), RunsCode()], ids=["custom-class", "reduce"])
def test_code_carrying_pickle_refused(tmp_path, payload, capfd):
    m = _model()
    path = _record(m, "preact_resnet_tiny", tmp_path / "attack_result.pt", extra=payload)
    with pytest.raises(CheckpointError, match=r"attack_result\.pt: refused, a code-carrying pickle") as e:
        import_model(path, "backdoorbench")
    assert ("Payload" in str(e.value)) or ("print" in str(e.value))
    assert "pwned" not in capfd.readouterr().out
    torch.save({"w": torch.zeros(1), "x": payload}, tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="code-carrying pickle"):
        load_pickle(tmp_path / "sd.pt")


def test_key_errors_name_the_key(tmp_path):
    m = _model()
    sd = bb_state(m, "preact_resnet_tiny")
    cases = {
        "missing": ({k: v for k, v in sd.items() if k != "layer2.0.shortcut.0.weight"},
                    r"missing key\(s\) 'layer2.0.shortcut.0.weight'; unused key\(s\) -"),
        "extra": ({**sd, "bn.weight": torch.ones(32)}, r"unused key\(s\) 'bn.weight'"),
        "renamed": ({("layer2.0.shortcut.weight" if k == "layer2.0.shortcut.0.weight" else k): v
                     for k, v in sd.items()}, r"unused key\(s\) 'layer2.0.shortcut.weight'"),
        "shape": ({**sd, "layer1.0.conv2.weight": torch.zeros(8, 8, 1, 1)},
                  r"key 'layer1.0.conv2.weight' has shape \(8, 8, 1, 1\).*needs \(8, 8, 3, 3\)"),
        "nan": ({**sd, "linear.bias": torch.full((10,), float("nan"))}, "'linear.bias' holds NaN"),
        "dtype": ({**sd, "layer1.0.bn1.num_batches_tracked": torch.tensor(1.5)},
                  "'layer1.0.bn1.num_batches_tracked' is torch.float32"),
    }
    for name, (state, msg) in cases.items():
        path = _record(m, "preact_resnet_tiny", tmp_path / f"{name}.pt", model=state)
        with pytest.raises(CheckpointError, match=msg):
            import_model(path, "backdoorbench")


def test_refused_architectures_and_records(tmp_path):
    m = _model()
    for name, msg in [("vgg19_bn", "three linear layers"), ("resnet18", "7x7 stride-2 stem"),
                      ("densenet161", "no architecture of this project has its layout")]:
        path = _record(m, "preact_resnet_tiny", tmp_path / f"{name}.pt", model_name=name)
        with pytest.raises(CheckpointError, match=f"model_name '{name}' cannot be imported: .*{msg}"):
            import_model(path, "backdoorbench")
    path = _record(m, "preact_resnet_tiny", tmp_path / "gtsrb.pt", data_path="../data/gtsrb")
    with pytest.raises(CheckpointError, match="BackdoorBench normalises gtsrb"):
        import_model(path, "backdoorbench")
    path = _record(m, "preact_resnet_tiny", tmp_path / "n.pt", num_classes=43)
    with pytest.raises(CheckpointError, match="'num_classes' = 43, the classifier 'linear.weight' has 10"):
        import_model(path, "backdoorbench")
    path = _record(m, "preact_resnet_tiny", tmp_path / "arch.pt")
    with pytest.raises(CheckpointError, match="the config's architecture is preact_resnet18"):
        import_model(path, "backdoorbench", arch="preact_resnet18")
    torch.save({"model": bb_state(m, "preact_resnet_tiny")}, tmp_path / "defense_result.pt")
    with pytest.raises(CheckpointError, match="names no model_name"):
        import_model(tmp_path / "defense_result.pt", "backdoorbench")
    with pytest.raises(CheckpointError, match="wrn28_2 has no BackdoorBench layout"):
        import_model(tmp_path / "defense_result.pt", "backdoorbench", arch="wrn28_2")
    ckpt = tmp_path / "vgg.safetensors"
    save_model(build_model("cnn_tiny", 10), ckpt, arch="cnn_tiny", num_classes=10, config={}, seed=0)
    with pytest.raises(CheckpointError, match="cnn_tiny has no BackdoorBench layout"):
        export_record(ckpt, tmp_path / "x.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable torch.save file"):
        import_model(tmp_path / "junk.pt", "backdoorbench")
    with pytest.raises(CheckpointError, match="missing BackdoorBench record"):
        import_model(tmp_path / "absent.pt", "backdoorbench")
