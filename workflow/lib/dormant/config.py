"""Loading and validating params.yaml (the one experiment config) against workflow/schemas/params.schema.yaml.

Errors name the offending key as a dotted path (``attacks.badnets.ratio``), are raised before any job
runs, and cross-check the schema's enums against the registries so the two cannot drift apart.

What is checked (docs/operations.md, "What a config can do"): the file is UTF-8 YAML (or JSON) without
duplicate keys and without YAML templating (``__use_yte__``, refused unless ``DORMANT_ALLOW_YTE=1``);
every key against the schema, integers being integers (no ``10.0``, no booleans), every number finite,
sizes and seeds within caps; then cross-field checks: targets below the class count and trigger sizes
within the image of a known dataset, perturbation budgets within the image (L-inf <= 1, L2 <= the image's
diameter), every attack and defense object built from its section (their own checks run), files named by
the config (``data.path``, ``pattern_path``) present.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import yaml

from dormant.errors import ConfigError
from dormant.schema import SCHEMA, best_errors, dotted, load_schema, non_finite, shorten, validator_class

__all__ = ["SCHEMA", "ConfigError", "load", "load_schema", "read_file", "validate"]

ALLOW_YTE_ENV = "DORMANT_ALLOW_YTE"
MAX_CONFIG_BYTES = 10_000_000
MAX_SYNTHETIC_BYTES = 16 * 2**30  # the synthetic source generates its images in memory


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys, naming the lines of both."""


def _construct_mapping(loader: StrictLoader, node, deep: bool = False):
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, f"unhashable key {key!r}", key_node.start_mark) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (lines {seen[key] + 1} and {key_node.start_mark.line + 1})",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    loader.flatten_mapping(node)
    return dict(loader.construct_pairs(node, deep=deep))


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def yte_allowed() -> bool:
    return os.environ.get(ALLOW_YTE_ENV, "") == "1"


def read_file(path, *, allow_yte: bool | None = None) -> dict:
    """Reads a config file strictly: one-line :class:`ConfigError` naming the file (and the line, where YAML
    says it) for a missing, unreadable, binary or unparsable file, duplicate keys, a top level that is not a
    mapping, or YAML templating (``__use_yte__``) without the opt-in. Returns the mapping (not validated)."""
    p = Path(path)
    if allow_yte is None:
        allow_yte = yte_allowed()
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    if not p.is_file():
        raise ConfigError(f"config file {p} is not a regular file")
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {p} is larger than {MAX_CONFIG_BYTES} bytes: not a config")
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read: {e.strerror or e}") from None
    if b"\x00" in raw:
        raise ConfigError(f"config file {p} is binary (NUL bytes), not YAML or JSON text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{p}:{line}: not UTF-8 text ({e.reason} at byte {e.start}); a config is YAML or JSON") \
            from None
    try:
        cfg = yaml.load(text, Loader=StrictLoader)  # noqa: S506 -- a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
        what = " ".join(str(x) for x in (e.context, e.problem) if x)
        raise ConfigError(f"{where}: not valid YAML: {what}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {' '.join(str(e).split())}") from None
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"{p}: expected a mapping of sections at the top level, got {type(cfg).__name__}")
    if "__use_yte__" in cfg:
        if not allow_yte:
            raise ConfigError(f"{p}: __use_yte__: YAML templating runs code from the config and is refused; set "
                              f"{ALLOW_YTE_ENV}=1 to opt in (only for configs you wrote)")
    return cfg


