"""Is the re-activated backdoor the original one? (docs/methods.md section 7; Zhu, Liang & Wu 2024, section 4.3)

Two of the paper's three analyses, per defended model f_D, with the white-box deltas of the
``reactivate`` stage (the third, RA vs gUAA at 1k/3k/5k/7k queries, comes from the query stage):

(a) Feature similarity. Reference: the backdoored model's penultimate features on triggered test
    images, f_A(x~). Linear CKA of that reference with f_D under the trigger alone f_D(x~), under
    re-activation f_D(x~ + delta_RA), and under the gUAA baseline f_D(x + delta_gUAA). Re-activation
    restoring the old backdoor means RA's CKA is high; a generic adversarial direction gives gUAA's
    low.
(b) Robustness to random noise. ASR when uniform noise in [-r, r] (one draw per pixel, seeded) is
    added on top of: the original trigger on f_A, re-activation on f_D, gUAA on f_D. A backdoor
    survives such noise, a brittle adversarial perturbation does not.
"""

from __future__ import annotations

import torch

from dormant.analysis.cka import linear_cka
from dormant.data.augment import to_float
from dormant.nets.probe import penultimate_features
from dormant.reactivation.delta import attack_images


def _sample(test, target: int, n: int, seed: int) -> torch.Tensor:
    """n non-target test images drawn from ``seed`` (the same draw as the attacker's optimisation set)."""
    return attack_images(test, target, n, seed).to(test.x.device)


def views(x: torch.Tensor, attack, deltas: dict) -> dict:
    """The three inputs compared: triggered, triggered + RA delta, clean + gUAA delta (all clamped)."""
    trig = attack.apply(x).clamp(0, 1)
    return {"trigger": trig,
            "reactivated": (trig + deltas["delta_reactivated"]).clamp(0, 1),
            "guaa": (x + deltas["delta_guaa"]).clamp(0, 1)}


def feature_similarity(backdoored, model, test, attack, deltas: dict, *, n_images: int, seed: int) -> dict:
    """Linear CKA between f_A(x~) and f_D under the trigger, re-activation and gUAA."""
    idx = _sample(test, attack.target, n_images, seed)
    x = to_float(test.x[idx])
    ref = penultimate_features(backdoored, attack.apply(x).clamp(0, 1))
    return {name: linear_cka(ref, penultimate_features(model, v)) for name, v in views(x, attack, deltas).items()}


@torch.no_grad()
def noise_robustness(backdoored, model, test, attack, deltas: dict, *, levels, n_images: int, seed: int,
                     batch_size: int = 500) -> dict:
    """ASR (percent) of trigger on f_A, RA and gUAA on f_D, with uniform noise of each L-inf level added."""
    idx = _sample(test, attack.target, n_images, seed)
    out = {}
    for level in [0.0, *levels]:
        g = torch.Generator().manual_seed(seed)
        hits = {"trigger": 0, "reactivated": 0, "guaa": 0}
        for i in range(0, len(idx), batch_size):
            x = to_float(test.x[idx[i : i + batch_size]])
            noise = ((torch.rand(x.shape, generator=g) * 2 - 1) * level).to(x.device)
            v = views(x, attack, deltas)
            for name, net in (("trigger", backdoored), ("reactivated", model), ("guaa", model)):
                pred = net.eval()((v[name] + noise).clamp(0, 1)).argmax(1)
                hits[name] += int((pred == attack.target).sum())
        out[f"{level:g}"] = {k: 100.0 * h / len(idx) for k, h in hits.items()}
    return out
