"""Counts each architecture's forward multiply-adds (Conv2d and Linear, via forward hooks) and parameters on one
32x32x3 image with 10 classes: the ``macs`` and ``checkpoint.params`` tables of dormant/plan_rates.yaml.

Usage: ``python workflow/scripts/count_macs.py`` (prints YAML lines; CPU, a few seconds)."""

import torch
from dormant.nets import MODELS, build_model
from torch import nn


def count(arch: str) -> tuple[int, int]:
    net = build_model(arch, 10).eval()
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
            total += out.numel() * k
        elif isinstance(mod, nn.Linear):
            total += out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        net(torch.zeros(1, 3, 32, 32))
    for h in handles:
        h.remove()
    return total, sum(p.numel() for p in net.parameters())


if __name__ == "__main__":
    for arch in sorted(MODELS.names()):
        macs, params = count(arch)
        print(f"{arch}: macs {macs} params {params}")
