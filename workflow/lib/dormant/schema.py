"""The params schema (workflow/schemas/params.schema.yaml) and its validator, shared by config validation
(:mod:`dormant.config`) and the loaders that read attack configs back from artifact files."""

from __future__ import annotations

import math
from pathlib import Path

import yaml

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "params.schema.yaml"


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def dotted(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def best_errors(err):
    """For allOf/if-then/oneOf failures, descend to the most specific sub-errors."""
    if err.context:
        for sub in err.context:
            yield from best_errors(sub)
    else:
        yield err


_INT_TYPES = None


def validator_class():
    """Draft 7 whose ``integer`` is a Python int only (``10.0`` and booleans are not integers)."""
    global _INT_TYPES
    if _INT_TYPES is None:
        import jsonschema

        checker = jsonschema.Draft7Validator.TYPE_CHECKER.redefine(
            "integer", lambda _c, x: isinstance(x, int) and not isinstance(x, bool))
        _INT_TYPES = jsonschema.validators.extend(jsonschema.Draft7Validator, type_checker=checker)
    return _INT_TYPES


def non_finite(obj, path=()) -> list[str]:
    """Dotted keys of every NaN or infinite number (YAML's .nan/.inf); the schema's bounds cannot see them."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return [f"{dotted(path)}: {obj} is not a finite number"]
    if isinstance(obj, dict):
        return [m for k, v in obj.items() for m in non_finite(v, (*path, k))]
    if isinstance(obj, list):
        return [m for i, v in enumerate(obj) for m in non_finite(v, (*path, i))]
    return []


def attack_entry_errors(entry) -> list[str]:
    """Schema errors of one attack entry (as under ``attacks.<name>``): for attack configs read from files."""
    schema = load_schema()
    sub = {"definitions": schema["definitions"], "type": "object",
           "additionalProperties": schema["properties"]["attacks"]["additionalProperties"]}
    msgs = non_finite(entry, ("config",))
    for err in validator_class()(sub).iter_errors({"config": entry}):
        for leaf in best_errors(err):
            msgs.append(f"{dotted(list(leaf.absolute_path))}: {shorten(leaf.message)}")
    return list(dict.fromkeys(msgs))


def shorten(msg: str, limit: int = 200) -> str:
    """jsonschema quotes the whole offending value (a 300-character name, a huge number): keep it short."""
    msg = " ".join(msg.split())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."
