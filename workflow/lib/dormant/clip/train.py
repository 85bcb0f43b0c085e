"""Contrastive training of a CLIP adapter on resident image-caption pairs (docs/methods.md section 9).

One loop serves pre-training from scratch (the tiny preset), fine-tuning pre-trained weights (the paper
preset), the backdoor (the pairs as the attacker released them: triggered images with target captions) and
the defenses CleanCLIP and FT (Bansal et al. 2023): loss = lambda_clip * L_CLIP + lambda_ss * L_SS
(:mod:`dormant.clip.loss`), L_CLIP on the un-augmented pairs (or crop+flipped ones with ``augment``), L_SS
between each embedding and its augmented view.

Speed: images stay on the device as uint8 and captions as token ids ([N, context], tokenised once); each
batch is gathered by index and augmented as whole-batch tensor ops; the fast precision with loss scaling
(``runtime.autocast``). The captions' in-modal views (one EDA edit per caption) are drawn and tokenised once
per epoch, before its first step. Optimiser: AdamW (betas (momentum, beta2)), no weight decay on gains,
biases and the logit scale (ndim < 2), linear warm-up then cosine decay per step. Reproducibility and resume
as in :mod:`dormant.training.loop` (one seeded CPU generator; epoch checkpoints with the AdamW state).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable

import torch
from tqdm import tqdm

from dormant.clip.loss import cleanclip_loss
from dormant.data.augment import random_crop_flip, to_float
from dormant.io import code_version, config_hash, tensor_digest
from dormant.progress import Heartbeat, read_later
from dormant.runtime import autocast, checkpoint_cadence, grad_scaler
from dormant.training.loop import check_finite_epoch
from dormant.training.resume import save_checkpoint, try_resume

log = logging.getLogger(__name__)

DEFAULTS = {
    "epochs": 10,
    "batch_size": 128,
    "lr": 5e-4,
    "momentum": 0.9,      # AdamW's beta1
    "beta2": 0.999,
    "weight_decay": 0.1,
    "warmup_steps": 0,
    "schedule": "cosine",
    "augment": False,     # crop+flip of the images of L_CLIP
    "crop_padding": 4,
    "lambda_clip": 1.0,
    "lambda_ss": 0.0,
    "jitter": 0.4,        # strength of the colour jitter of the in-modal image views
    "eval_every": 0,
}


def defaults(*, without: tuple[str, ...] = (), **overrides) -> dict:
    """The loop's defaults as a method's own (as :func:`dormant.training.defaults` for the supervised loop)."""
    return {**{k: v for k, v in DEFAULTS.items() if k not in without}, **overrides}


def lr_at_step(cfg: dict, step: int, total: int) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to 0 at ``total`` (or constant)."""
    warm = cfg["warmup_steps"]
    if step < warm:
        return cfg["lr"] * (step + 1) / warm
    if cfg["schedule"] != "cosine":
        return cfg["lr"]
    return 0.5 * cfg["lr"] * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def make_optimizer(model, cfg: dict) -> torch.optim.AdamW:
    """AdamW over the CLIP weights (not the zero-shot head); gains, biases and the logit scale undecayed."""
    decay, plain = [], []
    for p in model.clip.parameters():
        if p.requires_grad:
            (plain if p.ndim < 2 else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                              {"params": plain, "weight_decay": 0.0}],
                             lr=cfg["lr"], betas=(cfg["momentum"], cfg["beta2"]))


