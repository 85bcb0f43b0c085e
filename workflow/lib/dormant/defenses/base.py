"""The defense interface (methods.md section 5).

A defense takes a (possibly backdoored) model and the defender's data and returns a model of the same
architecture. It never sees test data: the stage hands it only ``clean`` -- the clean subset named in
params (5% of the training set by default, one saved index shared by every defense of a run).
"""

from __future__ import annotations

import torch


class Defense:
    """Subclasses implement :meth:`run`. ``cfg`` is the defense's params.yaml entry."""

    def __init__(self, cfg: dict):
        self.cfg = dict(cfg)

    def run(self, model: torch.nn.Module, clean, *, seed: int, checkpoint=None) -> tuple[torch.nn.Module, dict]:
        """Returns (defended model, info dict for the sidecar). ``checkpoint``: resumable state file."""
        raise NotImplementedError
