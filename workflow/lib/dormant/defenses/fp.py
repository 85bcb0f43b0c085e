"""FP: fine-pruning (Liu, Dolan-Gavitt & Garg, RAID 2018; docs/methods.md section 5).

1. Rank the channels of the last feature map (the inputs of the classifier after global pooling, found by
   :func:`dormant.nets.probe.head`) by their mean activation on the fit part of the clean subset.
2. Prune the most dormant ones, ``step`` (1%) of the channels at a time, while the accuracy on the held-out
   part of the clean subset stays within ``max_acc_drop`` percentage points of the unpruned model's
   (the benchmark's 10%). Deviation from BackdoorBench: the level is chosen on the held-out split, never on
   test data (docs/methods.md section 5).
3. Fine-tune the pruned model on the fit part (``epochs``; 0 = prune only). Pruning zeroes the channel's
   classifier columns, which after global average pooling is exactly removing the channel; weight decay and
   masked gradients keep them at zero while fine-tuning.
"""

from __future__ import annotations

import math

import torch

from dormant import training
from dormant.data.augment import to_float
from dormant.defenses import DEFENSES
from dormant.defenses.base import Defense
from dormant.defenses.holdout import split_holdout
from dormant.nets.probe import head, penultimate_features

FP_DEFAULTS = {"step": 0.01, "max_acc_drop": 10.0, "holdout": 0.2, "epochs": 10, "lr": 0.01, "batch_size": 128}


def _features(model, data, batch_size=500):
    return penultimate_features(model, to_float(data.x), batch_size)


def prune_order(model, fit) -> torch.Tensor:
    """Channels ordered from the least to the most active on clean data."""
    return _features(model, fit).mean(0).argsort(stable=True)


@DEFENSES.register("fp")
class FinePruning(Defense):
    defaults = training.defaults(without=("label_smoothing",), **FP_DEFAULTS)

    def run(self, model, clean, *, seed, checkpoint=None, monitor=None, audit=None):
        cfg = dict(self.cfg)
        fit, held = split_holdout(clean, cfg["holdout"], seed)
        linear = head(model)
        order = prune_order(model, fit)
        feats = _features(model, held)
        w, b = linear.weight.detach().float(), linear.bias.detach().float()

        def held_acc(n_pruned):
            keep = torch.ones(w.shape[1], device=w.device)
            keep[order[:n_pruned]] = 0
            pred = (feats * keep) @ w.t() + b
            return 100.0 * float((pred.argmax(1) == held.y.to(pred.device)).float().mean())

        step = max(1, math.ceil(cfg["step"] * w.shape[1]))
        base, n, curve = held_acc(0), 0, []
        while n + step <= w.shape[1]:
            acc = held_acc(n + step)
            curve.append({"pruned": n + step, "held_out_acc": acc})
            if base - acc >= cfg["max_acc_drop"]:
                break
            n += step
        mask = torch.ones_like(linear.weight)
        mask[:, order[:n]] = 0
        with torch.no_grad():
            linear.weight.mul_(mask)
        hook = linear.weight.register_hook(lambda g: g * mask)
        try:
            history = []
            if cfg["epochs"] > 0:
                train_cfg = {k: v for k, v in cfg.items() if k in training.DEFAULTS}
                history = training.train(model, fit, train_cfg, seed=seed, checkpoint=checkpoint, desc="fp")
        finally:
            hook.remove()
        return model, {"history": history, "changed": True, "pruned_channels": n, "channels": w.shape[1],
                       "held_out_acc_before": base, "held_out_acc_after_pruning": held_acc(n),
                       "prune_curve": curve, "n_fit": len(fit), "n_held_out": len(held)}
