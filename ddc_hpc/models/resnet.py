"""ImageNet ResNets (He et al. 2016, torchvision's v1.5 layout: stride in the bottleneck's 3x3).

Module names and shapes equal torchvision's, so parameter counts match exactly at partitions=1,
1000 classes, and a torchvision state_dict loads.  The blocks are shared with the CIFAR ResNets.
"""

from __future__ import annotations

import torch
from torch import nn

from . import register
from ._common import conv_layers, init_weights, split_width


def _projection(in_channels: int, out_channels: int, stride: int, dims: int = 2) -> nn.Module | None:
    """1x1 conv + BN shortcut where the block changes shape (option B of He et al.), else None."""
    if stride == 1 and in_channels == out_channels:
        return None
    conv, norm, _ = conv_layers(dims)
    return nn.Sequential(conv(in_channels, out_channels, 1, stride=stride, bias=False), norm(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut (3x3x3 with dims=3, as in resnet3d)."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, dims: int = 2):
        super().__init__()
        conv, norm, _ = conv_layers(dims)
        self.conv1 = conv(in_channels, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = conv(planes, planes, 3, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(in_channels, planes, stride, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, and a shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, dims: int = 2):
        super().__init__()
        conv, norm, _ = conv_layers(dims)
        out_channels = planes * self.expansion
        self.conv1 = conv(in_channels, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = conv(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.conv3 = conv(planes, out_channels, 1, bias=False)
        self.bn3 = norm(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(in_channels, out_channels, stride, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + shortcut)


def make_stage(block: type, in_channels: int, planes: int, blocks: int, stride: int, dims: int = 2) -> nn.Sequential:
    """`blocks` residual blocks; the first one strides and projects."""
    layers = [block(in_channels, planes, stride, dims)]
    layers += [block(planes * block.expansion, planes, dims=dims) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


@register("resnet18", block=BasicBlock, layers=(2, 2, 2, 2))
@register("resnet34", block=BasicBlock, layers=(3, 4, 6, 3))
@register("resnet50", block=Bottleneck, layers=(3, 4, 6, 3))
@register("resnet101", block=Bottleneck, layers=(3, 4, 23, 3))
@register("resnet152", block=Bottleneck, layers=(3, 8, 36, 3))
class ResNet(nn.Module):
    """7x7/2 stem + 3x3/2 max-pool, four stages of widths w, 2w, 4w, 8w (x4 for bottlenecks), GAP, FC."""

    default_num_classes = 1000
    default_input_size = 224

    def __init__(self, num_classes: int, partitions: int = 1, *, block: type, layers, width: int = 64,
                 in_channels: int = 3):
        super().__init__()
        base = split_width(width, partitions)
        self.conv1 = nn.Conv2d(in_channels, base, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = base
        for i, blocks in enumerate(layers):
            planes = base * 2**i
            setattr(self, f"layer{i + 1}", make_stage(block, channels, planes, blocks, stride=1 if i == 0 else 2))
            channels = planes * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
