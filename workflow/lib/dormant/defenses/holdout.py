"""The held-out split of the defender's clean subset (docs/methods.md section 5, "selection leak to avoid").

Defenses that choose a threshold or a pruning level (FP, ANP, NC) choose it on this split, never on test
data: BackdoorBench's FP and ANP tune on the test set (ANP on the poisoned test set), which leaks the
evaluation into the defense. The split is stratified by class and drawn from the defense's seed; the rest
of the subset is what the defense trains or fine-tunes on.
"""

from __future__ import annotations

import torch


def split_holdout(data, fraction: float, seed: int):
    """(fit part, held-out part) of an ImageSet: round(fraction * n_c) images of each class c held out."""
    if not 0 < fraction < 1:
        raise ValueError(f"held-out fraction must be in (0, 1), got {fraction}")
    g = torch.Generator().manual_seed(seed)
    y = data.y.cpu()
    held = []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        k = int(round(fraction * len(idx)))
        held.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    held_idx = torch.cat(held).sort().values
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[held_idx] = False
    return data.subset(torch.nonzero(mask).flatten()), data.subset(held_idx)
