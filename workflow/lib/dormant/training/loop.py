"""Supervised training on a resident uint8 dataset, with optional in-loop poisoning (docs/methods.md section 2).

One loop serves clean training, backdoor training (a data-poisoning attack stamps its trigger on
the poison index; a training-controlled attack rewrites the batch itself) and fine-tuning defenses.

Speed: the dataset stays on the device as uint8; each batch is gathered by index, converted,
poisoned and augmented as whole-batch tensor ops; bf16 autocast and channels-last on CUDA.
Reproducibility: all randomness comes from one CPU ``torch.Generator`` seeded from ``seed``, so
the shuffles and augmentations are identical on every device; on CPU the weights are
bit-identical between runs. Resume: after every epoch the model, optimiser buffers, generator
state and history go to a safetensors checkpoint; a rerun with the same config continues from it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dormant.data.augment import random_crop_flip, to_float
from dormant.errors import NonFiniteError
from dormant.io import code_version, config_hash, tensor_digest
from dormant.runtime import autocast
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
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    n = len(data)
    steps = math.ceil(n / cfg["batch_size"])
    bar = tqdm(range(start, cfg["epochs"]), desc=desc, initial=start, total=cfg["epochs"],
               mininterval=1 if os.isatty(2) else 30, disable=None)
    for epoch in bar:
        lr = lr_at(cfg, epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        perm = torch.randperm(n, generator=g)
        tot_loss = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for s in range(steps):
            idx = perm[s * cfg["batch_size"] : (s + 1) * cfg["batch_size"]].to(device)
            x, y = to_float(data.x[idx]), data.y[idx]
            if attack is not None:
                is_p = poison_mask[idx] if poison_mask is not None else torch.zeros_like(y, dtype=torch.bool)
                x, y = attack.poison_batch(x, y, is_p, g)
            if cfg["augment"]:
                x = random_crop_flip(x, cfg["crop_padding"], g)
            if batch_transform is not None:
                x = batch_transform(model, x, y, g)
                model.train()
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg["label_smoothing"])
                if extra_loss is not None:
                    loss = loss + extra_loss(model, logits, x, y)
            if learner is not None and learner.extra_loss() is not None:
                loss = loss + learner.extra_loss()
            opt.zero_grad(set_to_none=True)
            if learner is not None:
                learner.zero_grad()
            loss.backward()
            if sharpness is not None:
                restore = sharpness(model)
                opt.zero_grad(set_to_none=True)
                with autocast(device):
                    again = F.cross_entropy(model(x).float(), y, label_smoothing=cfg["label_smoothing"])
                again.backward()
                restore()
            opt.step()
            if learner is not None:
                learner.step()
            if after_step is not None:
                after_step(model)
            tot_loss += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
        rec = {"epoch": epoch + 1, "lr": lr, "loss": tot_loss.item() / n, "train_acc": 100.0 * correct.item() / n}
        check_finite_epoch(model, rec["loss"], desc, epoch + 1)  # before anything of this epoch is saved
        if eval_fn is not None and (epoch + 1 == cfg["epochs"] or (epoch + 1) % cfg.get("eval_every", 1) == 0):
            rec.update(eval_fn(model))
        history.append(rec)
        bar.set_postfix({k: round(v, 3) for k, v in rec.items() if k not in ("epoch", "lr")})
        log.info("%s epoch %d/%d %s", desc, epoch + 1, cfg["epochs"],
                 " ".join(f"{k}={v:.4g}" for k, v in rec.items() if k != "epoch"))
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, opt, epoch, g, history, cfg_key, learner)
    if learner is not None:
        learner.close()
    if device.type == "cuda":
        model.to(memory_format=torch.contiguous_format)
    return history
