"""Supervised training on a resident uint8 dataset, with optional in-loop poisoning (docs/methods.md section 2).

One loop serves clean training, backdoor training (a data-poisoning attack stamps its trigger on
the poison index; a training-controlled attack rewrites the batch itself) and fine-tuning defenses.

Speed: the dataset stays on the device as uint8; each batch is gathered by index, converted,
poisoned and augmented as whole-batch tensor ops; the fast precision (``runtime.autocast``: bf16, or
fp16 with loss scaling on GPUs without native bf16) and channels-last on CUDA. Each epoch's shuffle,
poison positions, attack draws, crop offsets and flips are drawn before its first step and copied to
the device once, so a step makes no host synchronisation (a batch transform that draws from the
generator, e.g. PGD's random start, keeps the per-batch draws).
Reproducibility: all randomness comes from one CPU ``torch.Generator`` seeded from ``seed``, drawn in
the same order whether ahead of the epoch or per batch, so the shuffles and augmentations are
identical on every device; on CPU the weights are bit-identical between runs. Resume: every N epochs
or M minutes, whichever comes first, and after the last epoch (``runtime.checkpoint_cadence``), the
model, optimiser buffers, generator state and history go to a safetensors checkpoint; a rerun with
the same config continues from it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dormant.data.augment import apply_crop_flip, draw_crop_flip, random_crop_flip, to_float
from dormant.errors import NonFiniteError
from dormant.io import code_version, config_hash, tensor_digest
from dormant.progress import Heartbeat, read_later
from dormant.runtime import autocast, checkpoint_cadence, grad_scaler, memory_format
from dormant.training.resume import save_checkpoint, try_resume

log = logging.getLogger(__name__)

DEFAULTS = {
    "epochs": 100,
    "batch_size": 128,
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "cosine",
    "augment": True,
    "crop_padding": 4,
    "label_smoothing": 0.0,
}


def defaults(*, without: tuple[str, ...] = (), **overrides) -> dict:
    """The training defaults as a method's own: without some keys, with some values changed (a defense that
    fine-tunes declares its keys this way, so each default lives in one place)."""
    return {**{k: v for k, v in DEFAULTS.items() if k not in without}, **overrides}


def lr_at(cfg: dict, epoch: int) -> float:
    """Learning rate of ``epoch`` (0-based): cosine annealing over ``epochs`` (stepped per epoch) or constant."""
    if cfg["schedule"] == "cosine":
        return 0.5 * cfg["lr"] * (1 + math.cos(math.pi * epoch / cfg["epochs"]))
    return cfg["lr"]


def check_finite_epoch(model: torch.nn.Module, loss: float, desc: str, epoch: int) -> None:
    """Stops training whose loss or weights became NaN or infinite (one host sync per epoch)."""
    params = [p.detach() for p in model.parameters()]
    weights_ok = bool(torch.stack([torch.isfinite(p).all() for p in params]).all()) if params else True
    if not math.isfinite(loss) or not weights_ok:
        what = f"loss {loss}" if not math.isfinite(loss) else "weights"
        raise NonFiniteError(f"{desc}: {what} became NaN or infinite in epoch {epoch} (diverged: lower the "
                             "learning rate); no model was written")


def make_optimizer(model: torch.nn.Module, cfg: dict) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])


def _format_of(model: torch.nn.Module) -> torch.memory_format:
    """The layout of a model's first 4-d weight (channels-last or contiguous)."""
    for p in model.parameters():
        if p.dim() == 4:
            return torch.channels_last if p.is_contiguous(memory_format=torch.channels_last) and not \
                p.is_contiguous() else torch.contiguous_format
    return torch.contiguous_format