def validate(cfg, source: str = "params.yaml") -> dict:
    """Returns ``cfg`` if it is valid; raises :class:`ConfigError` naming every offending key otherwise."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(cfg).__name__}")
    if "__use_yte__" in cfg and not yte_allowed():
        raise ConfigError(f"{source}: __use_yte__: YAML templating is refused (set {ALLOW_YTE_ENV}=1 to opt in)")
    cfg_checked = {k: v for k, v in cfg.items() if k != "__use_yte__"}
    msgs = non_finite(cfg_checked)
    validator = validator_class()(load_schema())
    for err in sorted(validator.iter_errors(cfg_checked), key=lambda e: list(map(str, e.absolute_path))):
        for leaf in best_errors(err):
            path = list(leaf.absolute_path)
            if leaf.validator == "required":
                missing = leaf.message.split("'")[1] if "'" in leaf.message else leaf.message
                msgs.append(f"{dotted(path + [missing])}: missing required key")
            elif leaf.validator == "enum":
                msgs.append(f"{dotted(path)}: {leaf.instance!r} is not one of {leaf.validator_value}")
            elif leaf.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") and \
                    isinstance(leaf.instance, float) and not math.isfinite(leaf.instance):
                continue  # already said: not finite
            else:
                msgs.append(f"{dotted(path)}: {shorten(leaf.message)}")
    msgs = list(dict.fromkeys(msgs))
    if not msgs:
        msgs = _semantic_checks(cfg_checked)
    if msgs:
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(msgs))
    return cfg


#: (classes, image side) of the datasets whose facts are known before the data is read
_KNOWN = {"cifar10": (10, 32), "tiny_imagenet": (200, 64)}
SPLIT_DIRS = ("train", "test")


def _layout_root(p: Path) -> Path | None:
    """The folder holding train/ and test/ (the folder itself or one folder down), else None."""
    for cand in (p, *sorted(c for c in p.iterdir() if c.is_dir())):
        if all((cand / s).is_dir() for s in SPLIT_DIRS):
            return cand
    return None


def dataset_facts(d: dict) -> tuple[int | None, int | None]:
    """(number of classes, image side) of the configured dataset where they are known without reading images."""
    ds = d.get("dataset") or "cifar10"
    if ds == "synthetic":
        s = d.get("synthetic") or {}
        return s.get("num_classes", 10), s.get("image_size", 32)
    if ds == "gtsrb":
        return 43, d.get("image_size") or 32
    if ds == "imagenet":
        return None, d.get("image_size") or 224  # a partial copy has fewer than 1000 classes
    if ds == "cifar10" and d.get("source") == "path":
        p = Path(str(d.get("path") or "")).expanduser()
        root = _layout_root(p) if d.get("path") and p.is_dir() else None
        classes = len([c for c in (root / "train").iterdir() if c.is_dir()]) if root else None
        return classes, None  # a folder's images may be of any size
    return _KNOWN.get(ds, (None, None))


def _check_data_path(d: dict) -> list[str]:
    """data.path exists and has the layout its dataset reads (a quick look, no image is decoded). ImageNet's
    folder and label file are checked before the first job instead (:mod:`dormant.userpaths`), so that a preset
    naming them expands with ``snakemake -n`` on a machine without them."""
    if d["source"] != "path":
        return []
    if not d.get("path"):
        return ["data.path: must be set when data.source is 'path'"]
    if d["dataset"] == "imagenet":
        return []
    p = Path(d["path"]).expanduser()
    if not p.exists():
        return [f"data.path: dataset not found: {d['path']}"]
    ds = d["dataset"]
    if ds == "cifar10":
        if p.is_dir():
            if _layout_root(p) is None:
                return [f"data.path: {d['path']} has no train/ and test/ class folders "
                        "(expected {train,test}/<class>/*.jpg)"]
        elif not p.name.lower().endswith((".tar", ".tar.gz", ".tgz")):
            return [f"data.path: {d['path']} is neither a folder nor a .tar/.tar.gz/.tgz archive"]
    elif ds == "tiny_imagenet":
        if p.is_file() and not p.name.lower().endswith(".zip"):
            return [f"data.path: {d['path']} is neither the tiny-imagenet-200 folder nor its .zip"]
    elif ds == "gtsrb" and not p.is_dir():
        return [f"data.path: {d['path']} must be a folder holding torchvision's gtsrb/ layout"]
    return []


def _budget_checks(cfg: dict, side: int | None) -> list[str]:
    msgs = []
    diameter = math.sqrt(3 * side * side) if side else None
    for sec in ("reactivation", "query", "transfer"):
        s = cfg[sec]
        if s["norm"] == "linf" and s["eps"] > 1:
            msgs.append(f"{sec}.eps: {s['eps']} exceeds 1, the whole [0, 1] pixel range of an L-inf budget")
        if s["norm"] == "l2" and diameter is not None and s["eps"] > diameter:
            msgs.append(f"{sec}.eps: {s['eps']} exceeds the L2 diameter {diameter:.4g} of a 3x{side}x{side} image")
    budgets = cfg["reactivation"].get("budgets") or {}
    for eps in budgets.get("linf") or []:
        if eps > 1:
            msgs.append(f"reactivation.budgets.linf: {eps} exceeds 1, the whole [0, 1] pixel range of an L-inf budget")
    for eps in budgets.get("l2") or []:
        if diameter is not None and eps > diameter:
            msgs.append(f"reactivation.budgets.l2: {eps} exceeds the L2 diameter {diameter:.4g} of a "
                        f"3x{side}x{side} image")
    if diameter is not None:
        for where, sec in _defense_sections(cfg):
            for name, entry in sec.items():
                if entry.get("type") == "ibau" and entry.get("radius", 0) > diameter:
                    msgs.append(f"{where}.{name}.radius: {entry['radius']} exceeds the L2 diameter {diameter:.4g} "
                                f"of a 3x{side}x{side} image")
    return msgs


def _defense_sections(cfg: dict):
    return (("defenses", cfg.get("defenses") or {}), ("transfer.defenses", cfg["transfer"].get("defenses") or {}))


def _build_checks(cfg: dict, classes: int | None, side: int | None) -> list[str]:
    """Builds every attack and defense object from its section so that their own checks run now."""
    from dormant.attacks import ATTACKS, build_attack
    from dormant.defenses import build_defense

    msgs = []
    n_cls = classes or 1 + max([10, *(a["target"] for a in cfg["attacks"].values())])
    h = side or 32
    for name, entry in cfg["attacks"].items():
        key = f"attacks.{name}"
        if classes is not None and entry["target"] >= classes:
            msgs.append(f"{key}.target: {entry['target']} is not a class of this dataset (0..{classes - 1})")
            continue
        pattern = entry.get("pattern_path")
        if pattern and not Path(pattern).expanduser().is_file():
            msgs.append(f"{key}.pattern_path: file not found: {pattern}")
            continue
        try:
            ATTACKS.get(entry["type"])
            _build_on_meta(lambda entry=entry, name=name: build_attack({**entry, "name": name}, (3, h, h), n_cls),
                           small=h <= 256)
        except (ConfigError, KeyError, TypeError, ValueError, RuntimeError) as e:
            msgs.append(_named(key, e))
    for where, sec in _defense_sections(cfg):
        for name, entry in sec.items():
            try:
                build_defense(entry)
            except (ConfigError, KeyError, TypeError, ValueError) as e:
                msgs.append(_named(f"{where}.{name}", e))
    return msgs


def _build_on_meta(build, small: bool):
    """Builds an object on the meta device (its networks allocate nothing, whatever the image size); an object
    whose construction needs real tensors is built for real only at a small image size."""
    import torch

    try:
        with torch.device("meta"):
            return build()
    except (RuntimeError, NotImplementedError):
        if small:
            return build()
        return None


def _named(key: str, e: Exception) -> str:
    """An object's own error under the config key of its entry (unless it already starts with that key)."""
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return msg if msg.startswith(key + ".") or msg.startswith(key + ":") else f"{key}: {msg}"


