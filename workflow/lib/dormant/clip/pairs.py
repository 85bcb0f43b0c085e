"""The CLIP track's training split (docs/methods.md section 9): image-caption pairs.

``clip.captions: generated`` (the tiny offline preset) gives every training image one caption drawn from the
training templates with a synonym of its class and an adjective, seeded by the run's seed; the zero-shot
prompts use held-out templates. ``clip.captions: path`` reads pairs from a CSV/TSV file or WebDataset shards
(:func:`dormant.data.pairs.read_pairs`) at the test images' size; their labels are -1 (class unknown)."""

from __future__ import annotations

import torch


def caption_training_split(sets: dict, data_cfg: dict, clip_cfg: dict, seed: int) -> dict:
    """``sets`` with its train split replaced by (or given) captions."""
    from dormant.clip.captions import training_captions
    from dormant.data.imageset import ImageSet

    test = sets["test"]
    if clip_cfg["captions"] == "generated":
        train = sets["train"]
        return {"train": ImageSet(train.x, train.y, train.classes, text=training_captions(train.y, train.classes,
                                                                                          seed)), "test": test}
    from dormant.data.pairs import read_pairs

    x, text = read_pairs(clip_cfg["pairs"], test.image_shape[-1], limit=clip_cfg.get("pairs_limit"))
    return {"train": ImageSet(x, torch.full((len(x),), -1, dtype=torch.long), test.classes, text=text), "test": test}
