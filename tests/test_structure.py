"""The shape of the code: imports run downhill, rules and stages match one to one, code inputs are derived,
and each method's defaults live in one place that the schema and the shipped configs agree with."""

import ast
import re
from pathlib import Path

import pytest
import yaml
from dormant import codedeps
from dormant.attacks import ATTACKS
from dormant.defenses import DEFENSES
from dormant.stages import MODULES, STAGES, load_all

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "workflow" / "rules"
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "params.schema.yaml").read_text())


def _modules() -> list[str]:
    out = []
    for f in sorted(codedeps.PKG_DIR.rglob("*.py")):
        parts = ["dormant", *f.relative_to(codedeps.PKG_DIR).with_suffix("").parts]
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def _import_graph() -> dict[str, set[str]]:
    """Every import (lazy ones included) between modules of the package."""
    return {m: {dep for node in ast.walk(codedeps._tree(m)) for dep, _ in codedeps._imported(node, m) if dep != m}
            for m in _modules()}


def _find_cycle(graph):
    state, stack = {}, []

    def visit(u):
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if not state.get(v) and (c := visit(v)):
                return c
        stack.pop()
        state[u] = 2
        return None

    for m in sorted(graph):
        if not state.get(m) and (c := visit(m)):
            return c
    return None


def test_no_import_cycle():
    graph = _import_graph()
    assert len(graph) > 50
    assert _find_cycle(graph) is None


def test_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_science_module_imports_a_stage():
    allowed = {"dormant.cli", "dormant.codedeps"}
    for m, deps in _import_graph().items():
        if m.startswith("dormant.stages") or m in allowed:
            continue
        assert not {d for d in deps if d.startswith("dormant.stages")}, m


def _rules_by_file() -> dict[str, list[str]]:
    return {f.stem: [r for r in re.findall(r"^rule (\w+):", f.read_text(), re.M) if r != "all"]
            for f in sorted(RULES.glob("*.smk"))}


def test_rule_files_and_stage_modules_one_to_one():
    load_all()
    rules = _rules_by_file()
    assert set(rules) - {"common", "pipeline"} == set(MODULES)
    assert not rules["common"] and not rules["pipeline"]
    for stem, names in rules.items():
        for rule in names:
            assert rule in STAGES, f"rule {rule} ({stem}.smk) has no stage function"
            assert STAGES[rule].module == f"dormant.stages.{stem}", rule
    assert sorted(STAGES) == sorted(r for names in rules.values() for r in names)


def test_no_rule_lists_library_code_by_hand():
    for f in RULES.glob("*.smk"):
        text = "\n".join(line.split("#")[0] for line in f.read_text().splitlines())  # code, not comments
        assert "workflow/lib" not in text and "lib(" not in text, f.name
        assert not re.search(r'"[\w/]+\.py"', text), f.name


def test_every_stage_imports_its_science_inside_its_body():
    """Stage modules import only artifact I/O at their top, so that one stage's code inputs are not another's."""
    for m in MODULES:
        mod = f"dormant.stages.{m}"
        top = {dep for node in codedeps._tree(mod).body for dep, _ in codedeps._imported(node, mod)}
        assert top <= {"dormant.io", "dormant.stages"}, (mod, top)


def test_code_inputs_follow_the_imports():
    files = set(codedeps.code_files("bec", attacks=["badnets"]))
    lib = "workflow/lib/dormant/"
    assert {lib + "analysis/bec.py", lib + "analysis/cka.py", lib + "nets/probe.py", lib + "attacks/badnets.py",
            lib + "stages/analysis.py", lib + "stages/__init__.py", lib + "__init__.py"} <= files
    assert lib + "attacks/blended.py" not in files  # only the attack the job runs
    assert lib + "reactivation/whitebox.py" not in files  # another stage of the same module
    assert lib + "stages/report.py" not in files and lib + "cli.py" not in files
    ft = set(codedeps.code_files("defend", attacks=["blended"], defenses=["ft"]))
    assert lib + "defenses/ft.py" in ft and lib + "training/loop.py" in ft and lib + "defenses/nc.py" not in ft
    pbe = set(codedeps.code_files("defend", attacks=["blended"], defenses=["pbe"]))
    assert {lib + "defenses/pbe.py", lib + "defenses/aft.py", lib + "analysis/adversarial.py"} <= pbe
    # a stage that calls another stage module's helper depends on that helper's imports only
    sub = set(codedeps.code_files("attacker_subset"))
    assert lib + "data/subsets.py" in sub and lib + "stages/data.py" in sub
    assert lib + "training/loop.py" not in sub and lib + "data/sources.py" not in sub


