"""NAD: neural attention distillation (Li et al., ICLR 2021; docs/methods.md section 5).

1. Teacher: a copy of the backdoored model fine-tuned on the clean subset (``teacher_epochs``, 10).
2. Student: the backdoored model trained on the clean subset (``epochs``, 10) with cross-entropy plus
   attention-transfer losses between student and teacher feature maps,
   sum_j beta_j * || a(F_s^j) - a(F_t^j) ||_2^2 (mean over the batch), a(F) = normalise(mean_c |F_c|^p),
   p = 2.

Layers: the outputs of the last stages, found by :func:`dormant.nets.probe.attention_points` (layer3 and
layer4 of a ResNet), with betas 500 and 1000 (``betas``, deepest last). Deviation: docs/methods.md also lists a
"pooled" term (beta 1000); after global pooling each image has a single value per channel, and NAD's
attention map of it is one number normalised to 1, a constant, so that term is always 0 and is left out.
The betas suit 32x32 inputs (8x8 and 4x4 maps); the per-element loss grows as maps shrink, so smaller
inputs want smaller betas (the tests use a tenth on 16x16 images).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from dormant import training
from dormant.defenses import DEFENSES
from dormant.defenses.base import Defense
from dormant.nets.probe import attention_points

NAD_DEFAULTS = {"teacher_epochs": 10, "epochs": 10, "lr": 0.01, "batch_size": 128, "betas": [500.0, 1000.0],
                "p": 2.0}


def attention_map(f: torch.Tensor, p: float) -> torch.Tensor:
    """NAD / attention transfer: channel mean of |F|^p, flattened and L2-normalised per image."""
    return F.normalize(f.float().abs().pow(p).mean(1).flatten(1), dim=1)


class _Inputs:
    """Captures the inputs of the named modules during each forward pass."""

    def __init__(self, model, names):
        self.store, self.handles = {}, []
        for n in names:
            def pre(_m, inp, n=n):
                self.store[n] = inp[0]
            self.handles.append(model.get_submodule(n).register_forward_pre_hook(pre))

    def close(self):
        for h in self.handles:
            h.remove()


@DEFENSES.register("nad")
class NeuralAttentionDistillation(Defense):
    defaults = training.defaults(without=("label_smoothing",), **NAD_DEFAULTS)

    def run(self, model, clean, *, seed, checkpoint=None, monitor=None, audit=None):
        cfg = dict(self.cfg)
        train_cfg = {k: v for k, v in cfg.items() if k in training.DEFAULTS}
        teacher = copy.deepcopy(model)
        t_hist = training.train(teacher, clean, {**train_cfg, "epochs": cfg["teacher_epochs"]}, seed=seed,
                                checkpoint=f"{checkpoint}.teacher" if checkpoint else None, desc="nad-teacher")
        teacher.eval()
        for q in teacher.parameters():
            q.requires_grad_(False)
        shape = tuple(clean.x.shape[1:])
        points = attention_points(model, shape, n=len(cfg["betas"]))
        s_in, t_in = _Inputs(model, points), _Inputs(teacher, points)

        def at_loss(student, logits, x, y):
            with torch.no_grad():
                teacher(x)
            return sum(beta * (attention_map(s_in.store[n], cfg["p"]) - attention_map(t_in.store[n], cfg["p"]))
                       .pow(2).mean() for n, beta in zip(points, cfg["betas"]))

        try:
            history = training.train(model, clean, train_cfg, seed=seed, checkpoint=checkpoint, extra_loss=at_loss,
                                     desc="nad")
        finally:
            s_in.close()
            t_in.close()
        return model, {"history": history, "teacher_history": t_hist, "changed": True, "layers": points}
