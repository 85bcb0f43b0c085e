"""i-BAU: implicit backdoor adversarial unlearning (Zeng et al., ICLR 2022; docs/methods.md section 5).

min_theta L_out(delta*(theta), theta) with delta*(theta) the universal perturbation that maximises the loss
of the model on the clean subset. For each of ``rounds`` (5):

1. the universal perturbation: ``uap_epochs`` passes (1, as in the reference) over the clean batches of SGD
   (``uap_lr``) on
   -CE(f(x + delta), f(x)) + ``reg`` * ||delta||^2 (labels = the model's own predictions), then projected onto
   the L2 ball of radius ``radius``;
2. unlearning: for every batch an Adam step (lr 1e-4) with the implicit hypergradient of
   L_out = CE(f(x + patch), y), where ``portion`` of the batch (at least one image) carries delta. The
   inner problem's fixed-point map is Phi(delta) = delta - ``inner_lr`` * grad_delta L_in, L_in = -CE(f(x +
   delta), y) + reg * ||delta||^2; the hypergradient is dL_out/dtheta + (dPhi/dtheta)^T v with
   v = sum_{k<K} (dPhi/ddelta)^T^k dL_out/ddelta, K = 5 fixed-point steps (approximating the inverse).

The network stays in eval mode (BN statistics frozen), as in the reference code. Units: the reference
works on images normalised by the CIFAR std (about 0.25); here delta lives in [0, 1] pixel space, so its
constants are converted with sigma = 0.25 (radius 10 -> 2.5, reg 1e-3 -> 0.016, SGD lr 10 -> 0.625, inner lr
0.1 -> 0.00625) and describe the same optimisation. Deviation from the reference script: its inner loss
always reads the first batch (a "TODO" in the code); here it reads the batch of the outer step, so the
fixed-point map and the outer loss see the same images. As in the reference, x + delta is not clamped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dormant.defenses import DEFENSES
from dormant.defenses.base import Defense
from dormant.defenses.loop import batches
from dormant.progress import Heartbeat
from dormant.runtime import autocast

IBAU_DEFAULTS = {"rounds": 5, "K": 5, "lr": 1e-4, "batch_size": 100, "radius": 2.5, "reg": 0.016,
                 "uap_lr": 0.625, "uap_epochs": 1, "inner_lr": 0.00625, "portion": 0.01}


def universal_perturbation(model, clean, cfg: dict, generator: torch.Generator) -> torch.Tensor:
    """Step 1: ``uap_epochs`` passes of SGD on the negated loss against the model's own labels, then the L2
    projection. (With fewer clean images than the reference's 2,500, more passes give its number of steps.)"""
    device = next(model.parameters()).device
    delta = torch.zeros(1, *clean.image_shape, device=device, requires_grad=True)
    opt = torch.optim.SGD([delta], lr=cfg["uap_lr"])
    for _ in range(cfg["uap_epochs"]):
        for x, _y in batches(clean, cfg["batch_size"], generator):
            with torch.no_grad(), autocast(device, fp16=True):
                own = model(x).argmax(1)
            with autocast(device):
                loss = -F.cross_entropy(model(x + delta).float(), own) + cfg["reg"] * delta.pow(2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        return (delta * min(1.0, cfg["radius"] / max(float(delta.norm()), 1e-12))).detach()


def hypergradient(model, params, delta, x, y, pick, cfg: dict) -> list[torch.Tensor]:
    """Implicit gradient of the outer loss w.r.t. ``params`` through the fixed point of the inner map."""
    device = x.device
    d = delta.detach().requires_grad_(True)
    patch = torch.zeros_like(x)
    patch[pick] = d[0]
    with autocast(device):
        outer = F.cross_entropy(model(x + patch).float(), y)
    g_out = torch.autograd.grad(outer, [d, *params], allow_unused=True)
    g_d, g_theta = g_out[0], g_out[1:]
    with autocast(device):
        inner = -F.cross_entropy(model(x + d).float(), y) + cfg["reg"] * d.pow(2).sum()
    (grad_d,) = torch.autograd.grad(inner, d, create_graph=True)
    phi = d - cfg["inner_lr"] * grad_d
    v = torch.zeros_like(d)
    for _ in range(cfg["K"]):
        (jv,) = torch.autograd.grad(phi, d, grad_outputs=v, retain_graph=True)
        v = jv + g_d
    implicit = torch.autograd.grad(phi, params, grad_outputs=v, allow_unused=True)
    return [sum(t for t in (a, b) if t is not None) if (a is not None or b is not None) else torch.zeros_like(p)
            for a, b, p in zip(g_theta, implicit, params)]


@DEFENSES.register("ibau")
class ImplicitBackdoorAdversarialUnlearning(Defense):
    defaults = IBAU_DEFAULTS

    def run(self, model, clean, *, seed, checkpoint=None, monitor=None, audit=None):
        cfg = dict(self.cfg)
        g = torch.Generator().manual_seed(seed)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=cfg["lr"])
        was_training = model.training
        model.eval()
        history = []
        hb = Heartbeat("i-bau", total=cfg["rounds"] * len(clean), unit="img")
        for r in tqdm(range(cfg["rounds"]), desc="i-bau", disable=None, mininterval=30):
            delta = universal_perturbation(model, clean, cfg, g)
            total, n = 0.0, 0
            for x, y in batches(clean, cfg["batch_size"], g):
                k = max(1, int(len(x) * cfg["portion"]))
                pick = torch.randperm(len(x), generator=g)[:k].to(x.device)
                grads = hypergradient(model, params, delta, x, y, pick, cfg)
                for p, gr in zip(params, grads):
                    p.grad = gr.detach()
                opt.step()
                opt.zero_grad(set_to_none=True)
                with torch.no_grad(), autocast(x.device, fp16=True):
                    total += float(F.cross_entropy(model(x + delta).float(), y)) * len(x)
                n += len(x)
                hb.update(len(x), round=f"{r + 1}/{cfg['rounds']}", loss_under_uap=total / n)
            rec = {"round": r + 1, "uap_l2": float(delta.norm()), "loss_under_uap": total / n}
            if monitor is not None:
                rec.update(monitor(model))
            history.append(rec)
            hb.fields.update({k: v for k, v in rec.items() if k != "round"})
        hb.close()
        model.train(was_training)
        return model, {"history": history, "changed": True}
