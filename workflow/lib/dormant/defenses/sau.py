"""SAU: shared adversarial unlearning (Wei et al., NeurIPS 2023; docs/methods.md section 5).

The backdoored model h0 is kept as a frozen reference; the model h being purified starts from it. For each
batch of the clean subset (``epochs`` passes, no augmentation, both networks in eval mode as in the
reference code's default):

1. Shared adversarial examples: PGD on a per-image perturbation, L-inf ``eps`` 0.2, ``steps`` 5 of size
   ``step`` 0.2 from the corner +eps, minimising beta1 * L_adv + beta2 * L_share, where L_adv is minus the
   cross-entropy of both networks on the images not yet adversarial for them (beta1 0.01) and L_share the
   Jensen-Shannon divergence of their predictions on the images that are not yet a shared adversarial
   example (same wrong label for both; beta2 1); it stops early once every image is shared.
2. Unlearning: one Adam step (lr 1e-4) on lambda1 * CE(h(x), y) + lambda2 * CE(h(x + p), y)
   + lambda3 * L_sar, lambdas (1, 0, 1); L_sar = -log(1 - h(x + p)_a) summed over the images where h0 is fooled
   (a = h0's adversarial label, a != y, a != h0(x)) and divided by the batch size. As in the reference code
   it is the mean of two numerically different forms, log(sum of the other classes' probabilities) and
   log(1 - p_a), with p_a clamped to [0.001, 0.999].

Deviation: x + p is clamped to [0, 1] (the reference code leaves it unclamped and says the clamp is optional).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dormant.defenses import DEFENSES
from dormant.defenses.base import Defense
from dormant.defenses.loop import batches, frozen_copy
from dormant.progress import Heartbeat
from dormant.runtime import autocast

SAU_DEFAULTS = {"epochs": 20, "batch_size": 128, "lr": 1e-4, "eps": 0.2, "step": 0.2, "steps": 5, "beta1": 0.01,
                "beta2": 1.0, "lambdas": [1.0, 0.0, 1.0]}


def js_divergence(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Per-sample Jensen-Shannon divergence of two softmax distributions (probabilities clamped at 1e-8)."""
    p, q = F.softmax(logits_a, 1).clamp_min(1e-8), F.softmax(logits_b, 1).clamp_min(1e-8)
    m = 0.5 * (p + q)
    return 0.5 * (p * (p.log() - m.log())).sum(1) + 0.5 * (q * (q.log() - m.log())).sum(1)


def shared_pgd(model, ref, x, y, cfg: dict, own_ref: torch.Tensor | None = None) -> torch.Tensor:
    """Step 1: a shared adversarial perturbation per image (detached). ``own_ref``: the frozen reference's
    labels of ``x``, if the caller has them already."""
    device = x.device
    with torch.no_grad(), autocast(device, fp16=True):
        own = model(x).argmax(1)
        if own_ref is None:
            own_ref = ref(x).argmax(1)
    pert = torch.full_like(x, cfg["eps"])  # the reference code's "max" start
    n = len(x)
    for _ in range(cfg["steps"]):
        pert.requires_grad_(True)
        xa = (x + pert).clamp(0, 1)
        with autocast(device):
            la, lr_ = model(xa).float(), ref(xa).float()
        pa, pr = la.argmax(1), lr_.argmax(1)
        fooled, fooled_ref = pa != own, pr != own_ref
        shared = fooled & fooled_ref & (pa == pr)
        adv = -(F.cross_entropy(la, y, reduction="none")[~fooled].sum()
                + F.cross_entropy(lr_, y, reduction="none")[~fooled_ref].sum()) / (2 * n)
        share = js_divergence(la, lr_)[~shared].sum() / n
        (grad,) = torch.autograd.grad(cfg["beta1"] * adv + cfg["beta2"] * share, pert)
        pert = (pert.detach() - cfg["step"] * grad.sign()).clamp(-cfg["eps"], cfg["eps"])
        if bool(shared.all()):
            break
    return pert.detach()


def sau_loss(model, ref, x, y, pert, lambdas, own_ref: torch.Tensor) -> torch.Tensor:
    """Step 2's objective for one batch (``own_ref``: the frozen reference's labels of ``x``)."""
    device = x.device
    xa = (x + pert).clamp(0, 1)
    with autocast(device):
        logits, adv_logits = model(torch.cat([x, xa])).float().split(len(x))
    with torch.no_grad(), autocast(device, fp16=True):
        adv_ref = ref(xa).argmax(1)
    loss_cl = F.cross_entropy(logits, y)
    loss_at = F.cross_entropy(adv_logits, y)
    fooled_ref = (adv_ref != y) & (adv_ref != own_ref)
    if fooled_ref.any():
        p_a = F.softmax(adv_logits, 1).gather(1, adv_ref[:, None]).squeeze(1)[fooled_ref]
        neg, pos = (1 - p_a).clamp(max=0.999), p_a.clamp(min=0.001)
        loss_sar = -(torch.log(1e-6 + neg).sum() + torch.log(1 + 1e-6 - pos).sum()) / 2 / len(x)
    else:
        loss_sar = torch.zeros((), device=device)
    return lambdas[0] * loss_cl + lambdas[1] * loss_at + lambdas[2] * loss_sar


@DEFENSES.register("sau")
class SharedAdversarialUnlearning(Defense):
    defaults = SAU_DEFAULTS

    def run(self, model, clean, *, seed, checkpoint=None, monitor=None, audit=None):
        cfg = dict(self.cfg)
        ref = frozen_copy(model)
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
        was_training = model.training
        model.eval()
        history = []
        hb = Heartbeat("sau", total=cfg["epochs"] * len(clean), unit="img")
        for epoch in tqdm(range(cfg["epochs"]), desc="sau", disable=None, mininterval=30):
            total, n = 0.0, 0
            for x, y in batches(clean, cfg["batch_size"], g):
                with torch.no_grad(), autocast(x.device, fp16=True):
                    own_ref = ref(x).argmax(1)  # the reference is frozen: once per batch serves both steps
                pert = shared_pgd(model, ref, x, y, cfg, own_ref)
                loss = sau_loss(model, ref, x, y, pert, cfg["lambdas"], own_ref)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(x)
                n += len(x)
                hb.update(len(x), epoch=f"{epoch + 1}/{cfg['epochs']}", loss=total / n)
            rec = {"epoch": epoch + 1, "loss": total / n}
            if monitor is not None:
                rec.update(monitor(model))
            history.append(rec)
            hb.fields.update({k: v for k, v in rec.items() if k != "epoch"})
        hb.close()
        model.train(was_training)
        return model, {"history": history, "changed": True}
