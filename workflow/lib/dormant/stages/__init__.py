"""Pipeline stages: the seam between the Snakemake rules and the library.

One module per rule file of ``workflow/rules/`` (``data``, ``models``, ``analysis``, ``blackbox``,
``report``) and one function per rule, named like the rule; the ``dormant`` command has one subcommand per
stage (``train_backdoor`` -> ``dormant train-backdoor``). Each stage reads its input artifacts, calls the
library, and writes its outputs atomically, each with a sidecar (config, seed, code version, metrics).

A stage module imports at its top only what every stage of it needs (artifact I/O); each stage function
imports its science inside its body. The workflow derives a rule's code inputs from exactly these imports
(:mod:`dormant.codedeps`), so an edit of a library module reruns the rules whose stage uses it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MODULES = ("data", "models", "analysis", "blackbox", "report", "seeds")  # == workflow/rules/<name>.smk

# What each path argument of a stage is, for ``dormant <stage> --help``.
ARG_HELP = {
    "dataset": "dataset tensors written by prepare_data (.safetensors)",
    "subset": "clean-subset index (JSON) written by clean_subset / attacker_subset",
    "resource": "trigger resource of the attack (.safetensors) written by attack_resource",
    "trigger": "attack (trigger + poison index, .safetensors) written by trigger or train_backdoor",
    "trained_trigger": "the attack as it stands after training (.safetensors + .json sidecar)",
    "clean": "clean model (.safetensors) written by train_clean",
    "model": "model weights (.safetensors; a .json sidecar sits next to it)",
    "backdoored": "backdoored model (.safetensors) written by train_backdoor",
    "source": "a model trained elsewhere (BackdoorBench record or state dict; docs/operations.md), read with "
              "torch.load(weights_only=True) only",
    "checkpoint": "resume checkpoint (.safetensors): a rerun continues from its last finished epoch",
    "metrics": "C-ACC/ASR/RA/DER (JSON)",
    "bec": "BEC with layer-wise CKA (JSON)",
    "observation": "PBE's observation (JSON)",
    "result": "result with its sidecar fields (JSON)",
    "delta": "universal perturbations (.safetensors)",
    "surrogates": "JSON list of the attacker's surrogate model paths",
    "deltas": "JSON object: surrogate set -> its delta file",
    "rows": "JSON list: per (attack, model) the paths of its analysis JSONs",
    "triggers": "JSON object: attack -> its trained trigger file",
    "histories": "JSON object: history CSV -> model sidecar",
    "observations": "JSON object: observation JSON -> {attack, model}",
    "defenses": "JSON object: defended model sidecar -> {attack, defense}",
    "tables": "JSON object: seed -> that seed's report/table.csv",
    "blackbox": "JSON object: seed -> that seed's report/blackbox.csv",
}


@dataclass(frozen=True)
class Stage:
    """A registered stage: its function, the params sections it reads and the path arguments it writes."""

    name: str
    func: Callable
    sections: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def module(self) -> str:
        return self.func.__module__

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")

    @property
    def summary(self) -> str:
        return " ".join(inspect.getdoc(self.func).split("\n\n")[0].split())

    def path_args(self) -> dict[str, inspect.Parameter]:
        """Keyword-only arguments other than ``device``: the files (or JSON arguments) of the stage."""
        return {n: p for n, p in inspect.signature(self.func).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and n != "device"}

    def is_json_arg(self, name: str) -> bool:
        ann = str(self.path_args()[name].annotation)
        return ann.startswith(("dict", "list"))


STAGES: dict[str, Stage] = {}


def stage(*, sections: tuple[str, ...] = ("seed",), outputs: tuple[str, ...] = ()):
    """Registers a stage function under its own name (the name of its rule)."""

    def deco(func: Callable) -> Callable:
        if func.__name__ in STAGES:
            raise ValueError(f"stage {func.__name__!r} is defined twice")
        if not inspect.getdoc(func):
            raise ValueError(f"stage {func.__name__!r} needs a docstring (its --help line)")
        STAGES[func.__name__] = Stage(func.__name__, func, tuple(sections), tuple(outputs))
        return func

    return deco


def load_all() -> dict[str, Stage]:
    """Imports every stage module (cheap: science is imported inside the stage functions)."""
    for m in MODULES:
        importlib.import_module(f"{__name__}.{m}")
    return STAGES


def sidecar_of(path) -> str:
    """The JSON sidecar next to an artifact: ``x/model.safetensors`` -> ``x/model.json``."""
    return str(Path(path).with_suffix(".json"))
