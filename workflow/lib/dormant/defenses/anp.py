"""ANP: adversarial neuron pruning (Wu & Wang, NeurIPS 2021; docs/methods.md section 5).

Every BatchNorm2d channel (found by :func:`dormant.nets.probe.bn_layers`) is a neuron k with output
w_k x^_k + b_k. ANP gives it a mask m_k in [0, 1] and multiplicative perturbations d_k, e_k in [-eps, eps]:
output = (m_k + d_k) w_k x^_k + (1 + e_k) b_k. For ``iterations`` (2,000) batches of the fit part of the
clean subset:

1. the perturbations start uniform in [-eps, eps] and take ``anp_steps`` signed ascent steps of size
   eps / anp_steps on the cross-entropy, clipped to [-eps, eps] (eps 0.4);
2. the masks take one SGD step (lr 0.2, momentum 0.9) on alpha * CE(unperturbed) + (1 - alpha) *
   CE(perturbed), alpha 0.2, and are clipped to [0, 1].

The network's weights are frozen; as in the reference code the mask search runs the network in training
mode (batch statistics) on a copy, so the returned model keeps its running statistics. Neurons with a mask
below the threshold are pruned (w_k = 0, as in the reference code). Deviation from BackdoorBench, which picks
the threshold on the (poisoned) test set: the threshold is the largest value of ``thresholds`` whose
pruning keeps the accuracy on the held-out part of the clean subset within ``max_acc_drop`` points of the
unpruned model's (thresholds are tried in increasing order and the search stops at the first violation);
``max_fraction`` caps the share of neurons pruned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dormant.defenses import DEFENSES
from dormant.defenses.base import Defense
from dormant.defenses.holdout import split_holdout
from dormant.defenses.loop import accuracy, endless_batches, frozen_copy
from dormant.nets.probe import bn_layers
from dormant.progress import Heartbeat, read_later
from dormant.runtime import autocast

ANP_DEFAULTS = {"iterations": 2000, "batch_size": 128, "eps": 0.4, "anp_steps": 1, "alpha": 0.2, "mask_lr": 0.2,
                "thresholds": [round(0.05 * i, 2) for i in range(1, 20)], "max_acc_drop": 10.0,
                "max_fraction": 0.9, "holdout": 0.2}


class NeuronPerturbation:
    """Masks and perturbations of every BN neuron of ``model``, applied by forward hooks."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        self.names, self.handles, self.noisy = names, [], False
        dev = next(model.parameters()).device
        self.mask, self.d, self.e = {}, {}, {}
        for n in names:
            bn = model.get_submodule(n)
            c = bn.num_features
            self.mask[n] = torch.ones(c, device=dev, requires_grad=True)
            self.d[n] = torch.zeros(c, device=dev, requires_grad=True)
            self.e[n] = torch.zeros(c, device=dev, requires_grad=True)
            self.handles.append(bn.register_forward_hook(self._hook(n, bn)))

    def _hook(self, n, bn):
        def hook(_m, _inp, out):
            shape = (1, -1) + (1,) * (out.dim() - 2)
            b = bn.bias.view(shape)
            if not self.noisy:
                return (out - b) * self.mask[n].view(shape) + b
            return (out - b) * (self.mask[n] + self.d[n]).view(shape) + b * (1 + self.e[n]).view(shape)
        return hook

    def noise(self) -> list[torch.Tensor]:
        return [t for n in self.names for t in (self.d[n], self.e[n])]

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def optimise_masks(model, fit, cfg: dict, generator: torch.Generator, history: list | None = None
                   ) -> dict[str, torch.Tensor]:
    """ANP's mask search on a copy of ``model``; returns the final mask of every BN layer. ``history`` gets
    ten records (iteration, mean natural and perturbed loss since the last record, mean mask)."""
    net = frozen_copy(model).train()  # training-mode BN as in the reference code; weights frozen
    names = [n for n in bn_layers(net) if net.get_submodule(n).affine]
    pert = NeuronPerturbation(net, names)
    device = next(net.parameters()).device
    opt = torch.optim.SGD(list(pert.mask.values()), lr=cfg["mask_lr"], momentum=0.9)
    eps, step = cfg["eps"], cfg["eps"] / cfg["anp_steps"]
    data = endless_batches(fit, cfg["batch_size"], generator)
    every = max(1, cfg["iterations"] // 10)
    sums = torch.zeros(2, device=device)  # running loss sums, kept on the device (no per-step sync)

    def ce(x, y):
        with autocast(device):
            return F.cross_entropy(net(x).float(), y)

    hb = Heartbeat("anp-masks", total=cfg["iterations"], unit="it")
    try:
        for it in tqdm(range(cfg["iterations"]), desc="anp-masks", disable=None, mininterval=30):
            x, y = next(data)
            if eps > 0:
                with torch.no_grad():
                    for t in pert.noise():
                        t.copy_((torch.rand(t.shape, generator=generator) * 2 - 1).to(device) * eps)
                pert.noisy = True
                for _ in range(cfg["anp_steps"]):
                    grads = torch.autograd.grad(ce(x, y), pert.noise())
                    with torch.no_grad():
                        for t, gr in zip(pert.noise(), grads):
                            t.add_(step * gr.sign()).clamp_(-eps, eps)
                loss_rob = ce(x, y)
            else:
                loss_rob = torch.zeros((), device=device)
            pert.noisy = False
            loss_nat = ce(x, y)
            loss = cfg["alpha"] * loss_nat + (1 - cfg["alpha"]) * loss_rob
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for m in pert.mask.values():
                    m.clamp_(0, 1)
            sums += torch.stack([loss_nat.detach().float(), loss_rob.detach().float()])
            hb.update(1, loss=read_later(loss_nat), loss_perturbed=read_later(loss_rob))
            if history is not None and (it + 1) % every == 0:
                mean = float(torch.cat([m.detach() for m in pert.mask.values()]).mean())
                history.append({"iteration": it + 1, "loss": float(sums[0]) / every,
                                "loss_perturbed": float(sums[1]) / every, "mask_mean": mean})
                sums.zero_()
    finally:
        pert.close()
    hb.close()
    return {n: m.detach().clone() for n, m in pert.mask.items()}


def prune(model, masks: dict[str, torch.Tensor], threshold: float) -> int:
    """Sets w_k = 0 for every BN neuron whose mask is below ``threshold``; returns how many."""
    count = 0
    with torch.no_grad():
        for n, m in masks.items():
            off = m < threshold
            model.get_submodule(n).weight[off.to(model.get_submodule(n).weight.device)] = 0
            count += int(off.sum())
    return count


@DEFENSES.register("anp")
class AdversarialNeuronPruning(Defense):
    defaults = ANP_DEFAULTS

    def run(self, model, clean, *, seed, checkpoint=None, monitor=None, audit=None):
        cfg = dict(self.cfg)
        fit, held = split_holdout(clean, cfg["holdout"], seed)
        g = torch.Generator().manual_seed(seed)
        history: list[dict] = []
        masks = optimise_masks(model, fit, cfg, g, history)
        total = sum(len(m) for m in masks.values())
        original = {k: v.clone() for k, v in model.state_dict().items()}
        base = accuracy(model, held)
        chosen, curve = 0.0, []
        for t in sorted(cfg["thresholds"]):
            n = prune(model, masks, t)
            acc = accuracy(model, held)
            model.load_state_dict(original)
            curve.append({"threshold": t, "pruned": n, "held_out_acc": acc})
            if base - acc > cfg["max_acc_drop"] or n > cfg["max_fraction"] * total:
                break
            chosen = t
        pruned = prune(model, masks, chosen) if chosen > 0 else 0
        all_masks = torch.cat(list(masks.values())).cpu()
        return model, {"history": history, "changed": pruned > 0, "threshold": chosen, "pruned_neurons": pruned,
                       "neurons": total, "held_out_acc_before": base, "held_out_acc_after": accuracy(model, held),
                       "threshold_curve": curve, "mask_quantiles": [round(float(q), 4) for q in torch.quantile(
                           all_masks, torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0]))],
                       "n_fit": len(fit), "n_held_out": len(held)}