def _semantic_checks(cfg: dict) -> list[str]:
    msgs = []
    b = cfg["bec"]
    if b["headline_fraction"] not in b["fractions"]:
        msgs.append(f"bec.headline_fraction: {b['headline_fraction']} must be one of bec.fractions {b['fractions']}")
    d = cfg["data"]
    msgs += _check_data_path(d)
    own = cfg["transfer"]["defenses"]
    for name, sur in cfg["transfer"]["surrogates"].items():
        for dname in sur["defenses"]:
            if dname not in own:
                msgs.append(f"transfer.surrogates.{name}.defenses: {dname!r} is not an entry of transfer.defenses "
                            f"({', '.join(sorted(own))})")
    shown = (cfg.get("report") or {}).get("transfer_variant", "mom")
    computed = cfg["transfer"].get("variants", ["plain", "momentum", "mom"])
    if shown not in computed:
        msgs.append(f"report.transfer_variant: {shown!r} is not one of transfer.variants {computed}")
    q = cfg["query"]
    late = [c for c in q["checkpoints"] if c > q["budget"]]
    if late:
        msgs.append(f"query.checkpoints: {late} exceed query.budget {q['budget']}")
    if (d["dataset"] == "synthetic") != (d["source"] == "synthetic"):
        msgs.append("data.dataset: 'synthetic' goes with data.source 'synthetic' and only with it")
    if d["dataset"] == "tiny_imagenet" and d["source"] != "path":
        msgs.append("data.source: Tiny-ImageNet is read from its zip or folder only (source: path)")
    if d["dataset"] == "imagenet" and d["source"] != "path":
        msgs.append("data.source: ImageNet validation is read from a folder only (source: path)")
    if d.get("labels") and d["dataset"] != "imagenet":
        msgs.append(f"data.labels: only data.dataset imagenet reads a label file (dataset: {d['dataset']})")
    if d["dataset"] == "gtsrb" and d["source"] not in ("path", "torchvision"):
        msgs.append(f"data.source: {d['source']!r} is not available for GTSRB (torchvision or path)")
    if d["dataset"] == "synthetic":
        s = d.get("synthetic") or {}
        n = s.get("num_classes", 10) * ((d.get("train_per_class") or 100) + (d.get("test_per_class") or 20))
        size = n * 3 * s.get("image_size", 32) ** 2
        if size > MAX_SYNTHETIC_BYTES:
            msgs.append(f"data.synthetic: {n} images of {s.get('image_size', 32)}px would take {size / 2**30:.0f} GiB "
                        f"(at most {MAX_SYNTHETIC_BYTES / 2**30:.0f} GiB)")
    msgs += _track_checks(cfg)
    msgs += _import_checks(cfg)
    if cfg["seed"] + cfg["transfer"]["seed_offset"] >= 2**63:
        msgs.append("transfer.seed_offset: seed + seed_offset must stay below 2**63")
    if msgs:
        return msgs
    classes, side = dataset_facts(d)
    msgs += _budget_checks(cfg, side)
    msgs += _build_checks(cfg, classes, side)
    return msgs


