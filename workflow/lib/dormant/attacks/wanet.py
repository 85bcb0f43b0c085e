"""WaNet (Nguyen & Tran, ICLR 2021): an imperceptible warping trigger, training-controlled.

docs/methods.md section 4. The warping field: a random k x k grid of 2-D offsets in [-1, 1] normalised by
its mean absolute value, upsampled (bicubic) to H x W, scaled by s / H and added to the identity
sampling grid, clipped to [-1, 1]; the trigger is ``grid_sample`` of the image on that grid. In every
training batch a share ``rho_a`` of the samples is warped and relabelled to the target, and
``cross_ratio`` times that many "noise" samples are warped with the grid plus a random per-sample
offset in [-1, 1] / H and keep their labels (noise mode), so that the network learns the exact field.

The poison index (``select``) only names the images of the poisoned training set as the attacker
would release it (PBE's view); training itself poisons a fresh share of every shuffled batch, as
in the reference. k = 4 and s = 0.5 at 32x32; the field is built at the image's own size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dormant.attacks import ATTACKS
from dormant.attacks.base import Attack
from dormant.errors import ConfigError


def identity_grid(h: int, w: int) -> torch.Tensor:
    """The sampling grid (1, H, W, 2) of ``grid_sample`` that returns the image unchanged (align_corners)."""
    ys = torch.linspace(-1, 1, h)
    xs = torch.linspace(-1, 1, w)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1)[None]


def noise_field(k: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    """Random k x k offsets in [-1, 1], normalised by their mean |value|, upsampled to (1, H, W, 2)."""
    ins = torch.rand(1, 2, k, k, generator=generator) * 2 - 1
    ins = ins / ins.abs().mean()
    up = F.interpolate(ins, size=(h, w), mode="bicubic", align_corners=True)
    return up.permute(0, 2, 3, 1).contiguous()


def warp(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    grid = grid.to(x.device, x.dtype)
    if grid.shape[0] != x.shape[0]:
        grid = grid.expand(x.shape[0], -1, -1, -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True).clamp(0, 1)


@ATTACKS.register("wanet")
class WaNet(Attack):
    defaults = {
        "k": 4,
        "strength": 0.5,
        "cross_ratio": 2,
        "grid_seed": 0,
    }

    def __init__(self, cfg, image_shape, num_classes):
        super().__init__(cfg, image_shape, num_classes)
        self.k = int(self.params["k"])
        if not 2 <= self.k <= min(self.image_shape[1:]):
            raise ConfigError(f"attacks.{cfg.get('name', cfg['type'])}.k: {self.k} must be within 2 and the image "
                              f"side {min(self.image_shape[1:])}")
        self.strength = float(self.params["strength"])
        self.cross_ratio = float(self.params["cross_ratio"])
        self.grid_seed = int(self.params["grid_seed"])

    def init_resources(self, train_x, generator):
        _, h, w = self.image_shape
        self.resources = {"noise": noise_field(self.k, h, w, torch.Generator().manual_seed(self.grid_seed))}

    def grid(self) -> torch.Tensor:
        """The warping field (1, H, W, 2), built once per noise tensor (``to`` and ``set_resources`` replace
        it) instead of on every call: no per-batch rebuild and host-to-device copy of the identity grid."""
        noise = self.resources["noise"]
        cached = getattr(self, "_grid", None)
        if cached is None or cached[0] is not noise:
            _, h, w = self.image_shape
            field = (identity_grid(h, w).to(noise.device) + self.strength * noise / h).clamp(-1, 1)
            cached = self._grid = (noise, field)
        return cached[1]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return warp(x, self.grid())

    def batch_counts(self, n: int) -> tuple[int, int]:
        """(warped-and-relabelled, noise) samples of a batch of n: int(rho n) and int(cross_ratio rho n)."""
        n_bd = int(n * self.ratio)
        return n_bd, min(n - n_bd, int(n_bd * self.cross_ratio))

    def draw_batch(self, is_poison, generator):
        """The noise samples' random offsets in [-1, 1) (before scaling by 1/h): WaNet's only per-batch draw."""
        n_bd, n_cross = self.batch_counts(len(is_poison))
        _, h, w = self.image_shape
        if n_cross:
            return {"jitter": torch.rand(n_cross, h, w, 2, generator=generator) * 2 - 1}
        return {}

    def poison_drawn(self, x, y, drawn):
        n_bd, n_cross = self.batch_counts(len(x))
        if n_bd == 0 and n_cross == 0:
            return x, y
        _, h, w = self.image_shape
        grid = self.grid()
        x, y = x.clone(), y.clone()
        x[:n_bd] = warp(x[:n_bd], grid)
        y[:n_bd] = self.target
        if n_cross:
            jitter = drawn["jitter"].to(grid.device) / h
            x[n_bd : n_bd + n_cross] = warp(x[n_bd : n_bd + n_cross], (grid + jitter).clamp(-1, 1))
        return x, y
