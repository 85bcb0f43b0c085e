"""Defense registry (docs/methods.md section 5). Adding a defense = one module ``defenses/<name>.py`` whose
:class:`Defense` subclass is registered with ``@DEFENSES.register("<name>")`` and declares its ``defaults``,
plus its entry in params.yaml and its keys in the JSON schema; the module is imported when a config first
names it."""

from __future__ import annotations

from dormant.defenses.base import Defense
from dormant.registry import Registry

DEFENSES: Registry[type] = Registry("defense", package=__name__)
HELPER_MODULES = ("base", "holdout", "loop")  # shared code, not defenses


def build_defense(cfg: dict) -> Defense:
    """A defense from its params.yaml entry (``type`` selects the class; missing keys take its defaults)."""
    return DEFENSES.get(cfg["type"])(cfg)


__all__ = ["DEFENSES", "Defense", "build_defense"]