class _EpochPlan:
    """One epoch's randomness, drawn on the CPU before its first step and copied to the device once."""

    def __init__(self, perm, poison, crop):
        self.perm, self.poison, self.crop = perm, poison, crop


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A non-blocking copy to a CUDA device (from pinned memory); the tensor itself on the CPU."""
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def _draw_epoch(perm, bs: int, cfg: dict, g: torch.Generator, attack, mask_cpu, device) -> _EpochPlan:
    """Draws, batch by batch, exactly what the per-batch loop drew in that order (the attack's draws, then crop
    rows, crop columns, flips), so the generator stream and every result stay the same; then copies it to the
    device in a few non-blocking transfers. The steps that follow need no host synchronisation."""
    n = len(perm)
    poison, crops = [], []
    for s in range(math.ceil(n / bs)):
        idx = perm[s * bs : (s + 1) * bs]
        if attack is not None:
            is_p = mask_cpu[idx] if mask_cpu is not None else torch.zeros(len(idx), dtype=torch.bool)
            poison.append(attack.draw_batch(is_p, g))
        if cfg["augment"]:
            crops.append(draw_crop_flip(len(idx), cfg["crop_padding"], g))
    dev_perm = _to_device(perm, device)
    # each kind of tensor concatenated over the epoch, copied once, and split back into per-batch views
    dev_poison = [{} for _ in poison]
    for key in sorted({k for d in poison for k in d}):
        parts = [d[key] for d in poison if key in d]
        flat = _to_device(torch.cat([p.reshape(-1) for p in parts]), device)
        views = iter(torch.split(flat, [p.numel() for p in parts]))
        for d, dd in zip(poison, dev_poison):
            if key in d:
                dd[key] = next(views).view(d[key].shape)
    dev_crops = []
    if crops:
        parts = [c for c in zip(*crops)]  # (all oy, all ox, all flips), None where off
        flat = [None if p[0] is None else _to_device(torch.cat(p), device) for p in parts]
        sizes = [len(c[0] if c[0] is not None else c[2]) for c in crops]
        split = [[None] * len(crops) if f is None else list(torch.split(f, sizes)) for f in flat]
        dev_crops = list(zip(*split))
    return _EpochPlan(dev_perm, dev_poison, dev_crops)


def train(
    model: torch.nn.Module,
    data,
    cfg: dict,
    *,
    seed: int,
    attack=None,
    poison_mask: torch.Tensor | None = None,
    checkpoint: str | os.PathLike | None = None,
    eval_fn: Callable[[torch.nn.Module], dict] | None = None,
    extra_loss: Callable | None = None,
    batch_transform: Callable | None = None,
    sharpness: Callable | None = None,
    after_step: Callable | None = None,
    learn_attack: bool = False,
    optimizer: torch.optim.Optimizer | None = None,
    desc: str = "train",
    checkpoint_every: tuple[int, float] | None = None,
) -> list[dict]:
    """Trains ``model`` in place on ``data`` (an ImageSet on the model's device); returns per-epoch history.

    ``poison_mask`` (bool, one per training image) marks the samples ``attack.poison_batch`` poisons.
    ``extra_loss(model, logits, x, y)`` adds a term (used by regularised defenses).
    ``batch_transform(model, x, y, generator) -> x`` replaces each (augmented) batch before the step, e.g.
    by its adversarial examples (adversarial fine-tuning).
    ``sharpness(model) -> restore`` is called after the first backward pass: it moves the weights to a
    nearby worse point (SAM) and returns a function that moves them back; the loss is then recomputed
    there and its gradient, taken after ``restore()``, is the one the optimizer steps with.
    ``after_step(model)`` runs after every optimizer step (e.g. a projection of some weights).
    ``learn_attack``: an attack that learns jointly with the victim (``attack.learner()``, e.g. Input-Aware's
    generator) adds its loss term, takes its own optimiser step after every step of the model, and is saved
    with the resume checkpoint; the loop sees only that co-trained component, never the attack's internals.
    ``optimizer``: an existing SGD optimiser over ``model``'s parameters to continue with (its momentum
    buffers carry over, e.g. across PBE's rounds); by default a fresh one from ``cfg``.
    ``checkpoint_every``: (epochs, minutes) between resume checkpoints, whichever comes first, and always after
    the last epoch; default :func:`dormant.runtime.checkpoint_cadence`.
    """
    cfg = {**DEFAULTS, **cfg}
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    opt = optimizer if optimizer is not None else make_optimizer(model, cfg)
    learner = attack.learner() if (learn_attack and attack is not None) else None
    # a checkpoint is only resumed by the same config, data, poisoning, starting weights and library code
    cfg_key = config_hash({
        "cfg": cfg, "seed": seed, "attack": getattr(attack, "cfg", None), "model": type(model).__name__,
        "data": tensor_digest(data.x, data.y, poison_mask),
        "init": tensor_digest(*model.state_dict().values()),
        "attack_init": tensor_digest(*learner.digest_tensors()) if learner is not None else None,
        "code": code_version()["source_sha256"],
    })
    start, history = try_resume(checkpoint, model, opt, g, cfg_key, learner)
    fmt = memory_format(device)
    given_fmt = _format_of(model)
    model.to(memory_format=fmt)
    every_epochs, every_minutes = checkpoint_cadence() if checkpoint_every is None else checkpoint_every
    last_saved = time.monotonic()
    scaler = grad_scaler(device)
    # an attack drawing per batch, or a batch transform drawing from ``g``, ties later draws of the epoch to it:
    # only the former can be drawn ahead (``draw_batch``); with a transform the loop draws batch by batch
    ahead = batch_transform is None and (attack is None or hasattr(attack, "draw_batch"))
    mask_cpu = poison_mask.cpu() if (attack is not None and poison_mask is not None) else None
    n = len(data)
    bs = cfg["batch_size"]
    steps = math.ceil(n / bs)
    bar = tqdm(range(start, cfg["epochs"]), desc=desc, initial=start, total=cfg["epochs"],
               mininterval=1 if os.isatty(2) else 30, disable=None)
    hb = Heartbeat(desc, total=cfg["epochs"] * n, unit="img", initial=start * n)
    for epoch in bar:
        t_epoch = time.monotonic()
        lr = lr_at(cfg, epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        perm = torch.randperm(n, generator=g)
        plan = _draw_epoch(perm, bs, cfg, g, attack, mask_cpu, device) if ahead else None
        tot_loss = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for s in range(steps):
            if plan is not None:
                idx = plan.perm[s * bs : (s + 1) * bs]
            else:
                idx = perm[s * bs : (s + 1) * bs].to(device)
            x, y = to_float(data.x[idx]), data.y[idx]
            if plan is not None:
                if attack is not None:
                    x, y = attack.poison_drawn(x, y, plan.poison[s])
                if cfg["augment"]:
                    x = apply_crop_flip(x, cfg["crop_padding"], *plan.crop[s])
            else:
                if attack is not None:
                    is_p = poison_mask[idx] if poison_mask is not None else torch.zeros_like(y, dtype=torch.bool)
                    x, y = attack.poison_batch(x, y, is_p, g)
                if cfg["augment"]:
                    x = random_crop_flip(x, cfg["crop_padding"], g)
            if batch_transform is not None:
                x = batch_transform(model, x, y, g)
                model.train()
            if fmt is torch.channels_last:
                x = x.contiguous(memory_format=fmt)
            with autocast(device, fp16=True):  # backward through the loss scaler
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg["label_smoothing"])
                if extra_loss is not None:
                    loss = loss + extra_loss(model, logits, x, y)
            if learner is not None and learner.extra_loss() is not None:
                loss = loss + learner.extra_loss()
            opt.zero_grad(set_to_none=True)
            if learner is not None:
                learner.zero_grad()
            scaler.scale(loss).backward()
            if sharpness is not None:
                if scaler.is_enabled():  # the perturbation is taken along the true gradient
                    inv = 1.0 / scaler.scale(torch.ones((), device=device))
                    for p in model.parameters():
                        if p.grad is not None:
                            p.grad.mul_(inv)
                restore = sharpness(model)
                opt.zero_grad(set_to_none=True)
                with autocast(device, fp16=True):  # backward through the loss scaler
                    again = F.cross_entropy(model(x).float(), y, label_smoothing=cfg["label_smoothing"])
                scaler.scale(again).backward()
                restore()
            scaler.step(opt)
            if learner is not None:
                learner.step(scaler)
            scaler.update()
            if after_step is not None:
                after_step(model)
            tot_loss += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            hb.update(len(y), epoch=f"{epoch + 1}/{cfg['epochs']}", loss=read_later(loss))
        rec = {"epoch": epoch + 1, "lr": lr, "loss": tot_loss.item() / n, "train_acc": 100.0 * correct.item() / n}
        # throughput of the epoch's steps, measured after the loss sums' read-back (the epoch's one host sync)
        rec["img_per_s"] = n / max(time.monotonic() - t_epoch, 1e-9)
        check_finite_epoch(model, rec["loss"], desc, epoch + 1)  # before anything of this epoch is saved
        if eval_fn is not None and (epoch + 1 == cfg["epochs"] or (epoch + 1) % cfg.get("eval_every", 1) == 0):
            rec.update(eval_fn(model))
        history.append(rec)
        hb.fields.update({k: v for k, v in rec.items() if k not in ("epoch", "lr", "img_per_s")})
        bar.set_postfix({k: round(v, 3) for k, v in rec.items() if k not in ("epoch", "lr", "img_per_s")})
        log.info("%s epoch %d/%d %s", desc, epoch + 1, cfg["epochs"],
                 " ".join(f"{k}={v:.4g}" for k, v in rec.items() if k != "epoch"))
        due = ((epoch + 1) % every_epochs == 0 or epoch + 1 == cfg["epochs"]
               or time.monotonic() - last_saved >= 60 * every_minutes)
        if checkpoint is not None and due:
            save_checkpoint(checkpoint, model, opt, epoch, g, history, cfg_key, learner)
            last_saved = time.monotonic()
    hb.close()
    if learner is not None:
        learner.close()
    model.to(memory_format=given_fmt)  # as the caller gave it
    return history
