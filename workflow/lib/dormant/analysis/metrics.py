"""Metrics of docs/methods.md section 3, in percent.

* C-ACC: top-1 accuracy on the clean test set.
* ASR:   share of the poisoned test set (non-target-class images with the trigger) predicted as t.
* RA:    share of the same poisoned images predicted as their true label.
* DER:   (max(0, ASR_A - ASR_D) - max(0, ACC_A - ACC_D) + 1) / 2, computed on fractions and
         reported in percent. (One BackdoorBench function flips the sign of the accuracy term;
         this is the published form.)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from dormant.data.augment import to_float
from dormant.runtime import exact


def percent(mask: torch.Tensor) -> float:
    return 100.0 * mask.float().mean().item() if mask.numel() else float("nan")


def clean_accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return percent(pred == y)


def attack_success_rate(pred_poisoned: torch.Tensor, target: int) -> float:
    return percent(pred_poisoned == target)


def robust_accuracy(pred_poisoned: torch.Tensor, y_true: torch.Tensor) -> float:
    return percent(pred_poisoned == y_true)


def defense_effectiveness_rate(acc_a: float, asr_a: float, acc_d: float, asr_d: float) -> float:
    """DER in percent from percentages (50 = no change, 100 = ASR removed at no accuracy cost)."""
    if any(math.isnan(v) for v in (acc_a, asr_a, acc_d, asr_d)):
        return float("nan")
    d_asr = max(0.0, asr_a - asr_d) / 100.0
    d_acc = max(0.0, acc_a - acc_d) / 100.0
    return 100.0 * (d_asr - d_acc + 1.0) / 2.0


@torch.no_grad()
def predict(model: torch.nn.Module, x_uint8: torch.Tensor, transform: Callable | None = None,
            batch_size: int = 1000, device=None) -> torch.Tensor:
    """Top-1 predictions for uint8 images; ``transform`` maps a [0, 1] float batch (e.g. a trigger). In fp32
    (:func:`dormant.runtime.exact`): these predictions are the reported C-ACC, ASR and RA."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    preds = []
    for i in range(0, len(x_uint8), batch_size):
        xb = to_float(x_uint8[i : i + batch_size].to(device))
        if transform is not None:
            xb = transform(xb).clamp(0, 1)
        with exact(device):
            preds.append(model(xb).argmax(1))
    model.train(was_training)
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long, device=device)


def poisoned_test_index(y: torch.Tensor, target: int) -> torch.Tensor:
    """Indices of the test images that make up the poisoned test set: every image whose label != t."""
    return torch.nonzero(y != target).flatten()


def evaluate(model: torch.nn.Module, test, attack=None, extra_transform: Callable | None = None) -> dict:
    """C-ACC, and with an attack ASR and RA, for a model on an :class:`ImageSet` (percent).

    ``extra_transform`` is applied after the trigger (e.g. a re-activation perturbation).
    """
    out = {"c_acc": clean_accuracy(predict(model, test.x), test.y)}
    if attack is not None:
        idx = poisoned_test_index(test.y, attack.target)

        def trig(x):
            x = attack.apply(x)
            return extra_transform(x) if extra_transform is not None else x

        pred = predict(model, test.x[idx], trig)
        out["asr"] = attack_success_rate(pred, attack.target)
        out["ra"] = robust_accuracy(pred, test.y[idx])
    return out
