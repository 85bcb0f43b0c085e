"""Batched, on-device image transforms: uint8 -> float, random crop with padding, flip, normalisation.

All ops act on a whole batch at once (no per-sample Python), on whatever device the batch lives on,
and draw their randomness from an explicit ``torch.Generator`` so runs are reproducible.
"""

from __future__ import annotations

import torch

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.247, 0.243, 0.261)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]."""
    return x.float().div_(255.0)


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator, flip: bool = True) -> torch.Tensor:
    """RandomCrop(size, padding=pad) + RandomHorizontalFlip for a batch ``x`` (N, C, H, W), zero padding."""
    n, c, h, w = x.shape
    dev = x.device
    if pad > 0:
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device).to(dev)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device).to(dev)
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        n_idx = torch.arange(n, device=dev)[:, None, None, None]
        c_idx = torch.arange(c, device=dev)[None, :, None, None]
        x = xp[n_idx, c_idx, rows, cols]
    if flip:
        f = torch.rand(n, generator=generator, device=generator.device).to(dev) < 0.5
        x = torch.where(f[:, None, None, None], x.flip(3), x)
    return x


class Normalize(torch.nn.Module):
    """Per-channel normalisation as the model's first layer, so attacks work in [0, 1] pixel space."""

    def __init__(self, mean=CIFAR_MEAN, std=CIFAR_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
