"""NC: Neural Cleanse (Wang et al., IEEE S&P 2019; docs/methods.md section 5).

1. Reverse engineering. For every class t, a mask m_t (H x W, in [0, 1] through tanh/2 + 1/2) and a
   pattern p_t (C x H x W) are optimised with Adam (lr 0.1, betas 0.5/0.9) so that
   x' = (1 - m_t) x + m_t p_t is classified as t, minimising CE(f(x'), t) + cost_t * |m_t|_1. The cost
   follows NC's schedule: 0 until the trigger succeeds on ``success`` (99%) of the batches of an epoch for
   ``patience`` epochs, then ``init_cost``; afterwards x1.5 after ``patience`` successful epochs, /1.5^1.5
   after ``patience`` failing ones. All classes are optimised together as one batched tensor program
   (``class_chunk`` classes at a time), not in a Python loop over classes or samples.
2. Choice on the held-out split (docs/methods.md section 5): after each epoch the candidate trigger of class t
   is applied to the held-out part of the clean subset; the kept trigger of t is the one with the smallest
   |m|_1 among those that reach ``success`` there. Classes whose trigger never reaches it keep the last one
   (their norm is then an upper bound, which only makes them look less anomalous).
3. Detection: MAD anomaly index of the L1 norms, (median - |m_t|_1) / (1.4826 * MAD); a label with index
   > ``threshold`` (2) on the small side is flagged.
4. Unlearning: if some label is flagged, fine-tune on the whole clean subset where a fixed ``unlearn_ratio``
   (20%) of the images carry a reversed trigger (of a flagged label, drawn per sample) and keep their true
   labels (FT's settings). If nothing is flagged, the model comes back unchanged and the sidecar says
   ``changed: false``; ``flagged`` lists the labels either way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dormant import training
from dormant.data.augment import to_float
from dormant.defenses import DEFENSES
from dormant.defenses.base import Defense
from dormant.defenses.holdout import split_holdout
from dormant.defenses.loop import batches, frozen_copy
from dormant.io import tensor_digest
from dormant.progress import Heartbeat, read_later
from dormant.runtime import autocast

NC_DEFAULTS = {"epochs_reverse": 10, "batch_size_reverse": 128, "lr_reverse": 0.1, "init_cost": 1e-3,
               "success": 0.99, "patience": 5, "threshold": 2.0, "holdout": 0.2, "class_chunk": 10,
               "unlearn_ratio": 0.2, "epochs": 10, "lr": 0.01, "batch_size": 128}
MAD_CONSISTENCY = 1.4826  # makes the MAD a consistent estimator of the standard deviation for normal data


def anomaly_index(norms: torch.Tensor) -> torch.Tensor:
    """NC's anomaly index per label: (median - norm) / (1.4826 * median |norm - median|), signed so that
    small (suspicious) norms are positive. A zero MAD gives +-inf for labels off the median, 0 on it."""
    norms = norms.double()
    med = norms.median()
    mad = MAD_CONSISTENCY * (norms - med).abs().median()
    diff = med - norms
    if mad == 0:
        return torch.where(diff == 0, torch.zeros_like(diff), diff.sign() * math.inf)
    return diff / mad


def stamp(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """x' = (1 - m) x + m p, broadcast over the batch."""
    return (1 - mask) * x + mask * pattern


class _Schedule:
    """NC's adaptive L1 cost, one value per class (tensors, updated once per epoch)."""

    def __init__(self, k: int, cfg: dict):
        self.cfg = cfg
        self.cost = torch.zeros(k, dtype=torch.float64)
        self.set_counter = torch.zeros(k, dtype=torch.long)
        self.up = torch.zeros(k, dtype=torch.long)
        self.down = torch.zeros(k, dtype=torch.long)

    def update(self, succeeded: torch.Tensor) -> None:
        c, pat = self.cfg, self.cfg["patience"]
        unset = self.cost == 0
        self.set_counter = torch.where(unset & succeeded, self.set_counter + 1, torch.zeros_like(self.set_counter))
        start = unset & (self.set_counter >= pat)
        self.cost = torch.where(start, torch.full_like(self.cost, c["init_cost"]), self.cost)
        active = ~unset
        self.up = torch.where(active & succeeded, self.up + 1, torch.zeros_like(self.up))
        self.down = torch.where(active & ~succeeded, self.down + 1, torch.zeros_like(self.down))
        raise_ = active & (self.up >= pat)
        lower = active & (self.down >= pat)
        self.cost = torch.where(raise_, self.cost * 1.5, torch.where(lower, self.cost / 1.5 ** 1.5, self.cost))
        self.up = torch.where(raise_, torch.zeros_like(self.up), self.up)
        self.down = torch.where(lower, torch.zeros_like(self.down), self.down)


