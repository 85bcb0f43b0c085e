"""The library files a workflow rule depends on, derived from the imports of its stage function.

Snakemake reruns a job when one of its inputs changes, but it cannot see which library modules a job imports.
This module computes them statically, so that no rule carries a hand-written list:

* a stage's own imports: the top-level imports of its stage module, the imports inside the stage function's
  body, and those of the module's helper functions (or other stages' helpers) that it calls;
* their closure within the package: every ``import`` anywhere in a module (lazy ones included), every
  parent package's ``__init__``, and every module of a package whose ``__init__`` calls ``import_all``;
* the plugin modules the job's config selects (an attack's or a defense's ``type``), with their closure:
  plugins are imported by name at run time, which no static analysis can see.

A test runs each stage under an import tracer and checks that every ``dormant`` module it loads is in its
rule's list; another edits a module and checks with ``snakemake -n`` which rules rerun.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = "dormant"
PKG_DIR = Path(__file__).resolve().parent
REPO_ROOT = PKG_DIR.parents[2]


def module_file(module: str) -> Path | None:
    """``dormant.a.b`` -> its source file (module or package ``__init__``), or None if it is not a module."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PKG_DIR.joinpath(*parts[1:])
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _is_package(module: str) -> bool:
    f = module_file(module)
    return f is not None and f.name == "__init__.py"


@functools.cache
def _tree(module: str) -> ast.Module:
    return ast.parse(module_file(module).read_text(encoding="utf-8"))


def _resolve(node: ast.ImportFrom, module: str) -> str:
    if node.level == 0:
        return node.module or ""
    pkg = module if _is_package(module) else module.rpartition(".")[0]
    parts = pkg.split(".")
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imported(node: ast.AST, module: str) -> list[tuple[str, str | None]]:
    """(module, imported name or None) for one import statement, restricted to the package."""
    out = []
    if isinstance(node, ast.Import):
        out = [(a.name, None) for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = _resolve(node, module)
        for a in node.names:
            sub = f"{base}.{a.name}"
            out.append((sub, None) if module_file(sub) else (base, a.name))
    return [(m, n) for m, n in out if m == PACKAGE or m.startswith(PACKAGE + ".")]


def _with_parents(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def _imports_all(module: str) -> bool:
    return any(isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None)) == "import_all"
               for n in ast.walk(_tree(module)))


@functools.cache
def closure(module: str) -> frozenset[str]:
    """``module`` and every package module it can import, transitively (lazy imports included)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        for p in _with_parents(m):
            if p in seen or module_file(p) is None:
                continue
            seen.add(p)
            todo.extend(dep for node in ast.walk(_tree(p)) for dep, _ in _imported(node, p))
            if _imports_all(p) and _is_package(p):
                todo.extend(f"{p}.{f.stem}" for f in module_file(p).parent.glob("*.py") if f.stem != "__init__")
    return frozenset(seen)


def _is_stage_module(module: str) -> bool:
    return module.startswith(f"{PACKAGE}.stages.")


@functools.cache
def function_imports(module: str, func: str) -> frozenset[str]:
    """Direct imports of one function of a stage module: the module's top-level imports, the function's own
    imports, and those of the helpers it calls (in its module, or imported from another stage module)."""
    tree = _tree(module)
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    if func not in defs:
        raise KeyError(f"{module} has no function {func!r}")
    deps: set[str] = {module}
    foreign: dict[str, tuple[str, str]] = {}  # local name -> (other stage module, function)
    for node in tree.body:
        for dep, name in _imported(node, module):
            if _is_stage_module(dep) and name is not None:
                foreign[name] = (dep, name)
            else:
                deps.add(dep)
    visited: set[str] = set()

    def visit(name: str) -> None:
        visited.add(name)
        for node in ast.walk(defs[name]):
            for dep, imported in _imported(node, module):
                if _is_stage_module(dep) and imported is not None:
                    deps.update(function_imports(dep, imported))
                else:
                    deps.add(dep)
            if isinstance(node, ast.Name):
                if node.id in defs and node.id not in visited:
                    visit(node.id)
                elif node.id in foreign:
                    deps.update(function_imports(*foreign[node.id]))

    visit(func)
    return frozenset(deps)


def stage_modules(stage: str, plugins: tuple[str, ...] = ()) -> frozenset[str]:
    """Every package module the stage ``stage`` (a function of :mod:`dormant.stages`) can load, plus the
    closure of the given plugin modules (e.g. ``dormant.defenses.ft``)."""
    from dormant.stages import load_all

    st = load_all().get(stage)
    if st is None:
        raise KeyError(f"no stage {stage!r}")
    mods: set[str] = set()
    for dep in function_imports(st.module, stage) | set(plugins):
        # a stage module counts by its own file only: its other stages' imports are not this stage's
        mods |= _with_parents(dep) if _is_stage_module(dep) else closure(dep)
    return frozenset(mods)


def code_files(stage: str, *, attacks=(), defenses=()) -> list[str]:
    """The library files (paths relative to the repository root) of a rule: its stage's modules and those of
    the attack and defense types (``type`` values of params.yaml) its job runs."""
    from dormant.attacks import ATTACKS
    from dormant.defenses import DEFENSES

    plugins = tuple(sorted({ATTACKS.module_of(a) for a in attacks} | {DEFENSES.module_of(d) for d in defenses}))
    return _files(stage, plugins)


#: data files a module reads at run time (package data): an edit of one reruns what imports the module
MODULE_DATA = {"dormant.clip.captions": ("captions.yaml",), "dormant.plan": ("plan_rates.yaml",)}


@functools.cache
def _files(stage: str, plugins: tuple[str, ...]) -> list[str]:
    mods = stage_modules(stage, plugins)
    files = {module_file(m) for m in mods}
    for m in mods:
        for name in MODULE_DATA.get(m, ()):
            files.add(module_file(m).parent / name)
    return sorted(str(f.relative_to(REPO_ROOT)) for f in files if f is not None)
