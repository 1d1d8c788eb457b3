"""The paper's 11-layer CNN (section 3.1.3): ten 3x3 conv-BN-ReLU layers, a pool after every two, GAP, FC.

Our reading of "max-pool after every two": the first four pairs are followed by a 2x2 max-pool,
the fifth by the global average pool (a fifth max-pool just before GAP would change nothing but
the minimum input size, 32 instead of 16).  Widths per pair: w, 2w, 4w, 8w, 8w (VGG's doubling,
capped at 8w), default w=64.  Option `dims` builds the 1D or 3D variant of section 2.4.
"""

from __future__ import annotations

import torch
from torch import nn

from . import register
from ._common import conv_layers, init_weights, split_width

_PAIR_WIDTHS = (1, 2, 4, 8, 8)


class ConvUnit(nn.Sequential):
    """One "layer" of the paper's figures: conv, BatchNorm, ReLU."""

    def __init__(self, conv: type, norm: type, in_channels: int, out_channels: int):
        super().__init__(conv(in_channels, out_channels, 3, padding=1, bias=False), norm(out_channels),
                         nn.ReLU(inplace=True))


class PooledConvNet(nn.Module):
    """Stages of two conv-BN-ReLU layers (widths `stage_widths` x w), a 2-wide max-pool between
    stages, global average pooling, FC: the plain CNNs of the paper, in 1, 2 or 3 dimensions."""

    stage_widths: tuple[int, ...] = ()

    def __init__(self, num_classes: int, partitions: int, *, width: int, in_channels: int, dims: int):
        super().__init__()
        conv, norm, pool = conv_layers(dims)
        base = split_width(width, partitions)
        layers: list[nn.Module] = []
        channels = in_channels
        for i, multiple in enumerate(self.stage_widths):
            layers += [ConvUnit(conv, norm, channels, base * multiple),
                       ConvUnit(conv, norm, base * multiple, base * multiple)]
            channels = base * multiple
            if i < len(self.stage_widths) - 1:
                layers.append(pool(2))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)
        self.dims = dims
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.dims + 2:
            layout = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}[self.dims]
            raise ValueError(f"a {self.dims}D CNN takes {layout} input, got shape {tuple(x.shape)}")
        features = self.features(x)
        return self.fc(features.mean(dim=tuple(range(2, features.dim()))))


@register("cnn11")
class CNN11(PooledConvNet):
    stage_widths = _PAIR_WIDTHS
    default_num_classes = 2
    default_input_size = 224

    def __init__(self, num_classes: int, partitions: int = 1, *, width: int = 64, in_channels: int = 3,
                 dims: int = 2):
        super().__init__(num_classes, partitions, width=width, in_channels=in_channels, dims=dims)
