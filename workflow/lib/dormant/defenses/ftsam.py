"""FT-SAM: fine-tuning with adaptive sharpness-aware minimisation (Zhu et al., ICCV 2023, "Enhancing
Fine-Tuning Based Backdoor Defense with Sharpness-Aware Minimization"; docs/methods.md section 5).

Each step takes the gradient g at w, moves to w + e with the adaptive (ASAM, Kwon et al. 2021) ascent
e = rho * T^2 g / ||T g||, T = |w| elementwise, takes the gradient there, moves back to w and lets SGD
step with that gradient. rho 2.0 and label smoothing 0.1 by default; the rest is FT's fine-tuning on the
clean subset (epochs, lr, schedule, augmentation from params).
"""

from __future__ import annotations

import torch

from dormant import training
from dormant.defenses import DEFENSES
from dormant.defenses.base import Defense

FTSAM_DEFAULTS = {"rho": 2.0, "label_smoothing": 0.1}


def asam_perturbation(model: torch.nn.Module, rho: float):
    """Moves every parameter with a gradient to w + e (adaptive SAM); returns the function undoing it."""
    params = [p for p in model.parameters() if p.grad is not None]
    with torch.no_grad():
        scaled = [p.abs() * p.grad for p in params]  # T g
        norm = torch.norm(torch.stack([s.norm(2) for s in scaled]), 2) + 1e-12
        steps = [rho * p.abs() * s / norm for p, s in zip(params, scaled)]  # rho T (T g) / ||T g||
        for p, e in zip(params, steps):
            p.add_(e)

    def restore():
        with torch.no_grad():
            for p, e in zip(params, steps):
                p.sub_(e)

    return restore


@DEFENSES.register("ftsam")
class SharpnessAwareFineTuning(Defense):
    defaults = training.defaults(**FTSAM_DEFAULTS)

    def run(self, model, clean, *, seed, checkpoint=None, monitor=None, audit=None):
        cfg = dict(self.cfg)
        train_cfg = {k: v for k, v in cfg.items() if k in training.DEFAULTS}
        history = training.train(model, clean, train_cfg, seed=seed, checkpoint=checkpoint, desc="ft-sam",
                                 sharpness=lambda m: asam_perturbation(m, cfg["rho"]))
        return model, {"history": history, "changed": True, "rho": cfg["rho"]}
