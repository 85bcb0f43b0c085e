"""FST: feature shift tuning (Min et al., NeurIPS 2023, "Towards Stable Backdoor Purification through
Feature Shift Tuning"; docs/methods.md section 5).

The classifier head is re-initialised (seeded) and rescaled to the old head's norm; the whole model is then
fine-tuned on the clean subset with CE + alpha * <w, w_orig> (alpha 0.2), which pushes the new head away
from the backdoored one, and after every step the head is projected back to the original norm.
"""

from __future__ import annotations

import torch

from dormant import training
from dormant.defenses import DEFENSES
from dormant.defenses.base import Defense
from dormant.nets.probe import head

FST_DEFAULTS = {"alpha": 0.2}


@DEFENSES.register("fst")
class FeatureShiftTuning(Defense):
    defaults = training.defaults(**FST_DEFAULTS)

    def run(self, model, clean, *, seed, checkpoint=None, monitor=None, audit=None):
        cfg = dict(self.cfg)
        linear = head(model)
        w_orig = linear.weight.detach().clone()
        norm0 = w_orig.norm()
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed)
            bound = 1.0 / linear.in_features ** 0.5  # nn.Linear's default init range
            fresh = (torch.rand(linear.weight.shape, generator=g) * 2 - 1) * bound
            linear.weight.copy_(fresh.to(linear.weight.device) * (norm0 / fresh.norm()))
            linear.bias.copy_(((torch.rand(linear.bias.shape, generator=g) * 2 - 1) * bound).to(linear.bias.device))

        def shift(model, logits, x, y):
            return cfg["alpha"] * (linear.weight * w_orig).sum()

        def project(model):
            with torch.no_grad():
                linear.weight.mul_(norm0 / linear.weight.norm())

        train_cfg = {k: v for k, v in cfg.items() if k in training.DEFAULTS}
        history = training.train(model, clean, train_cfg, seed=seed, checkpoint=checkpoint, extra_loss=shift,
                                 after_step=project, desc="fst")
        return model, {"history": history, "changed": True, "alpha": cfg["alpha"],
                       "head_cosine_to_original": float(torch.nn.functional.cosine_similarity(
                           linear.weight.detach().flatten(), w_orig.flatten(), dim=0))}