def reverse_engineer(model, fit, held, classes: list[int], cfg: dict, generator: torch.Generator,
                     heartbeat: Heartbeat | None = None) -> dict:
    """Reversed (mask, pattern) per class of ``classes`` with its L1 norm and held-out success rate;
    ``heartbeat`` counts the fit images passed (for the job log)."""
    ref = frozen_copy(model)
    device = fit.x.device
    k, (c, h, w) = len(classes), fit.image_shape
    targets = torch.tensor(classes, device=device)
    # tanh parametrisation as in NC: m = tanh(a)/2 + 1/2, p = tanh(b)/2 + 1/2
    a = torch.zeros(k, 1, h, w, device=device, requires_grad=True)
    b = (torch.rand(k, c, h, w, generator=generator).to(device) * 2 - 1).mul_(0.9).atanh_().requires_grad_(True)
    opt = torch.optim.Adam([a, b], lr=cfg["lr_reverse"], betas=(0.5, 0.9))
    sched = _Schedule(k, cfg)
    best_norm = torch.full((k,), math.inf, dtype=torch.float64)
    reached = torch.zeros(k, dtype=torch.bool)
    best_mask = torch.zeros(k, 1, h, w, device=device)
    best_pattern = torch.zeros(k, c, h, w, device=device)
    best_success = torch.zeros(k, dtype=torch.float64)
    held_x = to_float(held.x)
    for _ in range(cfg["epochs_reverse"]):
        hits = torch.zeros(k, device=device)
        seen = 0
        for x, _y in batches(fit, cfg["batch_size_reverse"], generator):
            mask, pattern = torch.tanh(a) / 2 + 0.5, torch.tanh(b) / 2 + 0.5
            xs = stamp(x.unsqueeze(0), mask.unsqueeze(1), pattern.unsqueeze(1))  # k x B x C x H x W
            tgt = targets.repeat_interleave(len(x))
            with autocast(device):
                logits = ref(xs.flatten(0, 1)).float()
            ce = F.cross_entropy(logits, tgt, reduction="none").view(k, len(x)).mean(1)
            l1 = mask.flatten(1).sum(1)
            loss = (ce + sched.cost.to(device, torch.float32) * l1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            hits += (logits.argmax(1) == tgt).view(k, len(x)).float().sum(1).detach()
            seen += len(x)
            if heartbeat is not None:
                heartbeat.update(len(x), classes=f"{classes[0]}-{classes[-1]}", loss=read_later(loss))
        sched.update((hits / seen).cpu() >= cfg["success"])
        with torch.no_grad():
            mask, pattern = torch.tanh(a) / 2 + 0.5, torch.tanh(b) / 2 + 0.5
            succ = torch.stack([_success(ref, held_x, mask[i], pattern[i], classes[i]) for i in range(k)]).double()
            norm = mask.flatten(1).sum(1).double().cpu()
            ok = succ >= cfg["success"]
            # the smallest successful trigger so far; until one succeeds, the latest
            take = (ok & (~reached | (norm < best_norm))) | (~reached & ~ok)
            best_norm = torch.where(take, norm, best_norm)
            reached = reached | ok
            sel = take.to(device)
            best_mask[sel], best_pattern[sel] = mask[sel], pattern[sel]
            best_success = torch.where(take, succ, best_success)
    return {"mask": best_mask, "pattern": best_pattern, "l1": best_norm, "held_out_success": best_success,
            "reached": reached}


@torch.no_grad()
def _success(model, x, mask, pattern, target: int, batch_size: int = 500) -> torch.Tensor:
    hit = 0
    for i in range(0, len(x), batch_size):
        xs = stamp(x[i : i + batch_size], mask, pattern)
        with autocast(x.device):
            hit += int((model(xs).argmax(1) == target).sum())
    return torch.tensor(hit / max(1, len(x)))


class _ReversedTriggers:
    """Stamps, on the marked samples of a training batch, the reversed trigger of a flagged label drawn per
    sample; labels stay as they are (NC's unlearning). Duck-types the attack interface of the training loop."""

    def __init__(self, masks: torch.Tensor, patterns: torch.Tensor):
        self.masks, self.patterns = masks, patterns
        self.cfg = {"nc_reversed_triggers": tensor_digest(masks, patterns)}  # part of the resume key

    def draw_batch(self, is_poison, generator):
        """Positions of the marked samples and the flagged label whose trigger each gets (CPU, ahead of the batch)."""
        pos = torch.nonzero(is_poison).flatten()
        which = torch.randint(len(self.masks), (len(pos),), generator=generator) if len(pos) else pos
        return {"pos": pos, "which": which}

    def poison_drawn(self, x, y, drawn):
        pos, which = drawn["pos"], drawn["which"]
        if len(pos):
            x = x.clone()
            x[pos] = stamp(x[pos], self.masks[which], self.patterns[which])
        return x, y

    def poison_batch(self, x, y, is_poison, generator):
        drawn = self.draw_batch(is_poison.cpu(), generator)
        return self.poison_drawn(x, y, {k: v.to(x.device) for k, v in drawn.items()})


@DEFENSES.register("nc")
class NeuralCleanse(Defense):
    defaults = training.defaults(**NC_DEFAULTS)

    def run(self, model, clean, *, seed, checkpoint=None, monitor=None, audit=None):
        cfg = dict(self.cfg)
        fit, held = split_holdout(clean, cfg["holdout"], seed)
        g = torch.Generator().manual_seed(seed)
        n_classes = int(clean.num_classes)
        parts = []
        step = cfg["class_chunk"]
        hb = Heartbeat("nc-reverse", total=math.ceil(n_classes / step) * cfg["epochs_reverse"] * len(fit), unit="img")
        for start in tqdm(range(0, n_classes, step), desc="nc-reverse", disable=None, mininterval=30):
            classes = list(range(start, min(n_classes, start + step)))
            parts.append(reverse_engineer(model, fit, held, classes, cfg, g, hb))
        hb.close()
        rev = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        index = anomaly_index(rev["l1"])
        flagged = [int(t) for t in torch.nonzero(index > cfg["threshold"]).flatten()]
        info = {"flagged": flagged, "changed": bool(flagged), "anomaly_index": [float(v) for v in index],
                "mask_l1": [float(v) for v in rev["l1"]],
                "held_out_success": [round(float(v), 4) for v in rev["held_out_success"]],
                "reached_success": [bool(v) for v in rev["reached"]], "n_fit": len(fit), "n_held_out": len(held),
                "history": []}
        if not flagged:
            return model, info
        sel = torch.tensor(flagged, device=rev["mask"].device)
        stamper = _ReversedTriggers(rev["mask"][sel].detach(), rev["pattern"][sel].detach())
        n_stamp = int(round(cfg["unlearn_ratio"] * len(clean)))
        marked = torch.zeros(len(clean), dtype=torch.bool, device=clean.x.device)
        marked[torch.randperm(len(clean), generator=g)[:n_stamp].to(clean.x.device)] = True
        train_cfg = {k: v for k, v in cfg.items() if k in training.DEFAULTS}
        info["history"] = training.train(model, clean, train_cfg, seed=seed, attack=stamper, poison_mask=marked,
                                         checkpoint=checkpoint, desc="nc-unlearn")
        info["n_stamped"] = n_stamp
        return model, info
