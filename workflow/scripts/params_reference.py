"""Writes docs/parameters.md, the reference of every params.yaml key, from the JSON schema and the code.

Type and meaning come from workflow/schemas/params.schema.yaml; the default is the value in the shipped
params.yaml, and for an attack's or a defense's own keys the default its class declares (``defaults``).

    python workflow/scripts/params_reference.py            # write docs/parameters.md
    python workflow/scripts/params_reference.py --check    # exit 1 if docs/parameters.md is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "workflow" / "lib"))

from dormant.attacks import ATTACKS  # noqa: E402
from dormant.defenses import DEFENSES  # noqa: E402

SCHEMA_PATH = ROOT / "workflow" / "schemas" / "params.schema.yaml"
OUT = ROOT / "docs" / "parameters.md"


def _deref(node: dict, schema: dict) -> dict:
    """The node with ``$ref`` and ``allOf`` branches merged (properties, descriptions, types)."""
    if not isinstance(node, dict):
        return {}
    out = dict(node)
    if "$ref" in node:
        target = schema
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        out = {**_deref(target, schema), **{k: v for k, v in node.items() if k != "$ref"}}
    for branch in node.get("allOf", []):
        sub = _deref(branch, schema)
        props = {**sub.get("properties", {})}
        for k, v in out.get("properties", {}).items():
            props[k] = {**props.get(k, {}), **v} if isinstance(v, dict) else v
        out = {**sub, **{k: v for k, v in out.items() if k != "properties"}, "properties": props}
    return out


def _type(node: dict, schema: dict) -> str:
    node = _deref(node, schema)
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    if "oneOf" in node:
        return " or ".join(_type(n, schema) for n in node["oneOf"])
    t = node.get("type", "any")
    t = " or ".join(t) if isinstance(t, list) else t
    if t == "array" and "items" in node:
        t = f"list of {_type(node['items'], schema)}"
    bounds = [f"{sym} {node[k]}" for k, sym in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                                                 ("exclusiveMaximum", "<")) if k in node]
    return t + (f" ({', '.join(bounds)})" if bounds else "")


def _meaning(key: str, node: dict, schema: dict, fallback: dict) -> str:
    node = _deref(node, schema)
    return (node.get("description") or fallback.get(key, {}).get("description") or "").replace("\n", " ").strip()


def _fmt(value) -> str:
    return "(required)" if value is _REQUIRED else f"`{json.dumps(value)}`"


_REQUIRED = object()


def _table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{k}` | {t} | {d} | {m} |" for k, t, d, m in rows]
    return lines + [""]


def _glossary(schema: dict) -> dict:
    """Descriptions of the shared training and PGD keys, used where a method's own key has none."""
    out = {}
    for name in ("training", "pgd"):
        out.update(schema["definitions"][name]["properties"])
    return out


def _section(name: str, node: dict, values, schema: dict, glossary: dict, prefix: str = "") -> list[str]:
    node = _deref(node, schema)
    rows, nested = [], []
    for key, sub in node.get("properties", {}).items():
        sub_d = _deref(sub, schema)
        value = values.get(key, _REQUIRED) if isinstance(values, dict) else _REQUIRED
        if sub_d.get("type") == "object" and "properties" in sub_d:
            nested.append((key, sub, value if isinstance(value, dict) else {}))
            continue
        rows.append((key, _type(sub, schema), _fmt(value) if value is not _REQUIRED else "not set", _meaning(
            key, sub, schema, glossary)))
    out = _table(rows) if rows else []
    for key, sub, val in nested:
        out += [f"`{prefix}{name}.{key}`: {_meaning(key, sub, schema, glossary)}", ""]
        out += _section(key, sub, val, schema, glossary, prefix=f"{prefix}{name}.")
    return out


def _methods(kind: str, registry, branches: list, common: list[str], schema: dict, glossary: dict) -> list[str]:
    by_type = {b["if"]["properties"]["type"]["const"]: _deref(b["then"], schema) for b in branches}
    out = []
    for name in registry.names():
        cls = registry.get(name)
        props = by_type[name].get("properties", {})
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        module = cls.__module__.replace("dormant.", "").replace(".", "/") + ".py"
        out += [f"### `{kind}`: `type: {name}` (`{module}`)", ""] + ([doc, ""] if doc else [])
        rows = [(k, _type(props.get(k, {}), schema), "(required)", _meaning(k, props.get(k, {}), schema, glossary))
                for k in common]
        rows += [(k, _type(props.get(k, {}), schema), _fmt(v), _meaning(k, props.get(k, {}), schema, glossary))
                 for k, v in cls.defaults.items()]
        out += _table(rows)
    return out


def render() -> str:
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    glossary = _glossary(schema)
    lines = ["# Parameters", "",
             "Every key of `params.yaml`, generated from `workflow/schemas/params.schema.yaml` and the code by",
             "`python workflow/scripts/params_reference.py` (a test keeps this page in sync). Defaults of the",
             "top-level sections are the values of the shipped `params.yaml` (the CPU default run; the paper's",
             "values are in `config/paper.yaml`); defaults of an attack's or a defense's own keys are the ones its",
             "class declares, taken when the key is left out. Formulas and paper settings:",
             "[docs/methods.md](./methods.md).",
             ""]
    for name, node in schema["properties"].items():
        if name in ("attacks", "defenses"):
            continue
        lines += [f"## `{name}`", ""]
        desc = _meaning(name, node, schema, {})
        if desc:
            lines += [desc, ""]
        if name in params and not isinstance(params[name], dict):
            lines += _table([(name, _type(node, schema), _fmt(params[name]), desc)])
        elif name == "transfer":
            lines += _section(name, {k: v for k, v in _deref(node, schema).items()}, params[name], schema, glossary)
            lines += ["`transfer.defenses`: the attacker's own defenses, entries of the same form as `defenses` "
                      "below.", "", "`transfer.surrogates`: named sets `{arch, defenses}`: the attacker's "
                      "backdoored model of `arch` defended by the named entries of `transfer.defenses`.", ""]
        else:
            lines += _section(name, node, params.get(name, {}), schema, glossary)
    attacks = schema["properties"]["attacks"]
    lines += ["## `attacks`", "", _meaning("attacks", attacks, schema, {}) + ": `<name>: {type: ..., ...}`.", ""]
    lines += _methods("attacks.<name>", ATTACKS, attacks["additionalProperties"]["allOf"], ["ratio", "target"],
                      schema, {**glossary, **attacks["additionalProperties"]["properties"]})
    defenses = schema["properties"]["defenses"]
    lines += ["## `defenses`", "", _meaning("defenses", defenses, schema, {}) + ": `<name>: {type: ..., ...}`.", ""]
    lines += _methods("defenses.<name>", DEFENSES, defenses["additionalProperties"]["allOf"], [], schema, glossary)
    return "\n".join(lines).rstrip() + "\n"


def missing_meanings(text: str) -> list[str]:
    """Table rows whose meaning column is empty."""
    return [line for line in text.splitlines() if line.startswith("| `") and line.rstrip().endswith("|  |")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/parameters.md is out of date")
    text = render()
    if ap.parse_args().check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.name} is out of date: run python workflow/scripts/params_reference.py",
                  file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
