"""BadNets (Gu et al. 2017): a small white square in the bottom-right corner, pixels replaced.

docs/methods.md section 4: 3x3 at 32x32; the side scales with the image (round(3 * H / 32)).
"""

from __future__ import annotations

import torch

from dormant.attacks import ATTACKS
from dormant.attacks.base import Attack, patch_side


@ATTACKS.register("badnets")
class BadNets(Attack):
    defaults = {
        "patch_size": 3,
        "value": 1.0,
    }

    def __init__(self, cfg, image_shape, num_classes):
        super().__init__(cfg, image_shape, num_classes)
        self.side = patch_side(self)
        self.value = float(self.params["value"])

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        out[..., -self.side :, -self.side :] = self.value
        return out
