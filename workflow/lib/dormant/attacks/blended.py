"""Blended (Chen et al. 2017): x' = (1 - a) x + a P, with a = 0.2 at train and test time.

The paper's Hello-Kitty photo cannot ship. The default pattern is uniform random noise in [0, 1]
drawn from ``pattern_seed`` (Chen et al. also use random noise); ``pattern_path`` takes a user
image instead, resized to the dataset's image size.
"""

from __future__ import annotations

import torch

from dormant.attacks import ATTACKS
from dormant.attacks.base import Attack
from dormant.errors import DataError


def load_pattern_image(path: str, shape: tuple[int, int, int]) -> torch.Tensor:
    """A user image as a blend pattern: RGB (or grey), resized to H x W, values in [0, 1]."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB" if shape[0] == 3 else "L").resize((shape[2], shape[1]), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except Exception as e:
        raise DataError(f"attacks: blend pattern image {path} cannot be read: {e}") from e
    t = torch.from_numpy(arr.copy())
    return (t.permute(2, 0, 1) if t.dim() == 3 else t[None]).contiguous()


@ATTACKS.register("blended")
class Blended(Attack):
    defaults = {
        "alpha": 0.2,
        "pattern_path": None,
        "pattern_seed": 0,
    }

    def __init__(self, cfg, image_shape, num_classes):
        super().__init__(cfg, image_shape, num_classes)
        self.alpha = float(self.params["alpha"])

    def init_resources(self, train_x, generator):
        path = self.params["pattern_path"]
        if path:
            pattern = load_pattern_image(path, self.image_shape)
        else:
            g = torch.Generator().manual_seed(int(self.params["pattern_seed"]))
            pattern = torch.rand(self.image_shape, generator=g)
        self.resources = {"pattern": pattern}

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        p = self.resources["pattern"].to(x.device, x.dtype)
        return (1 - self.alpha) * x + self.alpha * p
