import copy

import pytest
import yaml
from dormant import config
from dormant.attacks import ATTACKS
from dormant.defenses import DEFENSES
from dormant.errors import ConfigError
from dormant.nets.cifar import MODELS


def _deep_merge(base: dict, over: dict) -> dict:
    """An overlay over params.yaml as Snakemake's --configfile merges it: mapping by mapping, key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def test_shipped_configs_are_valid(repo, params, tiny_params, tmp_path):
    import zipfile

    config.validate(params)
    config.validate(tiny_params)
    config.load(repo / "config" / "paper.yaml")
    tiny_zip = tmp_path / "tiny-imagenet-200.zip"
    zipfile.ZipFile(tiny_zip, "w").close()
    for overlay in ("attacks", "gtsrb", "tiny-imagenet", "grid"):
        merged = _deep_merge(params, yaml.safe_load((repo / "config" / f"{overlay}.yaml").read_text()))
        if merged["data"]["source"] == "path":  # the file is the user's; validation checks its kind and layout
            merged["data"]["path"] = str(tiny_zip if merged["data"]["dataset"] == "tiny_imagenet"
                                         else repo / "data" / "cifar10-demo.tar.gz")
        config.validate(merged)


def test_paper_preset(repo):
    p = config.load(repo / "config" / "paper.yaml")
    assert p["model"]["arch"] == "preact_resnet18" and p["train"]["epochs"] == 100
    assert p["data"]["dataset"] == "cifar10" and p["data"]["train_per_class"] is None
    assert p["defense_data"]["clean_ratio"] == 0.05
    assert all(a["ratio"] == 0.1 and a["target"] == 0 for a in p["attacks"].values())
    assert sorted(a["type"] for a in p["attacks"].values()) == ATTACKS.names()  # all eight attacks
    assert p["reactivation"]["eps"] == 0.05 and p["reactivation"]["n_images"] == 1000


def test_schema_enums_match_registries():
    s = config.load_schema()
    assert sorted(s["definitions"]["arch"]["enum"]) == MODELS.names()
    assert sorted(s["properties"]["attacks"]["additionalProperties"]["properties"]["type"]["enum"]) == ATTACKS.names()
    assert sorted(s["properties"]["defenses"]["additionalProperties"]["properties"]["type"]["enum"]) == DEFENSES.names()


def _bad(params, mutate):
    p = copy.deepcopy(params)
    mutate(p)
    with pytest.raises(ConfigError) as e:
        config.validate(p)
    return str(e.value)


def test_unknown_attack_names_the_key(params):
    msg = _bad(params, lambda p: p["attacks"]["badnets"].update(type="badnetz"))
    assert "attacks.badnets.type" in msg and "badnetz" in msg


def test_ratio_outside_unit_interval(params):
    assert "attacks.blended.ratio" in _bad(params, lambda p: p["attacks"]["blended"].update(ratio=1.5))
    assert "attacks.badnets.ratio" in _bad(params, lambda p: p["attacks"]["badnets"].update(ratio=-0.1))


def test_wrong_type(params):
    msg = _bad(params, lambda p: p["train"].update(epochs="ten"))
    assert "train.epochs" in msg and "'ten'" in msg


def test_missing_key(params):
    msg = _bad(params, lambda p: p["reactivation"].pop("eps"))
    assert "reactivation.eps: missing required key" in msg
    assert "bec: missing required key" in _bad(params, lambda p: p.pop("bec"))


def test_unknown_key_and_attack_specific_keys(params):
    assert "alpha" in _bad(params, lambda p: p["attacks"]["badnets"].update(alpha=0.2))
    assert "defenses.ft" in _bad(params, lambda p: p["defenses"]["ft"].update(epochz=3))


def test_reserved_defense_names_and_semantic_checks(params):
    assert "backdoor" in _bad(params, lambda p: p["defenses"].update(backdoor={"type": "ft", "epochs": 1, "lr": 0.1}))
    assert "bec.headline_fraction" in _bad(params, lambda p: p["bec"].update(headline_fraction=0.3))
    assert "data.path" in _bad(params, lambda p: p["data"].update(source="path", path=None))
    # the main table's transfer variant must be one that is optimised
    assert "report.transfer_variant" in _bad(params, lambda p: p["transfer"].update(variants=["plain", "momentum"]))
    assert "bec.channel_rounding" in _bad(params, lambda p: p["bec"].update(channel_rounding="ceil"))
    assert "adversarial_schedule" in _bad(params, lambda p: p["defenses"]["pbe"].update(adversarial_schedule="x"))


def test_load_reports_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.yaml")
    f = tmp_path / "bad.yaml"
    f.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        config.load(f)
    f.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="mapping"):
        config.load(f)
