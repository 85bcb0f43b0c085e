"""Name -> implementation registries, so that adding an attack, a defense or an architecture is one new
module plus its params entry.

Attacks and defenses are *plugin packages*: the module ``dormant.attacks.<name>`` registers the attack
``<name>``, and it is imported only when that name is first looked up. A job therefore loads the code of the
methods it runs and nothing else, which is what lets the workflow derive each rule's code inputs
(:mod:`dormant.codedeps`). Architectures are small and all registered when :mod:`dormant.nets` is imported
(:func:`import_all`).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


def import_all(package: str, path) -> None:
    """Imports every module of a package (registration side effects), in sorted order."""
    for mod in sorted(m.name for m in pkgutil.iter_modules(path)):
        importlib.import_module(f"{package}.{mod}")


class Registry(Generic[T]):
    """Maps a config name (e.g. ``"badnets"``) to the class or function that implements it.

    With ``package``, names are plugins: ``get(name)`` imports ``<package>.<name>`` on first use, and that
    module must register exactly ``name``.
    """

    def __init__(self, kind: str, package: str | None = None):
        self.kind = kind
        self.package = package
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            if self.package and obj.__module__ != self.module_of(name):
                raise ValueError(f"{self.kind} {name!r} must be registered by module {self.module_of(name)}, "
                                 f"not {obj.__module__}")
            self._items[name] = obj
            return obj

        return deco

    def module_of(self, name: str) -> str:
        """The module that implements a plugin ``name``."""
        return f"{self.package}.{name}"

    def plugin_names(self) -> list[str]:
        """Names of every plugin module of the package, without importing them."""
        pkg = importlib.import_module(self.package)
        return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)
                      if not m.name.startswith("_") and self._is_plugin(pkg, m.name))

    @staticmethod
    def _is_plugin(pkg, name: str) -> bool:
        return name not in getattr(pkg, "HELPER_MODULES", ())

    def get(self, name: str) -> T:
        if name not in self._items and self.package and isinstance(name, str) and name in self.plugin_names():
            importlib.import_module(self.module_of(name))
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self.names()) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        if self.package:
            return self.plugin_names()
        return sorted(self._items)

    def load_all(self) -> dict[str, T]:
        """Every implementation (imports every plugin module): for listings and consistency tests."""
        for name in self.names():
            self.get(name)
        return dict(sorted(self._items.items()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()
