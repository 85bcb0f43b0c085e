"""Resumable training: every few epochs or minutes (``runtime.checkpoint_cadence``) and after the last epoch
the model, its optimiser's momentum buffers, the data generator's state, the history and any co-trained
component (an attack that learns with the victim) go to one safetensors checkpoint; a rerun with the same
config hash continues after the last saved epoch with identical results.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from dormant.errors import CheckpointError
from dormant.io import load_tensors, save_tensors

log = logging.getLogger("dormant.training")


def _optimizer_tensors(model, opt) -> dict[str, torch.Tensor]:
    """Every tensor of the optimiser's per-parameter state: SGD's momentum buffer as ``opt.<param>`` (the
    historical key), any other entry (AdamW's ``exp_avg``, ``exp_avg_sq``, ``step``) as ``optstate.<entry>.<param>``."""
    names = {p: n for n, p in model.named_parameters()}
    out = {}
    for group in opt.param_groups:
        for p in group["params"]:
            for key, v in opt.state.get(p, {}).items():
                if torch.is_tensor(v):
                    out[f"opt.{names[p]}" if key == "momentum_buffer" else f"optstate.{key}.{names[p]}"] = v
    return out


def _load_optimizer_tensors(model, opt, tensors) -> None:
    entries = {k.split(".", 2)[1] for k in tensors if k.startswith("optstate.")}
    for n, p in model.named_parameters():
        key = f"opt.{n}"
        if key in tensors:
            opt.state[p]["momentum_buffer"] = tensors[key].to(p.device, p.dtype).clone()
        for entry in entries:
            t = tensors.get(f"optstate.{entry}.{n}")
            if t is not None:  # AdamW keeps ``step`` as a float32 CPU scalar: keep its own dtype and device
                opt.state[p][entry] = t.clone() if t.dim() == 0 else t.to(p.device, p.dtype).clone()


def save_checkpoint(path, model, opt, epoch: int, generator: torch.Generator, history: list, cfg_key: str,
                    companion=None) -> None:
    """Model, optimiser buffers, generator state, history and a co-trained component's state, atomically."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(_optimizer_tensors(model, opt))
    if companion is not None:
        tensors.update(companion.state_tensors())
    tensors["rng"] = generator.get_state()
    save_tensors({k: v.contiguous() for k, v in tensors.items()}, path,
                 {"epoch": epoch, "history": history, "config_hash": cfg_key})


def try_resume(path, model, opt, generator, cfg_key: str, companion=None):
    """Loads ``path`` if it exists and was written for the same config; returns (next_epoch, history)."""
    if path is None or not Path(path).exists():
        return 0, []
    tensors, meta = load_tensors(path)
    if meta.get("config_hash") != cfg_key:
        log.warning("ignoring checkpoint %s: it was written for another config", path)
        return 0, []
    try:
        epoch, history = int(meta["epoch"]), list(meta["history"])
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        _load_optimizer_tensors(model, opt, tensors)
        if companion is not None:
            companion.load_state_tensors(tensors)
        generator.set_state(tensors["rng"])
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"resume checkpoint {path} is damaged ({type(e).__name__}: {str(e)[:200]}); delete it "
                              "to start over") from None
    log.info("resumed from %s after epoch %d", path, epoch + 1)
    return epoch + 1, history
