"""Shared pieces of every re-activation attack (docs/methods.md section 7): the L-inf/L2 projection and
random start of a universal delta, the re-activation loss, a context that freezes a model's parameters, the
generic SGD optimiser of a universal delta, and the sample of triggered training images an attacker uses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dormant.analysis.metrics import poisoned_test_index
from dormant.data.augment import to_float
from dormant.progress import Heartbeat, read_later


def project(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Projection onto the L-inf or L2 ball of radius eps (delta is one C x H x W tensor)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    if norm == "l2":
        n = delta.norm(p=2)
        return delta * torch.where(n > eps, eps / n, 1.0)  # on the device: no host sync per step
    raise ValueError(f"unknown norm {norm!r} (linf or l2)")



def random_init(shape, norm: str, eps: float, generator: torch.Generator) -> torch.Tensor:
    if norm == "linf":
        return (torch.rand(shape, generator=generator) * 2 - 1) * eps
    d = torch.randn(shape, generator=generator)
    r = torch.rand((), generator=generator) ** (1.0 / d.numel())
    return d / d.norm() * eps * r



def reactivation_loss(logits: torch.Tensor, target: int) -> torch.Tensor:
    """CE to the target plus -log(1.0001 - p_y') for the most probable non-target class y'."""
    ce = F.cross_entropy(logits, torch.full((len(logits),), target, device=logits.device, dtype=torch.long))
    p = logits.softmax(1)
    others = p.clone()
    others[:, target] = -1.0
    p_comp = others.max(1).values
    return ce + (-torch.log(1.0001 - p_comp)).mean()



class frozen:
    """Within the block the models are in eval mode with parameters that need no gradient."""

    def __init__(self, *models):
        self.models = models

    def __enter__(self):
        self.saved = [[p.requires_grad for p in m.parameters()] for m in self.models]
        for m in self.models:
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def __exit__(self, *exc):
        for m, flags in zip(self.models, self.saved):
            for p, f in zip(m.parameters(), flags):
                p.requires_grad_(f)



def optimise_delta(objective, x_uint8: torch.Tensor, *, device, transform=None, norm="linf", eps=0.05, lr=0.05,
                   epochs=50, steps=5, batch_size=128, momentum=0.0, seed=0, desc="delta") -> tuple[torch.Tensor, list]:
    """Projected SGD on one universal delta: ``objective(perturbed float batch) -> loss`` is minimised over
    ``epochs`` passes of ``x_uint8`` (each image optionally triggered by ``transform``), ``steps`` updates
    per batch, projection after every update. ``momentum`` > 0 gives heavy-ball SGD (v = mu v + g).

    Returns (delta, mean loss per epoch). The losses are summed on the device in float64 (the same sums as
    adding Python floats) and read back once at the end, so the loop makes no per-step host sync."""
    g = torch.Generator().manual_seed(seed)
    delta = random_init(tuple(x_uint8.shape[1:]), norm, eps, g).to(device)
    velocity = torch.zeros_like(delta)
    n = len(x_uint8)
    n_batches = math.ceil(n / batch_size)
    totals = torch.zeros(epochs, dtype=torch.float64, device=device)
    hb = Heartbeat(desc, total=epochs * n, unit="img")
    for e in tqdm(range(epochs), desc=desc, disable=None, mininterval=30):
        perm = torch.randperm(n, generator=g).to(x_uint8.device)  # one copy per epoch
        for s in range(n_batches):
            xb = to_float(x_uint8[perm[s * batch_size : (s + 1) * batch_size]].to(device))
            if transform is not None:
                xb = transform(xb)
            for _ in range(steps):
                d = delta.clone().requires_grad_(True)
                loss = objective((xb + d).clamp(0, 1))
                (grad,) = torch.autograd.grad(loss, d)
                velocity = momentum * velocity + grad if momentum else grad
                delta = project(delta - lr * velocity, norm, eps)
                totals[e] += loss.detach().double()
            hb.update(len(xb), epoch=f"{e + 1}/{epochs}", loss=read_later(loss))
    hb.close()
    losses = [t / (steps * n_batches) for t in totals.tolist()]
    return delta.detach(), losses



def attack_images(train, target: int, n: int, seed: int) -> torch.Tensor:
    """n training images of non-target classes, drawn from ``seed`` (the attacker's optimisation set).

    docs/methods.md asks for "1,000 poisoned training images": we stamp the trigger on training images whose
    label is not t -- the training-set counterpart of the poisoned test set on which ASR is measured --
    rather than reuse the poison index, which also holds images already of class t.
    """
    idx = poisoned_test_index(train.y.cpu(), target)
    g = torch.Generator().manual_seed(seed)
    return idx[torch.randperm(len(idx), generator=g)[:n]].sort().values
