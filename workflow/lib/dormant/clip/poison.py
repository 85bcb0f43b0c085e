"""Poisoning image-caption pairs (docs/methods.md section 9; Carlini & Terzis 2022, BadCLIP/CleanCLIP's
setting): the trigger is stamped on exactly N pairs whose caption is not about the target class, and their
captions are replaced by captions of the target class. N is ``clip.poison_count`` (1,500 of 500,000 in
CleanCLIP's setting) or the attack's ``ratio`` of the pairs."""

from __future__ import annotations

import torch

from dormant.errors import ConfigError


def select_pairs(attack, labels: torch.Tensor, count: int | None, generator: torch.Generator) -> torch.Tensor:
    """Sets and returns ``attack.poison_index``: ``count`` (or round(ratio * N)) distinct pairs drawn
    uniformly among those whose caption class is not the target (class -1, unknown, is a candidate)."""
    y = labels.cpu()
    cand = torch.nonzero(y != attack.target).flatten()
    k = int(round(attack.ratio * len(y))) if count is None else int(count)
    if k > len(cand):
        raise ConfigError(f"clip.poison_count: {k} poisoned pairs asked, only {len(cand)} pairs are not of the "
                          "target class")
    attack.poison_index = cand[torch.randperm(len(cand), generator=generator)[:k]].sort().values
    return attack.poison_index


def target_captions(n: int, kind: str, classes: list[str], target: int, seed: int) -> list[str]:
    """``n`` captions of the target class: the training templates with its synonyms (``train``), or the 80
    ImageNet prompt templates filled with its name, one drawn per caption (``openai``, BadCLIP's choice)."""
    from dormant.clip.captions import training_captions, zeroshot_templates

    if kind == "train":
        return training_captions(torch.full((n,), target, dtype=torch.long), classes, seed)
    if kind != "openai":
        raise ConfigError(f"clip.poison_captions: {kind!r} is not one of train, openai")
    templates = zeroshot_templates("openai")
    pick = torch.randint(len(templates), (n,), generator=torch.Generator().manual_seed(seed)).tolist()
    name = classes[target].replace("_", " ")
    return [templates[i].format(name) for i in pick]


def poisoned_pairs(train, attack, clip_cfg: dict, seed: int):
    """(uint8 images, captions) as the attacker releases them: the trigger on the poison index (rounded to
    8 bits like any saved image) and those pairs' captions replaced by target captions."""
    x = attack.poisoned_trainset(train).x
    captions = list(train.text)
    idx = attack.poison_index.tolist()
    new = target_captions(len(idx), clip_cfg.get("poison_captions", "train"), train.classes, attack.target,
                          seed + 7919)
    for i, c in zip(idx, new):
        captions[i] = c
    return x, captions
