"""Parameter names of models trained elsewhere, mapped exactly onto this project's architectures.

Each mapping is a bijection between this project's state-dict keys and the foreign ones, with every shape
checked; a key of either side left unmatched is an error naming it. Nothing is guessed: an architecture
whose foreign layout is a different network is refused (:data:`REFUSED`), not approximated.

BackdoorBench (Wu et al., NeurIPS 2022) ``models/preact_resnet.py``: ``conv1``, ``layer{1-4}.{j}.bn1 / conv1
/ bn2 / conv2`` (pre-activation blocks), ``layer{i}.{j}.shortcut.0`` (a 1x1 convolution wrapped in a
Sequential, in the first block of stages 2-4), adaptive average pool, ``linear``; no BN after the last stage
and no normalisation layer (BackdoorBench normalises in the data transform). This project's
:class:`dormant.nets.cifar.PreActResNet` is the same network with ``shortcut`` an unwrapped convolution and
normalisation as its first, parameter-free op; the only rename is ``shortcut.weight`` <-> ``shortcut.0.weight``.
"""

from __future__ import annotations

import re

# BackdoorBench's model_name -> this project's architecture
BB_MODELS = {"preactresnet18": "preact_resnet18"}

# this project's architectures with a BackdoorBench layout (the PreActResNet family); `dormant export` names
# the ones BackdoorBench lacks by their own name
BB_LAYOUT_ARCHS = ("preact_resnet18", "preact_resnet_tiny")

# foreign architectures (BackdoorBench model_name, or this project's arch for state dicts) that cannot be
# mapped exactly, and why
REFUSED = {
    "resnet18": "BackdoorBench's resnet18 is torchvision's (7x7 stride-2 stem, max-pool, 'fc', 'downsample'); "
                "this project's resnet18 has the CIFAR 3x3 stem without max-pool: a different network",
    "resnet34": "torchvision ResNet-34; no ResNet-34 here",
    "vgg19_bn": "BackdoorBench's vgg19_bn is torchvision's (7x7 pool, three linear layers of 4096); this "
                "project's vgg19_bn has one linear layer on 512 pooled features: a different network",
    "vgg19": "torchvision VGG19 without batch norm; no such network here",
    "vgg16": "torchvision VGG16; no such network here",
}


def bb_key(key: str) -> str:
    """BackdoorBench's name of one of this project's PreActResNet keys."""
    return re.sub(r"^(layer\d+\.\d+\.shortcut)\.weight$", r"\1.0.weight", key)


def project_to_foreign(arch: str, layout: str, keys) -> dict[str, str]:
    """{this project's key: foreign key} of architecture ``arch`` in ``layout`` ('dormant' or 'backdoorbench')."""
    if layout == "dormant":
        return {k: k for k in keys}
    if layout == "backdoorbench" and arch in BB_LAYOUT_ARCHS:
        return {k: bb_key(k) for k in keys}
    raise KeyError(arch)
