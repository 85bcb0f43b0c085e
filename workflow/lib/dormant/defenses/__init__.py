"""Defense registry. Adding a defense = one module in this package registering a :class:`Defense`
subclass with ``@DEFENSES.register("name")``, plus its entry in params.yaml (and its keys in the JSON
schema). Every module here is imported, so no list needs editing."""

from __future__ import annotations

import importlib
import pkgutil

from ..registry import Registry

DEFENSES: Registry[type] = Registry("defense")

from .base import Defense  # noqa: E402

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_mod}")  # registration side effects


def build_defense(cfg: dict) -> Defense:
    return DEFENSES.get(cfg["type"])(cfg)


__all__ = ["DEFENSES", "Defense", "build_defense"]
