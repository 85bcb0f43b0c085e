"""Small pieces shared by the defenses that run their own optimisation loops (NC, ANP, i-BAU, SAU):
seeded mini-batches of the resident uint8 data, a frozen copy of a model, and accuracy on a held-out split."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch

from dormant.analysis.metrics import clean_accuracy, predict
from dormant.data.augment import to_float


def batches(data, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled (float images in [0, 1], labels) batches; the order comes from ``generator``."""
    perm = torch.randperm(len(data), generator=generator).to(data.x.device)
    for i in range(0, len(data), batch_size):
        idx = perm[i : i + batch_size]
        yield to_float(data.x[idx]), data.y[idx]


def endless_batches(data, batch_size: int, generator: torch.Generator):
    """Batches without end, reshuffled after each epoch (for defenses counted in iterations)."""
    while True:
        yield from batches(data, batch_size, generator)


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy of ``model`` whose parameters take no gradient."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def accuracy(model: torch.nn.Module, data, transform=None) -> float:
    """Top-1 accuracy (percent) on an ImageSet, e.g. the held-out split of the clean subset."""
    return clean_accuracy(predict(model, data.x, transform), data.y)
