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


def load_attack(path, device="cpu") -> Attack:
    """Rebuilds an attack saved by the ``trigger`` stage (or, with what it learned, by training)."""
    from dormant.io import load_tensors

    tensors, meta = load_tensors(path)
    attack = build_attack(meta["config"], tuple(meta["image_shape"]), meta["num_classes"])
    attack.load_state_dict(tensors)
    return attack.to(device)


def save_attack(attack: Attack, path, extra_meta: dict | None = None) -> None:
    from dormant.io import save_tensors

    meta = {"config": attack.cfg, "image_shape": list(attack.image_shape), "num_classes": attack.num_classes}
    save_tensors({k: v.detach().cpu().contiguous() for k, v in attack.state_dict().items()}, path,
                 {**meta, **(extra_meta or {})})


__all__ = ["ATTACKS", "Attack", "build_attack", "create_attack", "load_attack", "make_resources", "save_attack"]
