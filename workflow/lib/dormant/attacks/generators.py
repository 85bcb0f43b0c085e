"""Small image-to-image networks the learned triggers use (Input-Aware's generator and mask network,
SSBA's StegaStamp-style encoder and decoder), and their round trip through flat tensor dicts.

No batch norm: a trigger network gives the same output in training and at test time, and for one
image whatever else is in the batch. Convolutions only, so any image size divisible by 4 works.
"""

from __future__ import annotations

import torch
from torch import nn


def _block(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(o, o, 3, 1, 1),
                         nn.ReLU(inplace=True))


class EncoderDecoder(nn.Module):
    """A two-level U-Net: (in_ch) -> (out_ch) at the same resolution, raw outputs (no activation)."""

    def __init__(self, in_ch: int, out_ch: int, width: int = 16):
        super().__init__()
        self.down1 = _block(in_ch, width)
        self.down2 = _block(width, 2 * width)
        self.mid = _block(2 * width, 4 * width)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, 2)
        self.dec2 = _block(4 * width, 2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 2, 2)
        self.dec1 = _block(2 * width, width)
        self.out = nn.Conv2d(width, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)
        d2 = self.down2(nn.functional.max_pool2d(d1, 2))
        m = self.mid(nn.functional.max_pool2d(d2, 2))
        u2 = self.dec2(torch.cat([self.up2(m), d2], 1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], 1))
        return self.out(u1)


class BitDecoder(nn.Module):
    """Image -> logits of ``n_bits`` hidden bits (strided convs, then a linear layer on the flattened map:
    the bits live in where the residual is, which a global pool would average away)."""

    def __init__(self, n_bits: int, image_shape=(3, 32, 32), width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(image_shape[0], width, 3, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, 4 * width, 3, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(4 * width, 4 * width, 3, 1, 1), nn.ReLU(inplace=True),
        )
        h, w = (image_shape[1] + 7) // 8, (image_shape[2] + 7) // 8
        self.head = nn.Linear(4 * width * h * w, n_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


def seeded(factory, seed: int) -> nn.Module:
    """A module whose initial weights depend only on ``seed`` (not on the global RNG)."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return factory()
    finally:
        torch.random.set_rng_state(state)


def to_tensors(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().clone() for k, v in module.state_dict().items()}


def from_tensors(prefix: str, module: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    sd = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    module.load_state_dict(sd)
    return module
