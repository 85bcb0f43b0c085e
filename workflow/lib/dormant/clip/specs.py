"""What each CLIP architecture fixes besides its weights (docs/methods.md section 9.3); no imports, so that the
config check can tell the tracks apart without loading the CLIP code."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClipSpec:
    """What an architecture fixes besides its weights: input size, tokenizer, zero-shot templates."""

    image_size: int
    tokenizer: str  # "words" (dormant.clip.text.WordTokenizer) or "bpe" (open_clip's)
    context_length: int
    templates: str  # zero-shot prompt templates: "heldout" (captions.yaml) or "openai" (the 80 ImageNet ones)


SPECS = {
    "clip_tiny": ClipSpec(image_size=32, tokenizer="words", context_length=16, templates="heldout"),
    "clip_rn50": ClipSpec(image_size=224, tokenizer="bpe", context_length=77, templates="openai"),
}


def is_clip(arch: str) -> bool:
    return arch in SPECS
