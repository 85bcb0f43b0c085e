"""SIG (Barni et al. 2019): a clean-label attack with a horizontal sinusoidal signal.

docs/methods.md section 4: x' = clip(x + d * sin(2 pi j f / W)) over columns j = 0..W-1 (same for every row
and channel), d = 40/255, f = 6. Clean-label: the poison index is drawn from target-class images only
and their labels stay. The signal has f periods across the width whatever the image size.
"""

from __future__ import annotations

import math

import torch

from dormant.attacks import ATTACKS
from dormant.attacks.base import Attack


def sinusoid(width: int, delta: float, frequency: float) -> torch.Tensor:
    """d * sin(2 pi j f / W) for j = 0..W-1 (a row vector, broadcast over rows and channels)."""
    j = torch.arange(width, dtype=torch.float64)
    return (delta * torch.sin(2 * math.pi * j * frequency / width)).float()


@ATTACKS.register("sig")
class SIG(Attack):
    defaults = {
        "delta": 40 / 255,
        "frequency": 6,
    }

    clean_label = True

    def __init__(self, cfg, image_shape, num_classes):
        super().__init__(cfg, image_shape, num_classes)
        self.delta = float(self.params["delta"])
        self.frequency = float(self.params["frequency"])
        self.signal = sinusoid(self.image_shape[2], self.delta, self.frequency)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.signal.to(x.device, x.dtype)).clamp(0, 1)
