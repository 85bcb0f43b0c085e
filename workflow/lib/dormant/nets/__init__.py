"""Architectures (docs/methods.md section 2): a registry of model factories, checkpoint I/O
(:mod:`dormant.nets.checkpoint`) and model probing (:mod:`dormant.nets.probe`).

Adding an architecture = one module here whose factory is registered with ``@MODELS.register("<name>")``
(every module of this package is imported with it), plus the name in the JSON schema's list of archs.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from dormant.registry import Registry, import_all

MODELS: Registry[Callable[..., nn.Module]] = Registry("architecture")


def build_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """A freshly initialised model of architecture ``name`` (initialisation uses torch's global RNG)."""
    return MODELS.get(name)(num_classes=num_classes, in_channels=in_channels)


import_all(__name__, __path__)  # registers every architecture module  # noqa: E402
