"""Forward hooks that read intermediate activations of named layers (for BEC and later analyses)."""

from __future__ import annotations

import contextlib

import torch


def get_layer(model: torch.nn.Module, name: str) -> torch.nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise KeyError(f"model {type(model).__name__} has no layer {name!r}") from None


@contextlib.contextmanager
def capture(model: torch.nn.Module, layers: list[str]):
    """Within the block, ``store[name]`` holds the latest output of each named layer."""
    store: dict[str, torch.Tensor] = {}
    handles = []
    for name in layers:
        def hook(_m, _i, out, name=name):
            store[name] = out.detach().float()
        handles.append(get_layer(model, name).register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()
