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


def draw_crop_flip(n: int, pad: int, generator: torch.Generator, flip: bool = True):
    """The randomness of :func:`random_crop_flip` for ``n`` images, on the generator's device: (row offsets,
    column offsets, flip flags); None for a part that is off. Drawn in the order the transform has always used
    (rows, columns, flips), so a loop that draws a whole epoch ahead replays the same stream."""
    oy = ox = f = None
    if pad > 0:
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device)
    if flip:
        f = torch.rand(n, generator=generator, device=generator.device) < 0.5
    return oy, ox, f


def apply_crop_flip(x: torch.Tensor, pad: int, oy, ox, f) -> torch.Tensor:
    """Crops (zero padding ``pad``) at offsets ``oy``/``ox`` and flips where ``f``: pure tensor ops on the batch's
    device, no host synchronisation; the offsets and flags may live on any device."""
    n, c, h, w = x.shape
    dev = x.device
    if oy is not None:
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        rows = (oy.to(dev)[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (ox.to(dev)[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        n_idx = torch.arange(n, device=dev)[:, None, None, None]
        c_idx = torch.arange(c, device=dev)[None, :, None, None]
        x = xp[n_idx, c_idx, rows, cols]
    if f is not None:
        x = torch.where(f.to(dev)[:, None, None, None], x.flip(3), x)
    return x


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator, flip: bool = True) -> torch.Tensor:
    """RandomCrop(size, padding=pad) + RandomHorizontalFlip for a batch ``x`` (N, C, H, W), zero padding."""
    return apply_crop_flip(x, pad, *draw_crop_flip(len(x), pad, generator, flip))


class Normalize(torch.nn.Module):
    """Per-channel normalisation as the model's first layer, so attacks work in [0, 1] pixel space."""

    def __init__(self, mean=CIFAR_MEAN, std=CIFAR_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
