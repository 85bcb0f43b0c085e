"""Strict reading of config files inside Snakemake, also of those its command line reads before the workflow.

Snakemake reads every ``--configfile`` in its command-line layer, before the Snakefile runs, and a YAML file
with ``__use_yte__: true`` is rendered by YTE there (Python code from the config runs) before any check of
ours. Two layers stop that:

* the Snakefile calls :func:`check_workflow_configs` before its ``configfile:`` directive: every config file
  (params.yaml and each ``--configfile``) is re-read with :func:`dormant.config.read_file` (strict YAML, no
  duplicate keys, no templating without ``DORMANT_ALLOW_YTE=1``); a bad file stops the run with one line and
  exit code 2;
* this module, imported at interpreter start by a ``.pth`` line in the environment
  (``python -m dormant.configguard --install``), makes Snakemake's own config loader call the same strict
  reader first, so a missing, binary or templated file is refused before Snakemake parses it at all.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from pathlib import Path

TARGET = "snakemake.common.configfile"
PTH_NAME = "dormant-configguard.pth"
PTH_LINE = ("import importlib.util as _u; _u.find_spec('dormant.configguard') is not None and "
            "__import__('dormant.configguard').configguard.install()\n")


def fail(msg: str) -> None:
    """One line on stderr and exit code 2, as the ``dormant`` command does for bad input."""
    print(f"error: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def _shown(path) -> str:
    """A path as the user gave it where possible: relative to the working folder when inside it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve())) if p.is_absolute() else str(p)
    except ValueError:
        return str(p)


def _strict_read(path) -> None:
    from dormant.config import read_file
    from dormant.errors import ConfigError

    try:
        read_file(_shown(path))
    except ConfigError as e:
        fail(str(e))


def _patch(module) -> None:
    original = module._load_configfile
    if getattr(original, "_dormant_strict", False):
        return

    def load(configpath_or_obj, filetype="Config"):
        if isinstance(configpath_or_obj, (str, os.PathLike)):
            _strict_read(configpath_or_obj)
        return original(configpath_or_obj, filetype)

    load._dormant_strict = True
    module._load_configfile = load


class _Loader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Makes Snakemake's config loader read each file strictly first (idempotent)."""
    if TARGET in sys.modules:
        _patch(sys.modules[TARGET])
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def check_workflow_configs(workflow, default: str = "params.yaml") -> str:
    """Re-reads every config file of this Snakemake run strictly (exit 2 with one line on a bad one) and returns
    what the config was made of, e.g. ``config/paper.yaml (--replace-workflow-config)``, for error headers."""
    settings = workflow.config_settings
    given = [_shown(f) for f in (settings.configfiles or ())]
    if Path(default).exists():
        _strict_read(default)
    for f in given:
        _strict_read(f)
    if given and settings.replace_workflow_config:
        parts = [f"{', '.join(given)} (--replace-workflow-config)"]
    else:
        parts = [default, *given]
    if settings.config:
        parts.append("--config")
    return " + ".join(parts)


def install_pth() -> Path:
    """Writes the ``.pth`` line that imports this module at interpreter start into the running environment."""
    import sysconfig

    path = Path(sysconfig.get_paths()["purelib"]) / PTH_NAME
    path.write_text(PTH_LINE)
    return path


if __name__ == "__main__":
    if sys.argv[1:] == ["--install"]:
        print(f"wrote {install_pth()}")
    else:
        print("usage: python -m dormant.configguard --install", file=sys.stderr)
        sys.exit(2)
