"""Attack registry (docs/methods.md section 4). Adding an attack = one module ``attacks/<name>.py`` whose
:class:`Attack` subclass is registered with ``@ATTACKS.register("<name>")``, plus its entry in params.yaml
and its keys in the JSON schema; the module is imported when a config first names it."""

from __future__ import annotations

import torch

from dormant.attacks.base import Attack
from dormant.registry import Registry

ATTACKS: Registry[type] = Registry("attack", package=__name__)
HELPER_MODULES = ("base", "generators")  # shared code, not attacks


def build_attack(cfg: dict, image_shape, num_classes: int) -> Attack:
    """An attack from its params.yaml entry (``type`` selects the class)."""
    return ATTACKS.get(cfg["type"])(cfg, image_shape, num_classes)


def create_attack(cfg: dict, train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, seed: int,
                  resources: dict[str, torch.Tensor] | None = None) -> Attack:
    """Builds the attack, makes (or takes, from its resource stage) its trigger resources and draws its
    poison index, all from ``seed``."""
    attack = build_attack(cfg, tuple(train_x.shape[1:]), num_classes)
    g = torch.Generator().manual_seed(seed)
    if resources is not None:
        attack.set_resources(resources)
    elif attack.resource_stage:
        raise ValueError(f"attack {cfg['type']!r} needs the resources of its resource stage "
                         "(dormant.attacks.make_resources)")
    attack.init_resources(train_x, g)
    attack.select(train_y, g)
    return attack


def make_resources(cfg: dict, train, num_classes: int, seed: int, clean_model=None, device="cpu"):
    """Runs an attack's resource stage (a pattern against a clean model, a trained encoder, ...): returns
    ``(resources, info)``. ``train`` is the training ImageSet on ``device``."""
    attack = build_attack(cfg, train.image_shape, num_classes)
    if attack.needs_clean_model and clean_model is None:
        raise ValueError(f"attack {cfg['type']!r} builds its trigger against a clean model: pass clean_model")
    g = torch.Generator().manual_seed(seed)
    info = attack.build_resources(train, g, clean_model=clean_model, device=device) or {}
    return {k: v.detach().cpu().contiguous() for k, v in attack.resources.items()}, info


MAX_SIDE = 4096
MAX_CLASSES = 100_000


def _attack_from_meta(meta: dict, path) -> Attack:
    """Rebuilds the attack a file's metadata describes, every field checked (the file is untrusted)."""
    from dormant.errors import CheckpointError, ConfigError
    from dormant.io import meta_field

    cfg = meta_field(meta, "config", path, dict)
    kind = meta_field(cfg, "type", path, str, what="config")
    if kind not in ATTACKS.names():
        raise CheckpointError(f"{path}: config field 'type' = {kind[:64]!r} is not a known attack "
                              f"({', '.join(ATTACKS.names())})")
    shape = meta_field(meta, "image_shape", path, list)
    if len(shape) != 3 or any(isinstance(s, bool) or not isinstance(s, int) for s in shape) or \
            shape[0] not in (1, 3) or not all(1 <= s <= MAX_SIDE for s in shape[1:]):
        raise CheckpointError(f"{path}: metadata field 'image_shape' = {str(shape)[:64]} is not [C, H, W] with C "
                              f"1 or 3 and sides 1..{MAX_SIDE}")
    n = meta_field(meta, "num_classes", path, int, lo=2, hi=MAX_CLASSES)
    from dormant.schema import attack_entry_errors

    problems = attack_entry_errors({k: v for k, v in cfg.items() if k != "name"})
    if problems:  # sizes within the schema's caps before anything is built from them
        raise CheckpointError(f"{path}: its attack config is invalid: {'; '.join(problems[:3])}")
    try:
        return build_attack(cfg, tuple(shape), n)
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its attack config does not build: {e}") from None


def check_attack_tensors(tensors: dict, path, n_train: int | None = None) -> None:
    """The trigger file's tensors: an integer 1-D poison index of distinct in-range indices, finite resources."""
    from dormant.errors import CheckpointError
    from dormant.io import check_tensor

    if "poison_index" not in tensors:
        raise CheckpointError(f"{path}: tensor 'poison_index' is missing")
    idx = check_tensor(tensors["poison_index"], "poison_index", path, dtypes=(torch.int64, torch.int32), ndim=1)
    if len(idx):
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or (n_train is not None and hi >= n_train):
            raise CheckpointError(f"{path}: tensor 'poison_index' holds {lo if lo < 0 else hi}, outside the training "
                                  f"set 0..{(n_train or 1) - 1}")
        if len(torch.unique(idx)) != len(idx):
            raise CheckpointError(f"{path}: tensor 'poison_index' repeats indices")
    for k, v in tensors.items():
        if k == "poison_index":
            continue
        if not k.startswith("res."):
            raise CheckpointError(f"{path}: unexpected tensor {k!r} (an attack file holds poison_index and res.*)")
        check_tensor(v, k, path, finite=True)


def load_attack(path, device="cpu", *, n_train: int | None = None) -> Attack:
    """Rebuilds an attack saved by the ``trigger`` stage (or, with what it learned, by training); every field of
    the file is checked first, the poison index against ``n_train`` where the caller knows the training set."""
    from dormant.errors import CheckpointError
    from dormant.io import load_tensors

    tensors, meta = load_tensors(path)
    attack = _attack_from_meta(meta, path)
    check_attack_tensors(tensors, path, n_train)
    try:
        attack.load_state_dict(tensors)
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: tensors do not fit attack {attack.cfg['type']!r}: {e}") from None
    return attack.to(device)


def load_resources(path, cfg: dict) -> dict[str, torch.Tensor]:
    """An attack's resource file (from ``attack_resource``), checked: made for exactly ``cfg``, finite tensors."""
    from dormant.errors import CheckpointError
    from dormant.io import check_tensor, load_tensors

    tensors, meta = load_tensors(path)
    if meta.get("config") != cfg:
        raise CheckpointError(f"{path} was made for another attack config than {cfg.get('type')!r} here; rerun its "
                              "stage")
    for k, v in tensors.items():
        check_tensor(v, k, path, finite=True)
    return tensors


def save_attack(attack: Attack, path, extra_meta: dict | None = None) -> None:
    from dormant.io import save_tensors

    meta = {"config": attack.cfg, "image_shape": list(attack.image_shape), "num_classes": attack.num_classes}
    save_tensors({k: v.detach().cpu().contiguous() for k, v in attack.state_dict().items()}, path,
                 {**meta, **(extra_meta or {})})


__all__ = ["ATTACKS", "Attack", "build_attack", "create_attack", "load_attack", "load_resources", "make_resources",
           "save_attack"]
