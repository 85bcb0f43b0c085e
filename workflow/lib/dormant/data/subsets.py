"""The defender's (or the attacker's) clean share of the training set (docs/methods.md section 5)."""

from __future__ import annotations

import torch


def stratified_subset(y: torch.Tensor, num_classes: int, ratio: float, seed: int) -> torch.Tensor:
    """round(ratio * n_c) indices of each class c, drawn with ``seed``, sorted; the classes are drawn in order
    from one generator, so the subset depends only on the labels, the ratio and the seed.

    Label -1 (an image-caption pair of unknown class, read from a file) is one more group, drawn after the
    classes: a file of pairs gets a uniform draw of round(ratio * n) of them, and a dataset without such labels
    gets exactly the subset it always got."""
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in [*range(num_classes), -1]:
        idx = torch.nonzero(y == c).flatten()
        if c == -1 and len(idx) == 0:
            break
        k = int(round(ratio * len(idx)))
        picks.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    return torch.cat(picks).sort().values
