"""The transfer attack's cross-architecture surrogates (docs/methods.md section 7; Zhu, Liang & Wu 2024,
section 5.3): VGG19-BN, ResNet-18 with the CIFAR stem, and WRN-28-2, in their usual CIFAR layouts.

Like every model here they take [0, 1] images (normalisation is their first op), expose
``features`` (penultimate, pooled) and ``analysis_layers`` (the 3x3 convolutions after the stem),
and end in a global average pool, so 64x64 inputs (Tiny-ImageNet) work unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dormant.data.augment import CIFAR_MEAN, CIFAR_STD, Normalize
from dormant.nets import MODELS
from dormant.nets.cifar import PreActBlock

VGG19_CONVS = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


class VGG(nn.Module):
    """CIFAR VGG with batch norm: 3x3 conv-BN-ReLU stacks, five max-pools, one linear classifier."""

    def __init__(self, plan, num_classes: int = 10, in_channels: int = 3, mean=CIFAR_MEAN, std=CIFAR_STD):
        super().__init__()
        self.normalize = Normalize(mean, std)
        layers, c = [], in_channels
        for v in plan:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(c, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.body(self.normalize(x))), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))

    def analysis_layers(self) -> list[str]:
        convs = [n for n, m in self.body.named_children() if isinstance(m, nn.Conv2d)]
        return [f"body.{n}" for n in convs[1:]]


class BasicBlock(nn.Module):
    """Post-activation ResNet basic block (He et al. 2016) with a 1x1 conv-BN shortcut when shapes change."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class StagedNet(nn.Module):
    """3x3 stem, residual stages ``layer1..layerN`` (first block of stages 2+ strides by 2), pool, linear.

    ``post_act`` (ResNet: BN-ReLU after the stem) vs pre-activation (WRN: BN-ReLU before the pool)."""

    def __init__(self, block, blocks, widths, stem_width, num_classes=10, in_channels=3, post_act=True,
                 mean=CIFAR_MEAN, std=CIFAR_STD):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.post_act = post_act
        self.conv1 = nn.Conv2d(in_channels, stem_width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width if post_act else widths[-1])
        c = stem_width
        self.num_stages = len(blocks)
        for i, (n, w) in enumerate(zip(blocks, widths)):
            layers = []
            for j in range(n):
                layers.append(block(c, w, 2 if (i > 0 and j == 0) else 1))
                c = w
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(c, num_classes)

    def stages(self) -> list[nn.Module]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        if self.post_act:
            out = F.relu(self.bn1(out))
        for s in self.stages():
            out = s(out)
        if not self.post_act:
            out = F.relu(self.bn1(out))
        return torch.flatten(self.pool(out), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))

    def analysis_layers(self) -> list[str]:
        return [f"layer{i + 1}.{j}.{c}" for i, s in enumerate(self.stages()) for j in range(len(s))
                for c in ("conv1", "conv2")]


@MODELS.register("vgg19_bn")
def vgg19_bn(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """VGG19 with batch norm, CIFAR classifier (one linear layer on the 512 pooled features)."""
    return VGG(VGG19_CONVS, num_classes, in_channels)


@MODELS.register("resnet18")
def resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool)."""
    return StagedNet(BasicBlock, [2, 2, 2, 2], [64, 128, 256, 512], 64, num_classes, in_channels, post_act=True)


@MODELS.register("wrn28_2")
def wrn28_2(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Wide-ResNet 28-2 (Zagoruyko & Komodakis 2016): 4 pre-activation blocks per stage, widths 32-64-128,
    16-channel stem, no dropout."""
    # a wide block without dropout is the pre-activation basic block
    return StagedNet(PreActBlock, [4, 4, 4], [32, 64, 128], 16, num_classes, in_channels, post_act=False)
