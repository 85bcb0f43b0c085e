import json
import re
from pathlib import Path

import pytest
import yaml
from dormant.cli import STAGES, build_parser, main
from dormant.data.imageset import load_dataset
from dormant.stages import load_all

RULES = Path(__file__).resolve().parents[1] / "workflow" / "rules"
load_all()  # every stage registered, whatever the test order


def _rule_names() -> set[str]:
    return {m for f in RULES.glob("*.smk") for m in re.findall(r"^rule (\w+):", f.read_text(), re.M)} - {"all"}


def test_every_stage_has_a_command_with_its_path_arguments():
    p = build_parser()
    args = p.parse_args(["bec", "--params", "{}", "--dataset", "d", "--trigger", "t", "--model", "m",
                         "--backdoored", "b", "--clean", "c", "--bec", "o"])
    assert (args.stage, args.clean, args.bec) == ("bec", "c", "o")
    assert set(STAGES) == {"prepare_data", "clean_subset", "attack_resource", "trigger", "train_clean",
                           "train_backdoor", "defend", "metrics", "bec", "reactivate", "observe", "report", "query",
                           "attacker_subset", "train_surrogate", "defend_surrogate", "transfer_optimise",
                           "transfer_evaluate", "evidence", "report_blackbox", "report_defenses", "report_seeds",
                           "budget", "report_budget", "leaderboard",
                           "import_clean", "import_backdoor", "import_defense"}
    assert set(STAGES) == _rule_names()  # one stage per rule, named like it


def test_every_command_the_rules_call_exists():
    import re
    from pathlib import Path

    rules = Path(__file__).resolve().parents[1] / "workflow" / "rules"
    called = set()
    for f in rules.glob("*.smk"):
        for rule, body in re.findall(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", f.read_text(), re.M):
            if rule == "all":
                continue
            commands = re.findall(r'"dormant ([a-z-]+) ', body)
            assert commands == [rule.replace("_", "-")], (rule, commands)  # each rule calls its own stage
            assert f'code=code("{rule}")' in body, rule  # and its code inputs are derived for that stage
            called |= set(commands)
    assert called == {s.command for s in STAGES.values()}


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


def test_help_lists_every_stage_with_its_summary(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for st in STAGES.values():
        assert st.command in out
    assert "Measures C-ACC, ASR and RA" in out


def test_stage_help_documents_arguments_and_sections(capsys):
    with pytest.raises(SystemExit):
        main(["bec", "--help"])
    out = capsys.readouterr().out
    assert "params sections: bec, seed" in out
    assert "--clean PATH" in out and "[input] clean model" in out and "[output] BEC" in out
    assert "--device" in out


def _synthetic_params():
    return {"data": {"source": "synthetic", "train_per_class": 4, "test_per_class": 2,
                     "synthetic": {"num_classes": 3, "image_size": 8, "seed": 0}}, "seed": 0}


def test_params_from_a_yaml_or_json_file_and_rule_names_accepted(tmp_path):
    params_file = tmp_path / "p.yaml"
    params_file.write_text(yaml.safe_dump({**_synthetic_params(), "unused_section": {"x": 1}}))
    out = tmp_path / "d.safetensors"
    assert main(["prepare_data", "--params", str(params_file), "--dataset", str(out), "--device", "cpu"]) == 0
    assert len(load_dataset(out)["train"]) == 12
    json_file = tmp_path / "p.json"
    json_file.write_text(json.dumps(_synthetic_params()))
    assert main(["prepare-data", "--params", str(json_file), "--dataset", str(tmp_path / "e.safetensors")]) == 0


@pytest.mark.parametrize("argv_params, message", [
    ('{"data": ', "not valid JSON"),
    ('{"seed": 0}', "needs the params section(s) data"),
    ("missing-file.yaml", "neither a JSON object nor an existing file"),
    ("[1, 2]", "neither a JSON object nor an existing file"),
])
def test_bad_params_exit_2_with_one_line(tmp_path, capsys, argv_params, message):
    out = tmp_path / "d.safetensors"
    assert main(["prepare-data", "--params", argv_params, "--dataset", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_bad_yaml_file_and_bad_device_exit_2(tmp_path, capsys):
    bad = tmp_path / "p.yaml"
    bad.write_text("data: [unclosed\n")
    assert main(["prepare-data", "--params", str(bad), "--dataset", str(tmp_path / "d.safetensors")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    good = tmp_path / "g.json"
    good.write_text(json.dumps(_synthetic_params()))
    assert main(["prepare-data", "--params", str(good), "--dataset", str(tmp_path / "d.safetensors"),
                 "--device", "tpu:7"]) == 2
    assert "device 'tpu:7'" in capsys.readouterr().err
