"""Input-Aware dynamic backdoor (Nguyen & Tran, NeurIPS 2020), training-controlled.

docs/methods.md section 4. A generator G makes an input-specific pattern and a mask network M an
input-specific sparse mask; the triggered image is x' = x + (G(x) - x) * M(x). Two phases:

1. Resource stage: M is pretrained alone (``mask_epochs``, 25 in the paper) with the norm loss
   lambda_norm * mean(relu(m - 0.032)) over the pixels of the soft mask outside its kept top k (see
   below; the reference penalises every pixel, which in short runs drives all masks to 0) and the diversity
   loss lambda_div * ||x1 - x2|| / ||M(x1) - M(x2)|| (different images get different masks); M is
   frozen afterwards.
2. Training: G learns jointly with the victim (Adam, betas 0.5/0.9). In every shuffled batch a share
   ``ratio`` of the samples carries its own trigger and is relabelled to the target, and
   ``cross_ratio`` times as many carry the trigger made for *another* image and keep their label
   (cross-trigger samples: a trigger only works on the image it was made for); the diversity loss on
   G's patterns is added to the classification loss. The trained G is the test-time trigger.

Deviation, named: the mask is the soft threshold tanh(20 (sigmoid(M) - 0.5)) / 2 + 0.5 of the
reference, and in addition only its ``round(density * H * W)`` largest values per image are kept,
so the density target is a hard bound at train and test time instead of a penalty alone.
The poison index (``select``) only names the released poisoned training set (PBE's view).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dormant.attacks import ATTACKS
from dormant.attacks.base import Attack
from dormant.attacks.generators import EncoderDecoder, from_tensors, seeded, to_tensors
from dormant.data.augment import to_float
from dormant.progress import Heartbeat, read_later

#: floor of the distances the diversity losses divide by (RMS pixel units). The reference's 1e-7 lets the
#: loss reach 1e6 while the initial masks are still nearly equal, and the run diverges; at convergence two
#: disjoint k-pixel masks are ~0.25 apart, so 0.01 does not change the optimum.
DIV_EPS = 0.01


def soft_threshold(m: torch.Tensor) -> torch.Tensor:
    return torch.tanh(20 * (m - 0.5)) / 2 + 0.5


def keep_top(mask: torch.Tensor, k: int) -> torch.Tensor:
    """Zeroes all but the k largest values of each (N, 1, H, W) mask (differentiable in the kept ones)."""
    flat = mask.flatten(1)
    vals, idx = flat.topk(k, dim=1)
    return torch.zeros_like(flat).scatter(1, idx, vals).view_as(mask)


def pair_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b).pow(2).flatten(1).mean(1) + 1e-12).sqrt()  # finite gradient where a == b


@ATTACKS.register("input_aware")
class InputAware(Attack):
    defaults = {
        "mask_density": 0.032,
        "lambda_norm": 100,
        "lambda_div": 1,
        "cross_ratio": 1,
        "width": 16,
        "net_seed": 0,
        "lr_mask": 0.01,
        "batch_size": 128,
        "mask_epochs": 25,
        "lr_generator": 0.01,
    }

    resource_stage = True
    learns_in_training = True

    def __init__(self, cfg, image_shape, num_classes):
        super().__init__(cfg, image_shape, num_classes)
        c, h, w = self.image_shape
        self.density = float(self.params["mask_density"])
        self.k = max(1, int(round(self.density * h * w)))
        self.lambda_norm = float(self.params["lambda_norm"])
        self.lambda_div = float(self.params["lambda_div"])
        self.cross_ratio = float(self.params["cross_ratio"])
        width, seed = int(self.params["width"]), int(self.params["net_seed"])
        self.G = seeded(lambda: EncoderDecoder(c, c, width), seed)
        self.M = seeded(lambda: EncoderDecoder(c, 1, width), seed + 1)
        self.G.requires_grad_(False)
        self.M.requires_grad_(False)
        self.learning = False
        self._div = None

    # ---- the two networks -------------------------------------------------------------
    def pattern(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(self.G(x)) + 1) / 2

    def soft_mask(self, x: torch.Tensor) -> torch.Tensor:
        return soft_threshold(torch.sigmoid(self.M(x)))

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        return keep_top(self.soft_mask(x), self.k)

    def stamp(self, x: torch.Tensor, pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x + (pattern - x) * mask

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(self.learning and torch.is_grad_enabled()):
            return self.stamp(x, self.pattern(x), self.mask(x)).clamp(0, 1)

    # ---- resource stage: pretrain M ----------------------------------------------------
    def build_resources(self, train, generator, *, clean_model=None, device="cpu"):
        self.to(device)
        self.M.requires_grad_(True)
        opt = torch.optim.Adam(self.M.parameters(), lr=float(self.params["lr_mask"]), betas=(0.5, 0.9))
        bs, n = int(self.params["batch_size"]), len(train)
        epochs = int(self.params["mask_epochs"])
        hist = []
        hb = Heartbeat("input-aware mask", total=epochs * n, unit="img")
        for epoch in tqdm(range(epochs), desc="input-aware mask", disable=None):
            p1, p2 = torch.randperm(n, generator=generator), torch.randperm(n, generator=generator)
            tot = torch.zeros(3)
            for s in range(0, n, bs):
                x1 = to_float(train.x[p1[s : s + bs].to(train.x.device)])
                x2 = to_float(train.x[p2[s : s + bs].to(train.x.device)])
                s1 = self.soft_mask(x1)
                m1, m2 = keep_top(s1, self.k), self.mask(x2)
                norm = self.lambda_norm * F.relu(s1 - m1 - self.density).mean()
                div = self.lambda_div * (pair_distance(x1, x2) / (pair_distance(m1, m2) + DIV_EPS)).mean()
                loss = norm + div
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot += torch.tensor([loss.item(), norm.item(), m1.detach().mean().item()]) * len(x1)
                hb.update(len(x1), epoch=f"{epoch + 1}/{epochs}", loss=read_later(loss))
            tot /= n
            hist.append({"epoch": epoch + 1, "loss": tot[0].item(), "norm_loss": tot[1].item(),
                         "mask_mean": tot[2].item()})
        hb.close()
        self.M.requires_grad_(False)
        with torch.no_grad():
            probe = to_float(train.x[: min(n, 500)])
            dens = (self.mask(probe) > 0.5).float().flatten(1).mean(1)
        self.refresh()
        return {"mask_history": hist, "mask_density_max": dens.max().item(), "mask_density_mean": dens.mean().item(),
                "mask_pixels": self.k}

    # ---- training-time poisoning and joint learning ------------------------------------
    def batch_counts(self, n: int) -> tuple[int, int]:
        n_bd = int(n * self.ratio)
        return n_bd, min(n - n_bd, int(n_bd * self.cross_ratio))

    def draw_batch(self, is_poison, generator):
        """Nothing random per batch: the first rho n samples carry their own trigger, the next ones a neighbour's."""
        return {}

    def poison_drawn(self, x, y, drawn):
        self._div = None
        n_bd, n_cross = self.batch_counts(len(x))
        if n_bd == 0:
            return x, y
        with torch.set_grad_enabled(self.learning):
            own = x[:n_bd]
            pat_own = self.pattern(own)
            x_bd = self.stamp(own, pat_own, self.mask(own))
            parts = [x_bd.clamp(0, 1)]
            if n_cross:
                src = x.roll(1, 0)[n_bd : n_bd + n_cross]  # each cross sample gets its neighbour's trigger
                pat_src = self.pattern(src)
                tgt = x[n_bd : n_bd + n_cross]
                parts.append(self.stamp(tgt, pat_src, self.mask(src)).clamp(0, 1))
                if self.learning:
                    m = min(n_bd, n_cross)
                    ratio = pair_distance(own[:m], src[:m]) / (pair_distance(pat_own[:m], pat_src[:m]) + DIV_EPS)
                    self._div = self.lambda_div * ratio.mean()
        x = torch.cat(parts + [x[n_bd + n_cross :]], 0)
        y = torch.cat([torch.full_like(y[:n_bd], self.target), y[n_bd:]], 0)
        return x, y

    def trainable_parameters(self):
        return list(self.G.parameters())

    def make_optimizer(self):
        return torch.optim.Adam(self.G.parameters(), lr=float(self.params["lr_generator"]), betas=(0.5, 0.9))

    def train_mode(self, on: bool) -> None:
        self.learning = on
        self.G.requires_grad_(on)
        if not on:
            self.refresh()

    def training_loss(self):
        return self._div

    # ---- state -------------------------------------------------------------------------
    def refresh(self) -> None:
        self.resources = {**to_tensors("G", self.G), **to_tensors("M", self.M)}

    def set_resources(self, resources):
        super().set_resources(resources)
        if any(k.startswith("G.") for k in resources):
            from_tensors("G", self.G, resources)
        from_tensors("M", self.M, resources)

    def state_dict(self):
        self.refresh()
        return super().state_dict()

    def load_state_dict(self, sd):
        super().load_state_dict(sd)
        self.set_resources(self.resources)

    def to(self, device):
        self.G.to(device)
        self.M.to(device)
        self.refresh()
        return self