def _import_checks(cfg: dict) -> list[str]:
    """Models trained elsewhere (docs/operations.md): an attack whose model is imported has a fixed trigger,
    a BackdoorBench file needs an architecture with BackdoorBench's layout, and an imported defense names one
    file per attack of the config (and only those)."""
    from dormant.attacks import ATTACKS
    from dormant.clip.specs import is_clip
    from dormant.importing.layouts import BB_LAYOUT_ARCHS, REFUSED

    msgs, formats = [], []
    arch = cfg["model"]["arch"]
    if cfg["model"].get("import"):
        formats.append(("model.import.format", cfg["model"]["import"]["format"]))
    for name, entry in cfg["attacks"].items():
        if not entry.get("import"):
            continue
        formats.append((f"attacks.{name}.import.format", entry["import"]["format"]))
        cls = ATTACKS.get(entry["type"]) if entry["type"] in ATTACKS else None
        if cls is not None and cls.learns_in_training:
            msgs.append(f"attacks.{name}.import: type {entry['type']!r} learns its trigger with the victim; the "
                        "learned trigger is not in the file, so its model cannot be imported")
    for name, entry in (cfg.get("defenses") or {}).items():
        if entry["type"] != "imported":
            continue
        formats.append((f"defenses.{name}.format", entry.get("format", "backdoorbench")))
        models = entry.get("models") or {}
        missing = sorted(set(cfg["attacks"]) - set(models))
        if missing:
            msgs.append(f"defenses.{name}.models: no file for attack(s) {', '.join(missing)} (an imported defense "
                        "needs the defended model of every attack)")
        for extra in sorted(set(models) - set(cfg["attacks"])):
            msgs.append(f"defenses.{name}.models.{extra}: not an attack of this config "
                        f"({', '.join(sorted(cfg['attacks']))})")
    for name, entry in (cfg["transfer"].get("defenses") or {}).items():
        if entry["type"] == "imported":
            msgs.append(f"transfer.defenses.{name}: type 'imported' is the victim's side only; the attacker's "
                        "surrogate defenses run here")
    if formats and is_clip(arch):
        msgs.append(f"{formats[0][0].rsplit('.format', 1)[0]}: the CLIP track imports no models")
    for key, fmt in formats:
        if fmt == "backdoorbench" and arch not in BB_LAYOUT_ARCHS:
            msgs.append(f"{key}: a BackdoorBench file cannot hold model.arch {arch!r} "
                        f"({REFUSED.get(arch, 'not a BackdoorBench model')}); importable: {', '.join(BB_LAYOUT_ARCHS)}")
            break
    return msgs


