"""A 3D ResNet-18 for volumes (paper section 2.4: 3D CNNs, tiles in three dimensions): `resnet3d`.

The blocks of resnet.py with 3x3x3 convs (and 1x1x1 projection shortcuts): a 3x3x3 conv-BN-ReLU
stem at stride 1 (for small volumes such as 32^3, like the CIFAR ResNets' stem), four stages of two
BasicBlocks of widths w, 2w, 4w, 8w (stride 2 entering stages 2-4), GAP, FC.  Input (N, C, D, H, W).
"""

from __future__ import annotations

import torch
from torch import nn

from . import register
from ._common import init_weights, split_width
from .resnet import BasicBlock, make_stage


@register("resnet3d", layers=(2, 2, 2, 2))
class ResNet3d(nn.Module):
    default_num_classes = 10
    default_input_size = 32
    default_dims = 3

    def __init__(self, num_classes: int, partitions: int = 1, *, layers, width: int = 32, in_channels: int = 1):
        super().__init__()
        base = split_width(width, partitions)
        self.conv1 = nn.Conv3d(in_channels, base, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(base)
        self.relu = nn.ReLU(inplace=True)
        channels = base
        for i, blocks in enumerate(layers):
            planes = base * 2**i
            setattr(self, f"layer{i + 1}", make_stage(BasicBlock, channels, planes, blocks, stride=1 if i == 0 else 2,
                                                      dims=3))
            channels = planes
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"resnet3d takes (N, C, D, H, W) input, got shape {tuple(x.shape)}")
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean(dim=(2, 3, 4)))
