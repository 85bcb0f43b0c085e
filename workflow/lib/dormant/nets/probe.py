"""Probing a trained network without knowing its class: the classifier head and penultimate features,
forward hooks that capture named layers, and a traced order of conv/BN layers (conv-BN pairs, the outputs of
the last stages, BN layers) that defenses and BEC use on any architecture of :mod:`dormant.nets`.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def last_linear(model: torch.nn.Module) -> torch.nn.Linear:
    """The classifier head: the last ``nn.Linear`` of the model (its input is the penultimate feature)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear head")
    return linears[-1]


head = last_linear  # the name defenses use for the classifier layer


@torch.no_grad()
def penultimate_features(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Inputs of the classifier head for a float batch in [0, 1] (eval mode, fp32)."""
    head, feats = last_linear(model), []
    handle = head.register_forward_pre_hook(lambda _m, inp: feats.append(inp[0].detach().float().flatten(1)))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size])
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(feats) if feats else torch.zeros(0)


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


def trace(model: nn.Module, x: torch.Tensor) -> list[dict]:
    """Module calls of one eval-mode forward pass, in the order they finish: name, module, id of the input
    and output tensors, output shape."""
    records, handles = [], []
    for name, mod in model.named_modules():
        if not name:
            continue

        def hook(m, inp, out, name=name):
            if isinstance(out, torch.Tensor):
                first = inp[0] if inp and isinstance(inp[0], torch.Tensor) else None
                records.append({"name": name, "module": m, "in": id(first) if first is not None else None,
                                "out": id(out), "shape": tuple(out.shape), "keep": (first, out),
                                "in_shape": tuple(first.shape) if first is not None else None})
        handles.append(mod.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return records


def _probe(model: nn.Module, image_shape=(3, 32, 32)) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.rand(2, *image_shape, generator=torch.Generator().manual_seed(0)).to(device)


def conv_bn_pairs(model: nn.Module, image_shape=(3, 32, 32)) -> list[tuple[str, str]]:
    """(conv name, bn name) for every BatchNorm2d fed directly by a Conv2d with as many output channels."""
    recs = trace(model, _probe(model, image_shape))
    conv_out = {r["out"]: r for r in recs if isinstance(r["module"], nn.Conv2d)}
    pairs = []
    for r in recs:
        if isinstance(r["module"], nn.BatchNorm2d) and r["in"] in conv_out:
            conv = conv_out[r["in"]]
            if conv["module"].out_channels == r["module"].num_features:
                pairs.append((conv["name"], r["name"]))
    return pairs


def module_order_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv name, bn name) pairing every BatchNorm2d with the last Conv2d registered before it in
    ``named_modules()`` order, as BackdoorBench's CLP does. In a pre-activation block this pairs ``bn1`` with the
    previous block's last conv (its ``conv2`` or its 1x1 shortcut), so every BN of PreAct-ResNet18 gets a conv.
    A BN with no conv before it, or whose preceding conv has a different width (where the reference code would
    index out of range or score the wrong rows; e.g. WRN-28-2's final BN, registered right after the stem), is
    left out: :func:`unpaired_bns` names them."""
    pairs, last = [], None
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            last = (name, m)
        elif isinstance(m, nn.BatchNorm2d) and last is not None and last[1].out_channels == m.num_features:
            pairs.append((last[0], name))
    return pairs


def unpaired_bns(model: nn.Module, pairs: list[tuple[str, str]]) -> list[str]:
    """BatchNorm2d layers of ``model`` that no pair scores."""
    paired = {bn for _, bn in pairs}
    return [name for name in bn_layers(model) if name not in paired]


def attention_points(model: nn.Module, image_shape=(3, 32, 32), n: int = 2) -> list[str]:
    """Modules whose *inputs* are the feature maps of the last ``n`` stages, deepest last.

    A stage ends where the resolution drops: the outermost module that maps a feature map of resolution r
    to a smaller one (the next stage, a max-pool, or the global pool) receives stage r's output. E.g.
    ``["layer4", "avgpool"]`` for PreAct-ResNet18: their inputs are the outputs of layer3 and layer4."""
    best: dict[tuple, tuple] = {}
    for i, r in enumerate(trace(model, _probe(model, image_shape))):
        ins, outs = r["in_shape"], r["shape"]
        if ins is None or len(ins) != 4 or len(outs) not in (2, 4) or ins[-1] <= 1:
            continue
        if len(outs) == 4 and outs[-2] * outs[-1] >= ins[-2] * ins[-1]:
            continue
        key = (r["name"].count("."), i)  # outermost first, then the first to finish
        if ins[-2:] not in best or key < best[ins[-2:]][0]:
            best[ins[-2:]] = (key, r["name"])
    sizes = sorted(best, key=lambda s: s[0] * s[1])[:n]
    return [best[s][1] for s in sorted(sizes, key=lambda s: -s[0] * s[1])]


def bn_layers(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
