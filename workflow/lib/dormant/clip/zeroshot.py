"""Zero-shot class vectors (docs/methods.md section 9): for each class, the normalised mean over the prompt
templates of the normalised text embeddings of "template filled with the class name" (prompt ensembling,
Radford et al. 2021, section 3.1.4). The templates are the architecture's (``ClipSpec.templates``): the
tiny preset's held-out templates, or the 80 ImageNet templates."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def tokenizer_of(model):
    """The tokenizer of an adapter's architecture."""
    from dormant.clip.text import build_tokenizer

    return build_tokenizer(model.spec.tokenizer, model.spec.context_length)


def prompt_tokens(model, classes: list[str]) -> torch.Tensor:
    """Token ids [K, T, context] of every class's prompts (T templates)."""
    from dormant.clip.captions import class_prompts, zeroshot_templates

    prompts = class_prompts(classes, zeroshot_templates(model.spec.templates))
    tok = tokenizer_of(model)
    return torch.stack([tok(p) for p in prompts])


@torch.no_grad()
def class_embeddings(model, tokens: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Unit class vectors [K, D] from prompt tokens [K, T, context] (fp32, eval mode)."""
    from dormant.runtime import exact

    k, t, c = tokens.shape
    flat = tokens.reshape(k * t, c).to(next(model.parameters()).device)
    was = model.training
    model.eval()
    try:
        with exact(flat.device):
            emb = torch.cat([model.text_features(flat[i : i + batch_size]) for i in range(0, len(flat), batch_size)])
    finally:
        model.train(was)
    return F.normalize(emb.float().view(k, t, -1).mean(1), dim=-1)


def set_zero_shot_classes(model, classes: list[str]) -> None:
    """Recomputes the adapter's class matrix from its (possibly fine-tuned) text tower."""
    model.set_classes(class_embeddings(model, prompt_tokens(model, classes)))
