"""End-to-end: models trained elsewhere (a fabricated BackdoorBench record, a defense_result.pt and a plain
state dict) imported through the config, then BEC, the re-activation attacks and the report run on them."""

import json

import pandas as pd
import pytest
import torch
import yaml
from dormant.importing.convert import bb_state
from dormant.nets import build_model
from dormant.nets.checkpoint import load_model

from .test_workflow import _trace_stages
from .workflow_helpers import REPO, copy_workflow, job_counts, snakemake, write_config

pytestmark = pytest.mark.slow
ARCH = "preact_resnet_tiny"


def _net(seed):
    torch.manual_seed(seed)
    return build_model(ARCH, 4).eval()


def _config(wd):
    cfg = yaml.safe_load((REPO / "tests" / "tiny.yaml").read_text())
    cfg["name"] = "imported"
    cfg["model"] = {"arch": ARCH, "import": {"path": "elsewhere/clean.pt", "format": "state_dict"}}
    cfg["attacks"] = {"badnets": {**cfg["attacks"]["badnets"],
                                  "import": {"path": "elsewhere/attack_result.pt", "format": "backdoorbench"}}}
    cfg["defenses"] = {"ft": cfg["defenses"]["ft"],
                       "bb_ft": {"type": "imported", "format": "backdoorbench",
                                 "models": {"badnets": "elsewhere/defense/ft/defense_result.pt"}}}
    cfg["transfer"]["surrogates"] = {"same_arch": {"arch": ARCH, "defenses": ["ft"]}}
    cfg["transfer"]["defenses"] = {"ft": cfg["transfer"]["defenses"]["ft"]}
    ext = wd / "elsewhere"
    (ext / "defense" / "ft").mkdir(parents=True)
    torch.save(_net(1).state_dict(), ext / "clean.pt")
    torch.save({"model_name": ARCH, "num_classes": 4, "model": bb_state(_net(2), ARCH), "img_size": [16, 16, 3],
                "data_path": "./data/cifar10", "clean_data": "cifar10", "bd_train": None, "bd_test": None},
               ext / "attack_result.pt")
    torch.save({"model": bb_state(_net(3), ARCH)}, ext / "defense" / "ft" / "defense_result.pt")
    return write_config(wd / "imported.yaml", cfg)


def test_imported_models_run_through_bec_reactivation_and_report(tmp_path):
    wd = copy_workflow(tmp_path / "wf")
    _config(wd)
    dry = job_counts(snakemake(wd, "-n", "--quiet", "rules", configfile="imported.yaml").stdout)
    assert dry["import_clean"] == 1 and dry["import_backdoor"] == 1 and dry["import_defense"] == 1
    assert "train_clean" not in dry and "train_backdoor" not in dry and dry["defend"] == 1  # ft on the import
    snakemake(wd, configfile="imported.yaml", timeout=600)

    r = wd / "results" / "imported"
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for rel, seed, fmt in [("clean", 1, "state_dict"), ("badnets/backdoor", 2, "backdoorbench"),
                           ("badnets/bb_ft", 3, "backdoorbench")]:
        with torch.no_grad():
            assert torch.equal(load_model(r / f"models/{rel}/model.safetensors")(x), _net(seed)(x)), rel
        side = json.loads((r / f"models/{rel}/model.json").read_text())
        assert side["imported"]["format"] == fmt and side["imported"]["architecture"] == ARCH
        assert len(side["imported"]["sha256"]) == 64
    df = pd.read_csv(r / "report" / "table.csv")
    assert set(df["model"]) == {"clean", "backdoor", "ft", "bb_ft"}
    assert df[["bec", "asr_reactivated", "asr_guaa"]].notna().all().all()
    assert (r / "report" / "blackbox.csv").is_file()
    grid = pd.read_csv(r / "report" / "defense_grid.csv")
    assert grid.set_index("defense").loc["bb_ft", "type"] == "imported"
    assert "Nothing to be done" in (lambda p: p.stdout + p.stderr)(snakemake(wd, "-n", configfile="imported.yaml"))

    # the import stages' code inputs are complete (test_workflow traces the stages of the tiny config)
    targets = [r / "models/clean/model.safetensors", r / "models/badnets/backdoor/model.safetensors",
               r / "models/badnets/bb_ft/model.safetensors"]
    chosen, missing = _trace_stages(wd, tmp_path, *[t.relative_to(wd) for t in targets], configfile="imported.yaml")
    assert {"import_clean", "import_backdoor", "import_defense"} <= {rule for rule, _ in chosen}
    assert not missing


def test_config_errors_name_the_key(tmp_path):
    from dormant.config import validate
    from dormant.errors import ConfigError

    base = yaml.safe_load((REPO / "tests" / "tiny.yaml").read_text())
    base["model"]["arch"] = ARCH
    base["defenses"] = {"bb": {"type": "imported", "models": {"badnets": "a.pt", "blended": "b.pt"}}}
    validate(base)
    cases = [
        (lambda c: c["defenses"]["bb"]["models"].pop("blended"), "defenses.bb.models: no file for attack(s) blended"),
        (lambda c: c["defenses"]["bb"]["models"].update(sig="c.pt"), "defenses.bb.models.sig: not an attack"),
        (lambda c: c["attacks"]["badnets"].update({"import": {"path": "x.pt"}}),
         "attacks.badnets.import.format: missing required key"),
        (lambda c: c["attacks"]["badnets"].update({"import": {"path": "x.pt", "format": "onnx"}}),
         "attacks.badnets.import.format: 'onnx' is not one of"),
        (lambda c: c["model"].update({"import": {"path": "x.pt", "format": "state_dict", "typo": 1}}),
         "model.import: Additional properties"),
        (lambda c: c["model"].update(arch="cnn_tiny"), "defenses.bb.format: a BackdoorBench file cannot hold "
                                                        "model.arch 'cnn_tiny'"),
        (lambda c: c["transfer"]["defenses"].update(bb={"type": "imported", "models": {"badnets": "a.pt"}}),
         "transfer.defenses.bb: type 'imported' is the victim's side only"),
    ]
    for mutate, msg in cases:
        cfg = json.loads(json.dumps(base))
        mutate(cfg)
        with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            validate(cfg)


def test_missing_import_files_are_named_before_any_job(tmp_path):
    from dormant.userpaths import check_user_paths

    cfg = {"model": {"arch": ARCH, "import": {"path": str(tmp_path / "c.pt"), "format": "state_dict"}},
           "attacks": {"badnets": {"type": "badnets", "import": {"path": str(tmp_path / "a.pt"),
                                                                 "format": "backdoorbench"}}},
           "defenses": {"bb": {"type": "imported", "models": {"badnets": str(tmp_path / "d.pt")}}}}
    (tmp_path / "a.pt").write_bytes(b"")
    assert check_user_paths(cfg) == [f"model.import.path: {tmp_path / 'c.pt'} (not found)",
                                     f"defenses.bb.models.badnets: {tmp_path / 'd.pt'} (not found)"]
