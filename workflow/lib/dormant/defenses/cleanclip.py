"""CleanCLIP (Bansal et al., ICCV 2023) and FT of a CLIP model on the defender's clean image-caption pairs
(docs/methods.md section 9).

loss = lambda_clip * L_CLIP + lambda_ss * L_SS: the image-text contrastive loss on the clean pairs plus the
in-modal term that pulls each image and each caption towards its own augmented view and away from the
batch's others (:mod:`dormant.clip.loss`). The paper: lambda 1 and 1, AdamW lr 1e-5, batch 64, 10 epochs on
100K clean pairs. FT is this defense with ``lambda_ss: 0``. Caption views: one EDA edit each, drawn per
epoch from the shipped synonym table (offline stand-in for WordNet); image views: batched crop, flip and
colour jitter (stand-in for AutoAugment). Afterwards the zero-shot class matrix is recomputed from the
fine-tuned text tower.
"""

from __future__ import annotations

from dormant.clip.train import defaults as train_defaults
from dormant.defenses import DEFENSES
from dormant.defenses.base import Defense


@DEFENSES.register("cleanclip")
class CleanCLIP(Defense):
    models = "clip"
    defaults = train_defaults(without=("eval_every",), batch_size=64, lr=1e-5, lambda_ss=1.0)

    def run(self, model, clean, *, seed, checkpoint=None, monitor=None, audit=None):
        from dormant.clip.captions import eda
        from dormant.clip.train import train_clip
        from dormant.clip.zeroshot import set_zero_shot_classes, tokenizer_of

        if clean.text is None:
            raise ValueError("cleanclip needs image-caption pairs (a dataset with captions: the CLIP track)")
        tok = tokenizer_of(model)
        device = next(model.parameters()).device
        tokens = tok(clean.text).to(device)

        def views(epoch):
            return tok(eda(clean.text, seed * 100_003 + epoch))

        def observe(m):
            set_zero_shot_classes(m, clean.classes)
            return monitor(m) if monitor is not None else {}

        history = train_clip(model, clean.x, tokens, self.cfg, seed=seed, checkpoint=checkpoint,
                             text_views=views if self.cfg["lambda_ss"] else None, eval_fn=observe,
                             desc=self.type or "cleanclip")
        set_zero_shot_classes(model, clean.classes)
        return model, {"history": history, "changed": True}
