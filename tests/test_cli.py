import json

from dormant.cli import STAGES, build_parser, main
from dormant.data import load_dataset


def test_every_stage_has_a_command_with_its_path_arguments():
    p = build_parser()
    args = p.parse_args(["bec", "--params", "{}", "--dataset", "d", "--trigger", "t", "--model", "m",
                         "--backdoored", "b", "--clean", "c", "--bec", "o"])
    assert (args.stage, args.clean, args.bec) == ("bec", "c", "o")
    assert set(STAGES) == {"prepare-data", "clean-subset", "attack-resource", "trigger", "train", "defend", "metrics",
                           "bec", "reactivate", "observe", "report", "query", "transfer-optimise", "transfer-evaluate",
                           "evidence", "report-blackbox", "report-defenses"}


def test_every_command_the_rules_call_exists():
    import re
    from pathlib import Path

    rules = Path(__file__).resolve().parents[1] / "workflow" / "rules"
    called = set()
    for f in rules.glob("*.smk"):
        called |= set(re.findall(r'"dormant (?:--threads \{threads\} )?([a-z-]+) ', f.read_text()))
    assert called == set(STAGES)


def test_prepare_data_runs_and_bad_input_exits_2_naming_the_file(tmp_path, capsys):
    params = {"data": {"source": "synthetic", "train_per_class": 4, "test_per_class": 2,
                       "synthetic": {"num_classes": 3, "image_size": 8, "seed": 0}}, "seed": 0}
    out = tmp_path / "d.safetensors"
    assert main(["prepare-data", "--params", json.dumps(params), "--dataset", str(out)]) == 0
    assert len(load_dataset(out)["train"]) == 12 and (tmp_path / "d.json").is_file()
    bad = {"data": {"source": "path", "path": str(tmp_path / "missing.tar.gz")}, "seed": 0}
    assert main(["prepare-data", "--params", json.dumps(bad), "--dataset", str(tmp_path / "x.safetensors")]) == 2
    assert "missing.tar.gz" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
