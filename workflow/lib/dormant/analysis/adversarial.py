"""Untargeted PGD adversarial examples and adversarial fine-tuning (Mu et al., CVPR 2023, sections 3-4;
docs/methods.md section 8).

PGD runs with the model in eval mode (batch-norm statistics frozen, as in the reference code) and restores
the model's mode afterwards. Perturbations live in [0, 1] pixel space: ``eps`` 6/255, ``step`` 1.2/255 and
7 steps are the paper's settings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dormant.runtime import autocast

PGD_DEFAULTS = {"eps": 6 / 255, "step": 1.2 / 255, "steps": 7, "random_start": True}



def pgd_untargeted(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step: float,
                   steps: int, generator: torch.Generator | None = None, random_start: bool = True) -> torch.Tensor:
    """Untargeted L-inf PGD: ``steps`` signed-gradient ascent steps of size ``step`` on the cross-entropy of
    the labels ``y``, each followed by projection onto the ``eps`` ball around ``x`` and onto [0, 1].
    ``x`` is a float batch in [0, 1]; returns the adversarial batch (no gradient attached)."""
    was_training = model.training
    model.eval()
    x = x.detach()
    if random_start and eps > 0:
        noise = torch.rand(x.shape, generator=generator).to(x.device) * 2 - 1
        adv = (x + eps * noise).clamp(0, 1)
    else:
        adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        with autocast(x.device):
            loss = F.cross_entropy(model(adv).float(), y)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + step * grad.sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
    model.train(was_training)
    return adv.detach()



def pgd_transform(cfg: dict):
    """A ``batch_transform`` for :func:`dormant.training.train`: replaces each training batch by its PGD
    adversarial examples (adversarial fine-tuning with the batch's own labels)."""
    c = {**PGD_DEFAULTS, **{k: cfg[k] for k in PGD_DEFAULTS if k in cfg}}

    def transform(model, x, y, generator):
        return pgd_untargeted(model, x, y, eps=c["eps"], step=c["step"], steps=c["steps"], generator=generator,
                              random_start=c["random_start"])

    return transform
