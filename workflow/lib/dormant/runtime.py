"""Where and how a stage runs: device choice, thread count, logging. Not experiment config."""

from __future__ import annotations

import logging
import os
import sys

import torch

from dormant.errors import ConfigError


def pick_device(want: str | None = None) -> torch.device:
    """``want`` (cpu, cuda, cuda:1, ...) if given, else ``$DORMANT_DEVICE``, else CUDA when available, else CPU."""
    want = want or os.environ.get("DORMANT_DEVICE", "auto")
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(want)
    except RuntimeError:
        raise ConfigError(f"device {want!r} is not a device (cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {want!r} was asked for, but CUDA is not available here")
    return device


def setup(threads: int | None = None, device: str | None = None) -> torch.device:
    """Logging to stderr, torch threads, TF32 on CUDA; returns the device (``device`` overrides the default)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if threads:
        torch.set_num_threads(int(threads))
    device = pick_device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    logging.getLogger("dormant").info("device %s, %d threads", device, torch.get_num_threads())
    return device


def autocast(device):
    """bf16 autocast on CUDA, a no-op elsewhere (CPU runs stay fp32 and bit-reproducible)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)