def test_codedeps_resolves_relative_and_absolute_imports(tmp_path):
    tree = ast.parse("from . import bec\nfrom ..data.augment import to_float\nimport dormant.io\nimport torch\n")
    found = {d for node in tree.body for d, _ in codedeps._imported(node, "dormant.analysis.metrics")}
    assert found == {"dormant.analysis.bec", "dormant.data.augment", "dormant.io"}


def test_plugin_modules_are_named_like_what_they_register():
    assert ATTACKS.names() == ["badnets", "blended", "input_aware", "lf", "sig", "ssba", "trojannn", "wanet"]
    assert DEFENSES.names() == ["aft", "anp", "cleanclip", "clp", "fp", "fst", "ft", "ftsam", "ibau", "imported",
                                "nad", "nc", "pbe", "sau"]
    for name, cls in {**ATTACKS.load_all(), **DEFENSES.load_all()}.items():
        assert cls.__module__.rsplit(".", 1)[1] == name


# ---- defaults: declared once (the method's class), allowed by the schema, used by the shipped configs ----

def _schema_keys(item) -> set[str]:
    keys = set()

    def walk(x):
        if isinstance(x, dict):
            if x.get("additionalProperties") is False and "properties" in x:
                keys.update(x["properties"])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(item["then"])
    return keys - {"type"}


def test_schema_allows_exactly_each_defense_s_declared_keys():
    branches = SCHEMA["properties"]["defenses"]["additionalProperties"]["allOf"]
    by_type = {b["if"]["properties"]["type"]["const"]: _schema_keys(b) for b in branches}
    assert set(by_type) == set(DEFENSES.names())
    assert set(SCHEMA["properties"]["defenses"]["additionalProperties"]["properties"]["type"]["enum"]) == set(by_type)
    for name, cls in DEFENSES.load_all().items():
        assert by_type[name] == set(cls.defaults), name


def _shipped_configs():
    return [REPO / "params.yaml", REPO / "tests" / "tiny.yaml", *sorted((REPO / "config").glob("*.yaml"))]


@pytest.mark.parametrize("path", _shipped_configs(), ids=lambda p: p.name)
def test_shipped_configs_use_only_declared_keys_and_build(path):
    cfg = yaml.safe_load(path.read_text())
    sections = [cfg.get("defenses") or {}, (cfg.get("transfer") or {}).get("defenses") or {}]
    for section in sections:
        for name, entry in section.items():
            cls = DEFENSES.get(entry["type"])
            assert set(entry) - {"type"} <= set(cls.defaults), (path.name, name)
            d = cls(entry)
            assert d.cfg == {**cls.defaults, **{k: v for k, v in entry.items() if k != "type"}}


def test_a_defense_rejects_an_unknown_key():
    from dormant.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown key.*lr_typo"):
        DEFENSES.get("ft")({"type": "ft", "lr_typo": 0.1})


def test_schema_allows_exactly_each_attack_s_declared_keys():
    branches = SCHEMA["properties"]["attacks"]["additionalProperties"]["allOf"]
    common = {"type", "ratio", "target", "import"}
    by_type = {b["if"]["properties"]["type"]["const"]: set(b["then"]["properties"]) - common for b in branches}
    assert set(by_type) == set(ATTACKS.names())
    for name, cls in ATTACKS.load_all().items():
        assert by_type[name] == set(cls.defaults), name


@pytest.mark.parametrize("path", _shipped_configs(), ids=lambda p: p.name)
def test_shipped_attack_entries_use_only_declared_keys(path):
    cfg = yaml.safe_load(path.read_text())
    for name, entry in (cfg.get("attacks") or {}).items():
        cls = ATTACKS.get(entry["type"])
        assert set(entry) - {"type", "ratio", "target"} <= set(cls.defaults), (path.name, name)
        atk = cls(entry, (3, 32, 32), max(10, entry["target"] + 1))
        assert atk.params == {**cls.defaults, **{k: v for k, v in entry.items() if k not in cls.common_keys}}


def test_an_attack_rejects_an_unknown_key():
    from dormant.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown key.*patchsize"):
        ATTACKS.get("badnets")({"type": "badnets", "ratio": 0.1, "target": 0, "patchsize": 3}, (3, 32, 32), 10)