def _track_checks(cfg: dict) -> list[str]:
    """The CLIP track (a ``clip`` section) and the classifier track do not mix: architectures, defenses and
    attacks must all belong to the config's track (docs/methods.md section 9)."""
    from dormant.attacks import ATTACKS
    from dormant.attacks.base import Attack
    from dormant.clip.specs import is_clip
    from dormant.defenses import DEFENSES

    msgs = []
    track = "clip" if cfg.get("clip") is not None else "classifier"
    want = "a CLIP architecture (clip_tiny, clip_rn50)" if track == "clip" else "a classifier architecture"
    archs = [("model.arch", cfg["model"]["arch"])] + [(f"transfer.surrogates.{n}.arch", s["arch"])
                                                      for n, s in cfg["transfer"]["surrogates"].items()]
    for key, arch in archs:
        if is_clip(arch) != (track == "clip"):
            msgs.append(f"{key}: {arch!r} is not {want}: the {track} track "
                        f"({'a clip section is present' if track == 'clip' else 'no clip section'})")
    for where, sec in _defense_sections(cfg):
        for name, entry in sec.items():
            if entry["type"] in DEFENSES and DEFENSES.get(entry["type"]).models != track:
                msgs.append(f"{where}.{name}: type {entry['type']!r} defends {DEFENSES.get(entry['type']).models} "
                            f"models, this config is of the {track} track")
    if track == "clip":
        c = cfg["clip"]
        if c["captions"] == "path" and not c.get("pairs"):
            msgs.append("clip.pairs: must be set when clip.captions is 'path'")
        if c["captions"] == "generated" and cfg["data"]["dataset"] == "imagenet":
            msgs.append("clip.captions: 'generated' needs a labelled training split; the imagenet dataset has none "
                        "(use captions: path)")
        for name, entry in cfg["attacks"].items():
            cls = ATTACKS.get(entry["type"]) if entry["type"] in ATTACKS else None
            if cls is not None and (cls.resource_stage or cls.draw_batch is not Attack.draw_batch
                                    or cls.poisoned_trainset is not Attack.poisoned_trainset):
                msgs.append(f"attacks.{name}: type {entry['type']!r} is not a data-poisoning attack with a fixed "
                            "trigger; the CLIP track poisons released pairs (badnets, blended, sig)")
    return msgs


def load(path) -> dict:
    """Reads (strictly, :func:`read_file`) and validates a params file."""
    p = Path(path)
    return validate(read_file(p), str(p))
