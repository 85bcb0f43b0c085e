"""Defense registry. Adding a defense = one module here registering a :class:`Defense` subclass,
plus its entry in params.yaml (and its keys in the JSON schema)."""

from __future__ import annotations

from ..registry import Registry

DEFENSES: Registry[type] = Registry("defense")

from .base import Defense  # noqa: E402
from . import aft, ft, pbe  # noqa: E402,F401  (registration side effects)


def build_defense(cfg: dict) -> Defense:
    return DEFENSES.get(cfg["type"])(cfg)


__all__ = ["DEFENSES", "Defense", "build_defense"]
