"""CLIP architectures as zero-shot classifiers (:mod:`dormant.clip.model`; docs/methods.md section 9).
open_clip is imported only when one is built."""

from __future__ import annotations

from torch import nn

from dormant.nets import MODELS


@MODELS.register("clip_tiny")
def clip_tiny(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """A CPU-sized CLIP: the cnn_small trunk as image tower (64-d embedding) and a 2-layer, width-64 text
    transformer over the shipped word vocabulary (context 16); 32x32 inputs."""
    from dormant.clip.model import build_clip

    return build_clip("clip_tiny", num_classes)


@MODELS.register("clip_rn50")
def clip_rn50(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """OpenAI's RN50 CLIP (open_clip's RN50-quickgelu configuration, 1024-d embedding), 224x224 inputs."""
    from dormant.clip.model import build_clip

    return build_clip("clip_rn50", num_classes)
