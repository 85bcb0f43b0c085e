"""Where and how a stage runs: device choice, thread count, logging. Not experiment config."""

from __future__ import annotations

import logging
import os
import sys

import torch


def pick_device() -> torch.device:
    """``$DORMANT_DEVICE`` if set (cpu, cuda, cuda:1, ...), else CUDA when available, else CPU."""
    want = os.environ.get("DORMANT_DEVICE", "auto")
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(want)


def setup(threads: int | None = None) -> torch.device:
    """Logging to stderr, torch threads, TF32 on CUDA; returns the device."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if threads:
        torch.set_num_threads(int(threads))
    device = pick_device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    logging.getLogger("dormant").info("device %s, %d threads", device, torch.get_num_threads())
    return device
