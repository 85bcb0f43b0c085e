"""Supervised training on a resident uint8 dataset (docs/methods.md section 2): one loop for clean and
backdoored models and for fine-tuning defenses (:mod:`dormant.training.loop`), resumable from per-epoch
checkpoints (:mod:`dormant.training.resume`)."""

from dormant.training.loop import DEFAULTS, defaults, lr_at, make_optimizer, train

__all__ = ["DEFAULTS", "defaults", "lr_at", "make_optimizer", "train"]
