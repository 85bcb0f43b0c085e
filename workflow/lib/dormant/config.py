"""Loading and validating params.yaml (the one experiment config) against workflow/schemas/params.schema.yaml.

Errors name the offending key as a dotted path (``attacks.badnets.ratio``), are raised before any job
runs, and cross-check the schema's enums against the registries so the two cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from dormant.errors import ConfigError

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "params.schema.yaml"


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _best_errors(err):
    """For allOf/if-then/oneOf failures, descend to the most specific sub-errors."""
    if err.context:
        for sub in err.context:
            yield from _best_errors(sub)
    else:
        yield err


def validate(cfg, source: str = "params.yaml") -> dict:
    """Returns ``cfg`` if it is valid; raises :class:`ConfigError` naming every offending key otherwise."""
    import jsonschema

    if not isinstance(cfg, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(cfg).__name__}")
    validator = jsonschema.Draft7Validator(load_schema())
    msgs = []
    for err in sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path))):
        for leaf in _best_errors(err):
            path = list(leaf.absolute_path)
            if leaf.validator == "required":
                missing = leaf.message.split("'")[1] if "'" in leaf.message else leaf.message
                msgs.append(f"{_key(path + [missing])}: missing required key")
            elif leaf.validator == "enum":
                msgs.append(f"{_key(path)}: {leaf.instance!r} is not one of {leaf.validator_value}")
            else:
                msgs.append(f"{_key(path)}: {leaf.message}")
    msgs = list(dict.fromkeys(msgs))
    if not msgs:
        msgs = _semantic_checks(cfg)
    if msgs:
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(msgs))
    return cfg


def _semantic_checks(cfg: dict) -> list[str]:
    msgs = []
    b = cfg["bec"]
    if b["headline_fraction"] not in b["fractions"]:
        msgs.append(f"bec.headline_fraction: {b['headline_fraction']} must be one of bec.fractions {b['fractions']}")
    d = cfg["data"]
    if d["source"] == "path":
        if not d.get("path"):
            msgs.append("data.path: must be set when data.source is 'path'")
        elif not Path(d["path"]).expanduser().exists():
            msgs.append(f"data.path: dataset not found: {d['path']}")
    own = cfg["transfer"]["defenses"]
    for name, sur in cfg["transfer"]["surrogates"].items():
        for dname in sur["defenses"]:
            if dname not in own:
                msgs.append(f"transfer.surrogates.{name}.defenses: {dname!r} is not an entry of transfer.defenses "
                            f"({', '.join(sorted(own))})")
    q = cfg["query"]
    late = [c for c in q["checkpoints"] if c > q["budget"]]
    if late:
        msgs.append(f"query.checkpoints: {late} exceed query.budget {q['budget']}")
    if (d["dataset"] == "synthetic") != (d["source"] == "synthetic"):
        msgs.append("data.dataset: 'synthetic' goes with data.source 'synthetic' and only with it")
    return msgs


def load(path) -> dict:
    """Reads and validates a params file."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    try:
        cfg = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {e}") from e
    return validate(cfg, str(p))