def image_views(x: torch.Tensor, g: torch.Generator, strength: float) -> torch.Tensor:
    """The in-modal image view, per image and batched: random crop (padding 1/8 of the side) and flip, then
    brightness, contrast and saturation factors drawn from [1 - strength, 1 + strength]. A batched stand-in for
    CleanCLIP's AutoAugment (named as a deviation in docs/methods.md section 9)."""
    n = len(x)
    x = random_crop_flip(x, max(1, x.shape[-1] // 8), g)
    f = (1 + strength * (2 * torch.rand(3, n, 1, 1, 1, generator=g) - 1)).to(x.device)
    x = x * f[0]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * f[1] + mean
    grey = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - grey) * f[2] + grey
    return x.clamp(0, 1)


def train_clip(model, images: torch.Tensor, tokens: torch.Tensor, cfg: dict, *, seed: int,
               text_views: Callable[[int], torch.Tensor] | None = None, checkpoint: str | os.PathLike | None = None,
               eval_fn: Callable | None = None, desc: str = "clip") -> list[dict]:
    """Trains ``model.clip`` in place on pairs (``images`` uint8 [N, 3, H, W] and ``tokens`` [N, context] on the
    model's device); returns the per-epoch history. ``text_views(epoch)`` gives the augmented captions' tokens
    of an epoch (needed when ``lambda_ss`` > 0); ``eval_fn(model)`` adds test metrics to the history."""
    cfg = {**DEFAULTS, **cfg}
    if cfg["lambda_ss"] and text_views is None:
        raise ValueError("lambda_ss > 0 needs the captions' augmented views (text_views)")
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    opt = make_optimizer(model, cfg)
    cfg_key = config_hash({"cfg": cfg, "seed": seed, "kind": "clip", "data": tensor_digest(images, tokens),
                           "init": tensor_digest(*model.state_dict().values()),
                           "code": code_version()["source_sha256"]})
    start, history = try_resume(checkpoint, model, opt, g, cfg_key)
    every_epochs, every_minutes = checkpoint_cadence()
    last_saved = time.monotonic()
    scaler = grad_scaler(device)
    n, bs = len(images), cfg["batch_size"]
    steps = n // bs if n >= bs else 1  # full batches only: a contrastive batch of 1 has no negatives
    total = steps * cfg["epochs"]
    bar = tqdm(range(start, cfg["epochs"]), desc=desc, initial=start, total=cfg["epochs"],
               mininterval=1 if os.isatty(2) else 30, disable=None)
    max_scale = math.log(100.0)
    per_epoch = steps * min(bs, n)
    hb = Heartbeat(desc, total=cfg["epochs"] * per_epoch, unit="img", initial=start * per_epoch)
    for epoch in bar:
        t0 = time.monotonic()
        model.train()
        perm = torch.randperm(n, generator=g).to(device)
        views = text_views(epoch).to(device) if cfg["lambda_ss"] else None
        tot = torch.zeros((), device=device)
        for s in range(steps):
            lr = lr_at_step(cfg, epoch * steps + s, total)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = perm[s * bs : (s + 1) * bs]
            x = to_float(images[idx])
            x_aug = image_views(x, g, cfg["jitter"]) if cfg["lambda_ss"] else None
            if cfg["augment"]:
                x = random_crop_flip(x, cfg["crop_padding"], g)
            with autocast(device, fp16=True):  # backward through the loss scaler
                img, txt = model.image_features(x), model.text_features(tokens[idx])
                img_aug = model.image_features(x_aug) if x_aug is not None else None
                txt_aug = model.text_features(views[idx]) if views is not None else None
                loss = cleanclip_loss(img.float(), txt.float(), None if img_aug is None else img_aug.float(),
                                      None if txt_aug is None else txt_aug.float(), model.logit_scale(),
                                      cfg["lambda_clip"], cfg["lambda_ss"])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            with torch.no_grad():
                model.clip.logit_scale.clamp_(0, max_scale)
            tot += loss.detach()
            hb.update(len(idx), epoch=f"{epoch + 1}/{cfg['epochs']}", loss=read_later(loss))
        rec = {"epoch": epoch + 1, "lr": lr, "loss": tot.item() / steps,
               "logit_scale": float(model.logit_scale().detach()), "img_per_s": steps * bs / (time.monotonic() - t0)}
        check_finite_epoch(model, rec["loss"], desc, epoch + 1)
        last = epoch + 1 == cfg["epochs"]
        if eval_fn is not None and (last or (cfg["eval_every"] and (epoch + 1) % cfg["eval_every"] == 0)):
            rec.update(eval_fn(model))
        history.append(rec)
        hb.fields.update({k: v for k, v in rec.items() if k not in ("epoch", "lr", "img_per_s")})
        log.info("%s epoch %d/%d %s", desc, epoch + 1, cfg["epochs"],
                 " ".join(f"{k}={v:.4g}" for k, v in rec.items() if k != "epoch"))
        if checkpoint is not None and ((epoch + 1) % every_epochs == 0 or last
                                       or time.monotonic() - last_saved >= 60 * every_minutes):
            save_checkpoint(checkpoint, model, opt, epoch, g, history, cfg_key)
            last_saved = time.monotonic()
    hb.close()
    return history
