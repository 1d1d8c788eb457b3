"""VGG (Simonyan & Zisserman 2015) with the flatten-FC head the paper composes by eq. 2.13.

Unlike torchvision there is no adaptive pooling before the head: the first FC reads the network's
own final feature map, channels x (input_size // 32) per axis, so a sub-network built for a
140x140 tile has a 4x4 head while the global network at 224x224 has torchvision's 7x7 (and its
parameter count, 138,357,544 for VGG16).  That FC carries `feature_shape = (C, h, w)`, which is
how `compose` recognises a flatten-FC.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import register
from ._common import init_weights, split_width

# Conv widths in multiples of the base width; "M" is a 2x2 max-pool.
_LAYOUTS = {
    "vgg11": (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"),
    "vgg13": (1, 1, "M", 2, 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"),
    "vgg16": (1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"),
    "vgg19": (1, 1, "M", 2, 2, "M", 4, 4, 4, 4, "M", 8, 8, 8, 8, "M", 8, 8, 8, 8, "M"),
}


def _feature_size(input_size: int | Sequence[int]) -> tuple[int, int]:
    """Spatial size of the feature map after the five 2x2 max-pools."""
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(size) != 2 or any(not isinstance(s, int) or s < 32 for s in size):
        raise ValueError(f"VGG input_size must be an int or (height, width) of at least 32 px "
                         f"(five 2x2 max-pools), got {input_size!r}")
    return size[0] // 32, size[1] // 32


@register("vgg11", layout=_LAYOUTS["vgg11"])
@register("vgg13", layout=_LAYOUTS["vgg13"])
@register("vgg16", layout=_LAYOUTS["vgg16"])
@register("vgg19", layout=_LAYOUTS["vgg19"])
class VGG(nn.Module):
    """3x3 conv-ReLU stacks and max-pools, flatten, FC-ReLU-Dropout x2, FC."""

    default_num_classes = 1000
    default_input_size = 224

    def __init__(self, num_classes: int, partitions: int = 1, *, layout, width: int = 64, in_channels: int = 3,
                 input_size: int | Sequence[int] = 224, fc_width: int = 4096, dropout: float = 0.5):
        super().__init__()
        height, width_px = _feature_size(input_size)
        base, hidden = split_width(width, partitions), split_width(fc_width, partitions)
        layers: list[nn.Module] = []
        channels = in_channels
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, base * item, 3, padding=1), nn.ReLU(inplace=True)]
                channels = base * item
        self.features = nn.Sequential(*layers)
        flatten_fc = nn.Linear(channels * height * width_px, hidden)
        flatten_fc.feature_shape = (channels, height, width_px)
        self.classifier = nn.Sequential(
            flatten_fc, nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        expected = self.classifier[0].feature_shape
        if features.shape[1:] != expected:
            raise ValueError(f"VGG built for a {expected[1:]} feature map got input {tuple(x.shape[2:])} "
                             f"-> {tuple(features.shape[2:])}; build it with input_size = the input's size")
        return self.classifier(torch.flatten(features, 1))
