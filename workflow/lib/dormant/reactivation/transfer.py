"""Transfer-based black-box re-activation (TRA; docs/methods.md section 7.4; Zhu, Liang & Wu 2024, section 5.3).

The attacker never touches the target defended models while optimising. It applies defenses of its
own choosing to its own backdoored model (or, cross-architecture, to a backdoored model of another
architecture trained on the same poisoned data), and optimises one universal delta against the
surrogates' cross-entropy to the target class on poisoned training images, by projected SGD (lr 0.05,
batch 500, up to 5,000 images), in up to three variants (``transfer.variants``):

* ``plain``: one SGD step per batch on the summed loss  sum_k mean_i CE(f_k(Pi(x~_i + delta)), t)
  (the reference script's ``avg`` mode);
* ``momentum``: the same with heavy-ball momentum on the raw gradient, v <- mu v + g (this project's);
* ``mom``: the reference script's momentum mode: within each batch one step per surrogate k in turn, on
  the L2-normalised gradient of that surrogate's loss alone, with one momentum buffer shared by all
  surrogates, batches and epochs:  v <- mu v + g_k / ||g_k||_2;  delta <- proj(delta - lr v).

The pipeline then evaluates each delta on the target defended models (a separate stage, so the
separation is enforced by the workflow graph: the optimising job has no target model as input).

Deviation from the reference script: its projection step crashes; here delta is projected onto the
intended budget (L-inf or L2 ball of radius rho) after every step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dormant.analysis.metrics import attack_success_rate, poisoned_test_index, predict
from dormant.data.augment import to_float
from dormant.errors import ConfigError
from dormant.progress import Heartbeat, read_later
from dormant.reactivation.delta import attack_images, frozen, optimise_delta, project, random_init
from dormant.runtime import autocast

VARIANTS = ("plain", "momentum", "mom")


def _ce(model, x, target: int):
    tgt = torch.full((len(x),), target, device=x.device, dtype=torch.long)
    with autocast(x.device):
        logits = model(x)
    return F.cross_entropy(logits.float(), tgt)


def surrogate_loss(surrogates, target: int):
    """Sum over surrogates of the mean CE to the target class."""
    def objective(x):
        total = 0.0
        for m in surrogates:
            total = total + _ce(m, x, target)
        return total
    return objective


def optimise_mom(surrogates, x_uint8: torch.Tensor, target: int, *, device, transform=None, norm="linf", eps=0.05,
                 lr=0.05, epochs=100, batch_size=500, momentum=0.9, seed=0,
                 desc="TRA-mom") -> tuple[torch.Tensor, list]:
    """The reference ``mom`` variant: per batch, one projected step per surrogate on its own L2-normalised
    gradient, v <- mu v + g_k / ||g_k||_2, delta <- proj(delta - lr v); v is never reset. Same random start,
    shuffles and batches as :func:`dormant.reactivation.delta.optimise_delta` for the same seed."""
    g = torch.Generator().manual_seed(seed)
    delta = random_init(tuple(x_uint8.shape[1:]), norm, eps, g).to(device)
    velocity = torch.zeros_like(delta)
    n = len(x_uint8)
    n_batches = math.ceil(n / batch_size)
    losses = []
    hb = Heartbeat(desc, total=epochs * n, unit="img")
    for e in tqdm(range(epochs), desc=desc, disable=None, mininterval=30):
        perm = torch.randperm(n, generator=g)
        tot = 0.0
        for s in range(n_batches):
            xb = to_float(x_uint8[perm[s * batch_size : (s + 1) * batch_size].to(x_uint8.device)].to(device))
            if transform is not None:
                xb = transform(xb)
            for m in surrogates:
                d = delta.clone().requires_grad_(True)
                loss = _ce(m, (xb + d).clamp(0, 1), target)
                (grad,) = torch.autograd.grad(loss, d)
                velocity = momentum * velocity + grad / grad.norm(p=2).clamp_min(1e-12)
                delta = project(delta - lr * velocity, norm, eps)
                tot += loss.item()
            hb.update(len(xb), epoch=f"{e + 1}/{epochs}", loss=read_later(loss))
        losses.append(tot / n_batches)  # summed over surrogates, like the other variants' objective
    hb.close()
    return delta.detach(), losses


def check_variants(variants) -> list[str]:
    variants = list(variants)
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants or len(set(variants)) != len(variants):
        raise ConfigError(f"transfer.variants: {variants} must be distinct entries of {', '.join(VARIANTS)}")
    return variants


def optimise_transfer(surrogates, train, attack, cfg: dict, seed: int) -> tuple[dict, dict]:
    """One delta per variant of ``cfg["variants"]`` (default: all) against the surrogates; losses and norms."""
    if not surrogates:
        raise ValueError("transfer needs at least one surrogate model")
    variants = check_variants(cfg.get("variants", VARIANTS))
    target = attack.target
    device = next(surrogates[0].parameters()).device
    idx = attack_images(train, target, cfg["n_images"], seed)
    x_opt = train.x[idx.to(train.x.device)]
    deltas, info = {}, {"n_images": len(idx), "budget": {"norm": cfg["norm"], "eps": cfg["eps"]}, "variants": variants}
    common = dict(device=device, transform=attack.apply, norm=cfg["norm"], eps=cfg["eps"], lr=cfg["lr"],
                  epochs=cfg["epochs"], batch_size=cfg["batch_size"], seed=seed, desc=None)
    with frozen(*surrogates):
        for variant in variants:
            common["desc"] = f"TRA-{variant}"
            if variant == "mom":
                delta, losses = optimise_mom(surrogates, x_opt, target, momentum=cfg["momentum"], **common)
            else:
                delta, losses = optimise_delta(surrogate_loss(surrogates, target), x_opt, steps=1,
                                               momentum=cfg["momentum"] if variant == "momentum" else 0.0, **common)
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
