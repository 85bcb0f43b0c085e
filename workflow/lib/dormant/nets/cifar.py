"""Model zoo: PreAct-ResNet18 (the papers' main architecture) and a small PreAct-ResNet for CPU runs.

Every model exposes ``analysis_layers()``: the names of the 3x3 convolutions inside its
residual stages (stem and 1x1 shortcuts excluded), the layers on which BEC is computed
(docs/methods.md section 6.1). Models take [0, 1] inputs and normalise them with :mod:`dormant.data.augment`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dormant.data.augment import CIFAR_MEAN, CIFAR_STD, Normalize
from dormant.nets import MODELS


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016, 'Identity Mappings in Deep Residual Networks')."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        short = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + short


class PreActResNet(nn.Module):
    """CIFAR-style PreAct-ResNet: 3x3 stem, one stage per entry of ``blocks``, global pool, linear head.

    Matches the layout used by BackdoorBench's PreAct-ResNet18 (no final BN before pooling).
    Inputs are images in [0, 1]; normalisation is the first op, so perturbations and triggers
    live in pixel space as docs/methods.md section 7 prescribes.
    """

    def __init__(self, blocks: list[int], widths: list[int], num_classes: int = 10, in_channels: int = 3,
                 mean=CIFAR_MEAN, std=CIFAR_STD):
        super().__init__()
        if len(blocks) != len(widths):
            raise ValueError("blocks and widths must have the same length")
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        stages = []
        in_planes = widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths)):
            layers = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(PreActBlock(in_planes, w, stride))
                in_planes = w
            stages.append(nn.Sequential(*layers))
        # stages are named layer1..layerN so that hooks read like the papers ("layer3", "layer4")
        self.num_stages = len(stages)
        for i, s in enumerate(stages):
            self.add_module(f"layer{i + 1}", s)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate (pooled) features of a batch of [0, 1] images."""
        out = self.conv1(self.normalize(x))
        for s in self.stages():
            out = s(out)
        return torch.flatten(self.avgpool(out), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))

    def stages(self) -> list[nn.Module]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def analysis_layers(self) -> list[str]:
        names = []
        for i, s in enumerate(self.stages()):
            for j in range(len(s)):
                names += [f"layer{i + 1}.{j}.conv1", f"layer{i + 1}.{j}.conv2"]
        return names


class SmallCNN(nn.Module):
    """A fast VGG-style CNN for CPU-sized runs: 3x3 stem at full resolution, then three
    (max-pool, 3x3 conv, BN, ReLU) blocks at 16, 8 and 4 pixels, global average pool, linear head.
    About 15 M multiply-adds per 32x32 image (PreAct-ResNet18: 560 M). (A global max-pool head
    trained unstably on poisoned data in our runs: loss 4.3 vs 1.9 in the first epoch.)"""

    def __init__(self, widths=(32, 64, 128, 256), num_classes: int = 10, in_channels: int = 3,
                 mean=CIFAR_MEAN, std=CIFAR_STD):
        super().__init__()
        self.normalize = Normalize(mean, std)

        def conv_bn(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        self.stem = conv_bn(in_channels, widths[0])
        self.blocks = len(widths) - 1
        for i in range(self.blocks):
            self.add_module(f"block{i + 1}", nn.Sequential(nn.MaxPool2d(2), conv_bn(widths[i], widths[i + 1])))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(widths[-1], num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(self.normalize(x))
        for i in range(self.blocks):
            out = getattr(self, f"block{i + 1}")(out)
        return torch.flatten(self.pool(out), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))

    def analysis_layers(self) -> list[str]:
        """The 3x3 convs after the stem (there are no residual stages here)."""
        return [f"block{i + 1}.1.0" for i in range(self.blocks)]


@MODELS.register("preact_resnet18")
def preact_resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """PreAct-ResNet18, the main architecture of both papers (16 analysis convs)."""
    return PreActResNet([2, 2, 2, 2], [64, 128, 256, 512], num_classes, in_channels)


@MODELS.register("cnn_small")
def cnn_small(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """The CPU-sized model of the default run (0.39 M parameters; 3 analysis convs)."""
    return SmallCNN((32, 64, 128, 256), num_classes, in_channels)


@MODELS.register("cnn_tiny")
def cnn_tiny(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """A toy CNN for unit tests and smoke runs (widths 8-16-32-32)."""
    return SmallCNN((8, 16, 32, 32), num_classes, in_channels)


@MODELS.register("preact_resnet_tiny")
def preact_resnet_tiny(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """A toy PreAct-ResNet with the same layer naming as PreAct-ResNet18 (widths 8-16-32; 6 analysis convs)."""
    return PreActResNet([1, 1, 1], [8, 16, 32], num_classes, in_channels)
