"""TrojanNN (Liu et al., NDSS 2018): a patch trigger optimised to excite selected neurons of a clean model.

docs/methods.md section 4. The resource stage picks the ``n_neurons`` units of the clean model's penultimate
layer (the input of its last linear layer) with the largest total absolute connection weight to the
output layer, then optimises the trigger pixels inside a square mask in the bottom-right corner (side
``patch_size`` at 32x32, scaled with the image) so that, stamped on training images, those units'
activation is as large as possible (Adam on a sigmoid parametrisation, so pixels stay in [0, 1]).
Poisoning stamps it: x' = (1 - m) x + m T, labels set to the target. (The original retrains only the
later layers of the same network; here, as in BackdoorBench, the trigger poisons the training data.)
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from dormant.attacks import ATTACKS
from dormant.attacks.base import Attack, patch_side
from dormant.data.augment import to_float
from dormant.progress import Heartbeat, read_later


def last_linear(model: nn.Module) -> nn.Linear:
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no linear layer to take the penultimate features from")
    return layers[-1]


def select_neurons(model: nn.Module, n: int) -> torch.Tensor:
    """Penultimate units with the largest sum of |weights| to the output layer."""
    w = last_linear(model).weight.detach().abs().sum(0)
    return w.topk(min(n, len(w))).indices.sort().values


def corner_mask(shape: tuple[int, int, int], side: int) -> torch.Tensor:
    m = torch.zeros(1, *shape[1:])
    m[..., -side:, -side:] = 1
    return m


@ATTACKS.register("trojannn")
class TrojanNN(Attack):
    defaults = {
        "patch_size": 5,
        "n_neurons": 2,
        "n_images": 512,
        "lr": 0.1,
        "batch_size": 128,
        "steps": 300,
    }

    resource_stage = True
    needs_clean_model = True

    def __init__(self, cfg, image_shape, num_classes):
        super().__init__(cfg, image_shape, num_classes)
        self.side = patch_side(self)

    def build_resources(self, train, generator, *, clean_model=None, device="cpu"):
        model = clean_model.to(device).eval().requires_grad_(False)
        neurons = select_neurons(model, int(self.params["n_neurons"])).to(device)
        store = {}
        hook = last_linear(model).register_forward_pre_hook(lambda _m, inp: store.__setitem__("f", inp[0]))
        n = min(len(train), int(self.params["n_images"]))
        idx = torch.randperm(len(train), generator=generator)[:n]
        x_all = to_float(train.x[idx.to(train.x.device)])
        mask = corner_mask(self.image_shape, self.side).to(x_all.device)
        theta = (torch.rand(self.image_shape, generator=generator) * 2 - 1).to(x_all.device).requires_grad_(True)
        opt = torch.optim.Adam([theta], lr=float(self.params["lr"]))
        bs, hist = int(self.params["batch_size"]), []
        try:
            act0 = self._activation(model, store, x_all, mask, torch.sigmoid(theta.detach()), neurons, bs)
            hb = Heartbeat("trojannn trigger", total=int(self.params["steps"]), unit="step")
            for step in tqdm(range(int(self.params["steps"])), desc="trojannn trigger", disable=None):
                b = torch.randint(n, (min(bs, n),), generator=generator).to(x_all.device)
                xb = (1 - mask) * x_all[b] + mask * torch.sigmoid(theta)
                model(xb)
                loss = -store["f"][:, neurons].mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if (step + 1) % 50 == 0:
                    hist.append({"step": step + 1, "activation": -loss.item()})
                hb.update(1, loss=read_later(loss))
            hb.close()
            trig = (torch.sigmoid(theta.detach()) * mask)
            act1 = self._activation(model, store, x_all, mask, trig, neurons, bs)
            clean = self._activation(model, store, x_all, torch.zeros_like(mask), trig, neurons, bs)
        finally:
            hook.remove()
        self.resources = {"trigger": trig, "mask": mask, "neurons": neurons}
        return {"neurons": neurons.tolist(), "activation_clean": clean, "activation_initial_trigger": act0,
                "activation_trigger": act1, "history": hist, "patch_side": self.side}

    @torch.no_grad()
    def _activation(self, model, store, x, mask, trig, neurons, bs) -> float:
        tot = 0.0
        for s in range(0, len(x), bs):
            model((1 - mask) * x[s : s + bs] + mask * trig)
            tot += float(store["f"][:, neurons].mean(1).sum())
        return tot / len(x)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        m = self.resources["mask"].to(x.device, x.dtype)
        return (1 - m) * x + m * self.resources["trigger"].to(x.device, x.dtype)
