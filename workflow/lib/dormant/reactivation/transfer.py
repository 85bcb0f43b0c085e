"""Transfer-based black-box re-activation (TRA; docs/methods.md section 7; Zhu, Liang & Wu 2024, section 5.3).

The attacker never touches the target defended models while optimising. It applies defenses of its
own choosing to its own backdoored model (or, cross-architecture, to a backdoored model of another
architecture trained on the same poisoned data), and optimises one universal delta against the sum
of the surrogates' cross-entropy to the target class on poisoned training images:

  min_delta  sum_k mean_i CE(f_k(Pi(x~_i + delta)), t)

by projected SGD (lr 0.05, batch 500, up to 5,000 images), plain and with heavy-ball momentum.
The pipeline then evaluates the delta on the target defended models (a separate stage, so the
separation is enforced by the workflow graph: the optimising job has no target model as input).

Deviation from the reference script: its projection step crashes; here delta is projected onto the
intended budget (L-inf or L2 ball of radius rho) after every step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dormant.analysis.metrics import attack_success_rate, poisoned_test_index, predict
from dormant.reactivation.delta import attack_images, frozen, optimise_delta
from dormant.runtime import autocast

VARIANTS = ("plain", "momentum")


def surrogate_loss(surrogates, target: int):
    """Sum over surrogates of the mean CE to the target class."""
    def objective(x):
        tgt = torch.full((len(x),), target, device=x.device, dtype=torch.long)
        total = 0.0
        for m in surrogates:
            with autocast(x.device):
                logits = m(x)
            total = total + F.cross_entropy(logits.float(), tgt)
        return total
    return objective


def optimise_transfer(surrogates, train, attack, cfg: dict, seed: int) -> tuple[dict, dict]:
    """Plain and momentum deltas against the summed surrogate loss; surrogate ASRs of each."""
    if not surrogates:
        raise ValueError("transfer needs at least one surrogate model")
    target = attack.target
    device = next(surrogates[0].parameters()).device
    idx = attack_images(train, target, cfg["n_images"], seed)
    x_opt = train.x[idx.to(train.x.device)]
    deltas, info = {}, {"n_images": len(idx), "budget": {"norm": cfg["norm"], "eps": cfg["eps"]}}
    with frozen(*surrogates):
        for variant in VARIANTS:
            delta, losses = optimise_delta(
                surrogate_loss(surrogates, target), x_opt, device=device, transform=attack.apply, norm=cfg["norm"],
                eps=cfg["eps"], lr=cfg["lr"], epochs=cfg["epochs"], steps=1, batch_size=cfg["batch_size"],
                momentum=cfg["momentum"] if variant == "momentum" else 0.0, seed=seed, desc=f"TRA-{variant}")
            deltas[f"delta_{variant}"] = delta.contiguous()
            info[variant] = {"loss": losses, "linf": float(delta.abs().max()), "l2": float(delta.norm())}
    return info, deltas


def evaluate_transfer(model, test, attack, deltas: dict) -> dict:
    """ASR on the target model of the poisoned test set with each transferred delta added."""
    target = attack.target
    x = test.x[poisoned_test_index(test.y, target).to(test.x.device)]
    out = {}
    for name, d in deltas.items():
        d = d.to(x.device)
        out[name.removeprefix("delta_")] = attack_success_rate(
            predict(model, x, lambda b, d=d: (attack.apply(b) + d).clamp(0, 1)), target)
    return out
