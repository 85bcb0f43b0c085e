"""BadNets (Gu et al. 2017): a small white square in the bottom-right corner, pixels replaced.

methods.md section 4: 3x3 at 32x32; the side scales with the image (round(3 * H / 32)).
"""

from __future__ import annotations

import torch

from . import ATTACKS
from .base import Attack, scaled


@ATTACKS.register("badnets")
class BadNets(Attack):
    def __init__(self, cfg, image_shape, num_classes):
        super().__init__(cfg, image_shape, num_classes)
        _, h, w = self.image_shape
        self.side = scaled(int(cfg.get("patch_size", 3)), min(h, w))
        self.value = float(cfg.get("value", 1.0))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        out[..., -self.side :, -self.side :] = self.value
        return out
