"""Training a CLIP adapter for the model stages (docs/methods.md section 9): the clean CLIP on the clean
pairs and the backdoored CLIP on the poisoned pairs, from scratch or from the user's pre-trained weights
(``clip.weights``), then its zero-shot class matrix."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def new_clip(arch: str, num_classes: int, clip_cfg: dict, device):
    """A fresh adapter, with the pre-trained weights of ``clip.weights`` when set."""
    from dormant.clip.weights import load_pretrained
    from dormant.nets import build_model

    model = build_model(arch, num_classes)
    info = None
    if clip_cfg.get("weights"):
        info = load_pretrained(clip_cfg["weights"], model.clip,
                               allow_torchscript=bool(clip_cfg.get("allow_torchscript")))
        log.info("pre-trained weights %s: %s", clip_cfg["weights"], info)
    return model.to(device), info


def evaluator(test, attack, classes):
    """History metrics: the class matrix of the text tower as it stands, then zero-shot C-ACC/ASR/RA."""
    from dormant.analysis.metrics import evaluate
    from dormant.clip.zeroshot import set_zero_shot_classes

    def run(model):
        set_zero_shot_classes(model, classes)
        return evaluate(model, test, attack)

    return run


def fit_clip(params: dict, sets: dict, attack, *, checkpoint, device):
    """(model, history, info): the adapter trained on the train pairs, poisoned by ``attack`` if given."""
    from dormant.clip.poison import poisoned_pairs
    from dormant.clip.train import train_clip
    from dormant.clip.zeroshot import set_zero_shot_classes, tokenizer_of

    train, test = sets["train"], sets["test"]
    clip_cfg = params.get("clip") or {}
    torch.manual_seed(params["seed"])
    model, weights_info = new_clip(params["model"]["arch"], train.num_classes, clip_cfg, device)
    if attack is not None:
        images, captions = poisoned_pairs(train, attack, clip_cfg, params["seed"])
    else:
        images, captions = train.x, list(train.text)
    tokens = tokenizer_of(model)(captions).to(device)
    history = train_clip(model, images, tokens, params["train"], seed=params["seed"], checkpoint=checkpoint,
                         eval_fn=evaluator(test, attack, train.classes), desc="backdoor" if attack else "clean")
    set_zero_shot_classes(model, train.classes)
    info = {"n_pairs": len(captions), "pretrained": weights_info}
    if attack is not None:
        info["poisoned_captions"] = [captions[i] for i in attack.poison_index[:3].tolist()]
    return model, history, info
