"""Attack registry. Adding an attack = one module here that registers a subclass of :class:`Attack`,
plus its entry in params.yaml (and its keys in the JSON schema)."""

from __future__ import annotations

import torch

from ..registry import Registry

ATTACKS: Registry[type] = Registry("attack")

from .base import Attack  # noqa: E402
from . import badnets, blended  # noqa: E402,F401  (registration side effects)


def build_attack(cfg: dict, image_shape, num_classes: int) -> Attack:
    """An attack from its params.yaml entry (``type`` selects the class)."""
    return ATTACKS.get(cfg["type"])(cfg, image_shape, num_classes)


def create_attack(cfg: dict, train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, seed: int) -> Attack:
    """Builds the attack, makes its trigger resources and draws its poison index, all from ``seed``."""
    attack = build_attack(cfg, tuple(train_x.shape[1:]), num_classes)
    g = torch.Generator().manual_seed(seed)
    attack.init_resources(train_x, g)
    attack.select(train_y, g)
    return attack


def load_attack(path, device="cpu") -> Attack:
    """Rebuilds an attack saved by the ``trigger`` stage."""
    from ..io import load_tensors

    tensors, meta = load_tensors(path)
    attack = build_attack(meta["config"], tuple(meta["image_shape"]), meta["num_classes"])
    attack.load_state_dict(tensors)
    return attack.to(device)


def save_attack(attack: Attack, path, extra_meta: dict | None = None) -> None:
    from ..io import save_tensors

    meta = {"config": attack.cfg, "image_shape": list(attack.image_shape), "num_classes": attack.num_classes}
    save_tensors(attack.state_dict(), path, {**meta, **(extra_meta or {})})


__all__ = ["ATTACKS", "Attack", "build_attack", "create_attack", "load_attack", "save_attack"]
