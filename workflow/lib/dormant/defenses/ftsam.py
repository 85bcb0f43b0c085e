"""FT-SAM: fine-tuning with adaptive sharpness-aware minimisation (Zhu et al., ICCV 2023, "Enhancing
Fine-Tuning Based Backdoor Defense with Sharpness-Aware Minimization"; docs/methods.md section 5.7).

Each step takes the gradient g at w, moves to w + e with the adaptive ascent of ASAM (Kwon et al., ICML
2021, eq. 9 and their reference code)

    e = rho * T_w^2 g / ||T_w g||,   T_w = |w| + eta  for weight tensors,  T_w = 1  for biases,

takes the gradient there, moves back to w and lets SGD step with that gradient. The norm runs over all
parameters together. rho 2.0, eta 0.01 and label smoothing 0.1 by default; the rest is FT's fine-tuning on
the clean subset (epochs, lr, schedule, augmentation from params).
"""

from __future__ import annotations

import torch

from dormant import training
from dormant.defenses import DEFENSES
from dormant.defenses.base import Defense

FTSAM_DEFAULTS = {"rho": 2.0, "eta": 0.01, "label_smoothing": 0.1}


def asam_scale(name: str, p: torch.Tensor, eta: float) -> torch.Tensor | float:
    """ASAM's normalisation operator T_w for one parameter: |w| + eta for weights (every parameter named
    ``weight``, batch-norm scales included, as in ASAM's code), 1 for biases and anything else."""
    return p.abs() + eta if name.rsplit(".", 1)[-1] == "weight" else 1.0


def asam_perturbation(model: torch.nn.Module, rho: float, eta: float = 0.01):
    """Moves every parameter with a gradient to w + e (adaptive SAM); returns the function undoing it."""
    named = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
    params = [p for _, p in named]
    with torch.no_grad():
        scales = [asam_scale(n, p, eta) for n, p in named]
        scaled = [t * p.grad for t, p in zip(scales, params)]  # T g
        norm = torch.norm(torch.stack([s.norm(2) for s in scaled]), 2) + 1e-12
        steps = [rho * t * s / norm for t, s in zip(scales, scaled)]  # rho T (T g) / ||T g||
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
                                 sharpness=lambda m: asam_perturbation(m, cfg["rho"], cfg["eta"]))
        return model, {"history": history, "changed": True, "rho": cfg["rho"], "eta": cfg["eta"]}
