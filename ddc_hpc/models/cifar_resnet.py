"""CIFAR ResNets of depth 6n+2 (He et al. 2016, section 4.2), the paper's CIFAR networks.

Stage widths w, 2w, 4w; the paper uses w=64 (ResNet32: 7.44M parameters), He et al. w=16.
Shortcuts are 1x1 conv + BN projections where the shape changes (option B).
"""

from __future__ import annotations

import torch
from torch import nn

from . import register
from ._common import init_weights, split_width
from .resnet import BasicBlock, make_stage


@register("cifar_resnet20", depth=20)
@register("cifar_resnet32", depth=32)
@register("cifar_resnet44", depth=44)
@register("cifar_resnet56", depth=56)
@register("cifar_resnet110", depth=110)
class CifarResNet(nn.Module):
    """3x3 conv-BN-ReLU stem, three stages of n BasicBlocks (stride 2 entering stages 2, 3), GAP, FC."""

    default_num_classes = 10
    default_input_size = 32

    def __init__(self, num_classes: int, partitions: int = 1, *, depth: int, width: int = 64,
                 in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has 6n+2 layers, got depth {depth}")
        blocks = (depth - 2) // 6
        base = split_width(width, partitions)
        self.conv1 = nn.Conv2d(in_channels, base, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_stage(BasicBlock, base, base, blocks, stride=1)
        self.layer2 = make_stage(BasicBlock, base, 2 * base, blocks, stride=2)
        self.layer3 = make_stage(BasicBlock, 2 * base, 4 * base, blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * base, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))
