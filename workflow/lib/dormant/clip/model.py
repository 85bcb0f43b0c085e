"""The zero-shot adapter: a CLIP model seen as an image classifier (docs/methods.md section 9).

``ZeroShotCLIP`` maps images x in [0, 1] to class logits

    logits = exp(logit_scale) * normalize(encode_image(preprocess(x))) @ W^T

where W holds one unit vector per class: the normalised mean of the normalised text embeddings of that
class's prompts (prompt ensembling, Radford et al. 2021, section 3.1.4). The product with W is an
``nn.Linear`` without bias whose weight is exp(logit_scale) * W, so that every stage written for classifiers
(metrics, BEC, the re-activation attacks, gUAA, the evidence) runs on the adapter unchanged: its input is
the penultimate feature (the normalised image embedding), and ``analysis_layers`` names the image tower's
convolutions. The contrastive losses use ``clip`` (an ``open_clip.CLIP``) directly.

Architectures (``SPECS``): ``clip_tiny`` (this project's CPU-sized CNN as image tower, a 2-layer text
transformer over the shipped word vocabulary; 32x32 inputs) and ``clip_rn50`` (OpenAI's RN50 CLIP as open_clip
defines it, with QuickGELU; 224x224 inputs, BPE tokenizer, context 77).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dormant.clip.specs import SPECS, ClipSpec, is_clip  # noqa: F401  (is_clip: re-exported)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's input normalisation
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_LOGIT_SCALE = 100.0  # CLIP clamps exp(logit_scale) at 100 (Radford et al. 2021, section 2.5)


class Preprocess(nn.Module):
    """Resizes a batch in [0, 1] to the tower's input size (bilinear) when it differs, then normalises it."""

    def __init__(self, size: int, mean=None, std=None):
        super().__init__()
        self.size = size
        self.normalise = mean is not None
        if self.normalise:
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std if self.normalise else x


class ZeroShotCLIP(nn.Module):
    """A CLIP model plus its zero-shot class matrix, as a classifier of images in [0, 1]."""

    def __init__(self, arch: str, clip: nn.Module, num_classes: int, embed_dim: int, preprocess: nn.Module):
        super().__init__()
        self.arch = arch
        self.clip = clip
        self.preprocess = preprocess
        self.head = nn.Linear(embed_dim, num_classes, bias=False)  # exp(logit_scale) * W, set by set_classes
        self.head.weight.requires_grad_(False)
        nn.init.zeros_(self.head.weight)

    @property
    def spec(self) -> ClipSpec:
        return SPECS[self.arch]

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised image embeddings of images in [0, 1]."""
        return F.normalize(self.clip.encode_image(self.preprocess(x)), dim=-1)

    def text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Normalised text embeddings of token ids."""
        return F.normalize(self.clip.encode_text(tokens), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.image_features(x))

    @torch.no_grad()
    def set_classes(self, class_embeddings: torch.Tensor) -> None:
        """Stores exp(logit_scale) * W for unit class vectors ``class_embeddings`` [K, D]."""
        self.head.weight.copy_(self.logit_scale().detach() * class_embeddings.to(self.head.weight))

    def analysis_layers(self) -> list[str]:
        """The image tower's analysis layers (the text tower plays no part in classifying an image)."""
        from dormant.clip.weights import resnet_analysis_layers, vit_analysis_layers

        visual = self.clip.visual
        if hasattr(visual, "analysis_layers"):
            return [f"clip.visual.{n}" for n in visual.analysis_layers()]
        if hasattr(visual, "attnpool"):
            return resnet_analysis_layers("clip.visual", visual)
        return vit_analysis_layers("clip.visual", visual)


def _text_cfg(spec: ClipSpec, **kw) -> dict:
    return {"context_length": spec.context_length, **kw}


def build_clip(arch: str, num_classes: int) -> ZeroShotCLIP:
    """A freshly initialised adapter of architecture ``arch`` (torch's global RNG)."""
    import open_clip

    spec = SPECS[arch]
    if arch == "clip_tiny":
        from dormant.clip.text import vocabulary_size
        from dormant.nets.cifar import SmallCNN

        embed = 64
        # the placeholder vision tower is the smallest open_clip builds; it is replaced by this project's CNN
        clip = open_clip.CLIP(embed_dim=embed,
                              vision_cfg={"layers": [1, 1, 1, 1], "width": 8, "head_width": 8,
                                          "image_size": spec.image_size},
                              text_cfg=_text_cfg(spec, vocab_size=vocabulary_size(), width=64, heads=2, layers=2))
        clip.visual = SmallCNN((32, 64, 128, 256), num_classes=embed)  # its linear head is the projection
        return ZeroShotCLIP(arch, clip, num_classes, embed, Preprocess(spec.image_size))
    cfg = open_clip.get_model_config("RN50-quickgelu")
    clip = open_clip.CLIP(**cfg)
    return ZeroShotCLIP(arch, clip, num_classes, cfg["embed_dim"], Preprocess(spec.image_size, CLIP_MEAN, CLIP_STD))
