"""White-box re-activation and the gUAA baseline (docs/methods.md section 7; Zhu, Liang & Wu 2024, section 4).

Both optimise one universal perturbation delta, added in [0, 1] pixel space and clamped (Pi):

  min_delta  mean_i [ CE(f_D(Pi(x_i + delta)), t) + (-log(1.0001 - p_y'(Pi(x_i + delta)))) ]

with y' the most probable non-target class, uniform init in the budget, plain SGD on delta
(lr 0.05, ``epochs`` x ``steps`` per batch), projection onto the budget after every step.
Re-activation (RA) uses poisoned training images x~ (trigger applied); gUAA uses the same images
clean, without the trigger -- a generic universal adversarial perturbation.
"""

from __future__ import annotations

import torch

from dormant.analysis.metrics import attack_success_rate, poisoned_test_index, predict
from dormant.reactivation.delta import attack_images, frozen, optimise_delta, reactivation_loss
from dormant.runtime import autocast


def optimise_universal(model, x_uint8: torch.Tensor, target: int, *, transform=None, norm="linf", eps=0.05,
                       lr=0.05, epochs=50, steps=5, batch_size=128, seed=0,
                       desc="reactivate") -> tuple[torch.Tensor, list]:
    """One universal delta for images ``x_uint8`` (optionally triggered by ``transform``); returns (delta, losses)."""
    device = next(model.parameters()).device

    def objective(x):
        with autocast(device):
            logits = model(x)
        return reactivation_loss(logits.float(), target)

    with frozen(model):
        return optimise_delta(objective, x_uint8, device=device, transform=transform, norm=norm, eps=eps, lr=lr,
                              epochs=epochs, steps=steps, batch_size=batch_size, seed=seed, desc=desc)



def run_reactivation(model, train, test, attack, cfg: dict, seed: int) -> dict:
    """White-box RA and gUAA for one defended model; ASR measured on the whole poisoned / clean non-target test set."""
    target = attack.target
    idx = attack_images(train, target, cfg["n_images"], seed)
    x_opt = train.x[idx.to(train.x.device)]
    common = dict(norm=cfg["norm"], eps=cfg["eps"], lr=cfg["lr"], epochs=cfg["epochs"], steps=cfg["steps"],
                  batch_size=cfg["batch_size"], seed=seed)
    tidx = poisoned_test_index(test.y, target)
    x_test = test.x[tidx]
    out = {"n_images": len(idx), "budget": {"norm": cfg["norm"], "eps": cfg["eps"]}}
    out["asr_trigger"] = attack_success_rate(predict(model, x_test, attack.apply), target)
    delta_ra, loss_ra = optimise_universal(model, x_opt, target, transform=attack.apply, desc="RA", **common)
    out["asr_reactivated"] = attack_success_rate(
        predict(model, x_test, lambda x: (attack.apply(x) + delta_ra).clamp(0, 1)), target)
    out["loss_reactivated"] = loss_ra
    # the re-activation delta without the trigger: if it alone reached the target it would be an adversarial
    # perturbation, not a key to the backdoor
    out["asr_delta_only"] = attack_success_rate(predict(model, x_test, lambda x: (x + delta_ra).clamp(0, 1)), target)
    out["asr_clean"] = attack_success_rate(predict(model, x_test), target)
    delta_g, loss_g = optimise_universal(model, x_opt, target, transform=None, desc="gUAA", **common)
    out["asr_guaa"] = attack_success_rate(predict(model, x_test, lambda x: (x + delta_g).clamp(0, 1)), target)
    out["loss_guaa"] = loss_g
    out["delta_norms"] = {name: {"linf": d.abs().max().item(), "l2": d.norm().item()}
                          for name, d in (("reactivated", delta_ra), ("guaa", delta_g))}
    return out, {"delta_reactivated": delta_ra, "delta_guaa": delta_g}
