"""The sweep behind config/clip.yaml's poisoning and defense settings (docs/results.md "The CLIP track"):
trains the tiny CLIP on the demo pairs (clean, or poisoned by BadNets/Blended at --ratio), then applies
CleanCLIP/FT variants to a saved backdoored model and prints zero-shot C-ACC / ASR / RA before and after.

    python workflow/scripts/clip_sweep.py pretrain badnets --ratio 0.02 --out /tmp/sweep
    python workflow/scripts/clip_sweep.py defend badnets --ratio 0.02 --out /tmp/sweep --clean-ratio 0.4 \
        --defense '{"lr": 0.002, "lambda_ss": 1.0, "batch_size": 64, "augment": true, "warmup_steps": 60}'

Same library code as the workflow's stages (pairs, poisoning, contrastive loop, zero-shot metrics), without
Snakemake; seed 0; CPU, about 2 minutes per pre-training and 20-80 s per defense on 2 cores."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from dormant.analysis.metrics import evaluate
from dormant.attacks import create_attack
from dormant.clip.captions import eda, training_captions
from dormant.clip.model import build_clip
from dormant.clip.poison import poisoned_pairs, select_pairs
from dormant.clip.train import train_clip
from dormant.clip.zeroshot import set_zero_shot_classes, tokenizer_of
from dormant.data.imageset import ImageSet
from dormant.data.sources import load_source
from dormant.data.subsets import stratified_subset

ATTACKS = {"badnets": {"type": "badnets", "target": 0, "patch_size": 3, "value": 1.0},
           "blended": {"type": "blended", "target": 0, "alpha": 0.2, "pattern_seed": 0, "pattern_path": None}}
PRETRAIN = {"epochs": 12, "batch_size": 128, "lr": 0.001, "weight_decay": 0.1, "warmup_steps": 50, "eval_every": 6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["pretrain", "defend"])
    ap.add_argument("attack", choices=["clean", *ATTACKS])
    ap.add_argument("--ratio", type=float, default=0.02, help="share of poisoned pairs")
    ap.add_argument("--clean-ratio", type=float, default=0.4, help="the defender's share of clean pairs")
    ap.add_argument("--defense", default='{"lambda_ss": 1.0}', help="CleanCLIP keys (JSON) over its defaults")
    ap.add_argument("--out", type=Path, required=True, help="folder of the pre-trained models")
    a = ap.parse_args()
    torch.set_num_threads(2)
    sets = load_source({"dataset": "cifar10", "source": "demo", "path": None, "root": None,
                        "train_per_class": 1000, "test_per_class": 200})
    test = sets["test"]
    train = ImageSet(sets["train"].x, sets["train"].y, sets["train"].classes,
                     text=training_captions(sets["train"].y, sets["train"].classes, 0))
    atk = None
    if a.attack != "clean":
        atk = create_attack({**ATTACKS[a.attack], "ratio": a.ratio}, train.x, train.y, train.num_classes, 0)
        select_pairs(atk, train.y, None, torch.Generator().manual_seed(0))

    def metrics(model):
        set_zero_shot_classes(model, train.classes)
        r = evaluate(model, test, atk or create_attack({**ATTACKS["badnets"], "ratio": 0.0}, train.x, train.y, 10, 0))
        return {k: round(v, 1) for k, v in r.items() if k in ("c_acc", "asr", "ra")}

    path = a.out / f"{a.attack}_{a.ratio}.pt"
    t0 = time.time()
    if a.mode == "pretrain":
        x, caps = poisoned_pairs(train, atk, {}, 0) if atk is not None else (train.x, train.text)
        torch.manual_seed(0)
        model = build_clip("clip_tiny", train.num_classes)
        train_clip(model, x, tokenizer_of(model)(caps), PRETRAIN, seed=0)
        a.out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
        print(json.dumps({"pretrain": a.attack, "ratio": a.ratio, "s": round(time.time() - t0), **metrics(model)}))
        return
    model = build_clip("clip_tiny", train.num_classes)
    model.load_state_dict(torch.load(path, weights_only=True))
    before = metrics(model)
    idx = torch.as_tensor(stratified_subset(train.y, train.num_classes, a.clean_ratio, 0))
    sub = train.subset(idx)
    tok = tokenizer_of(model)
    cfg = {"epochs": 10, "weight_decay": 0.1, **json.loads(a.defense)}
    train_clip(model, sub.x, tok(sub.text), cfg, seed=0, text_views=lambda e: tok(eda(sub.text, e)))
    print(json.dumps({"defend": a.attack, "clean_ratio": a.clean_ratio, "defense": cfg, "before": before,
                      "after": metrics(model), "s": round(time.time() - t0)}))


if __name__ == "__main__":
    main()
