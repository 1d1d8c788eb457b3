"""Fully connected networks with decomposed input features (paper section 2.4): `mlp`, `mlp_autoencoder`.

The input is a feature vector of `in_features` values per channel, (N, F) or (N, C, F), decomposed
like an image: a 1D grid of K segments (tiles) over the feature axis, with optional overlap and crop.
A sub-network is built with `in_features` = its segment's length (as VGG is built with its tile's
`input_size`), so its first layer reads only its segment.  `depth` hidden layers of `width` units
(Linear-BatchNorm-ReLU), then the output layer: `num_classes` logits or regression targets, or, for
`mlp_autoencoder`, a reconstruction of the input's shape (`num_classes` is not used).

The first layer carries `input_shape = (C, F)`: compose puts sub-network k's columns at segment k
(all channels) and zeros elsewhere, so the composed net computes F(x) = sum_k F_k(x_k) exactly.
The autoencoder's output layer carries `output_shape = (C, F)`: sub k's rows go to segment k, so
F(x) restricted to segment k is F_k(x_k) (where segments overlap, their mean).
"""

from __future__ import annotations

import torch
from torch import nn

from . import register
from ._common import split_width


@register("mlp", autoencoder=False)
@register("mlp_autoencoder", autoencoder=True)
class MLP(nn.Module):
    default_num_classes = 10
    default_input_size = 64  # in_features
    default_dims = 1

    def __init__(self, num_classes: int, partitions: int = 1, *, autoencoder: bool, in_features: int = 64,
                 in_channels: int = 1, width: int = 256, depth: int = 2):
        super().__init__()
        for option, value in (("in_features", in_features), ("in_channels", in_channels), ("depth", depth)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"mlp: {option} must be a positive int, got {value!r}")
        hidden = split_width(width, partitions)
        self.input_shape = (in_channels, in_features)
        self.autoencoder = autoencoder
        layers: list[nn.Module] = []
        features = in_channels * in_features
        for i in range(depth):
            linear = nn.Linear(features, hidden)
            if i == 0:
                linear.input_shape = self.input_shape
            layers += [linear, nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
            features = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, in_channels * in_features if autoencoder else num_classes)
        if autoencoder:
            self.head.output_shape = self.input_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels, features = self.input_shape
        if tuple(x.shape[1:]) != self.input_shape and not (channels == 1 and tuple(x.shape[1:]) == (features,)):
            raise ValueError(f"mlp built for in_features={features}, in_channels={channels} takes (N, {channels}, "
                             f"{features})" + (f" or (N, {features})" if channels == 1 else "")
                             + f" input, got {tuple(x.shape)}; build it with in_features = the input's length")
        out = self.head(self.body(x.flatten(1)))
        return out.view(x.shape) if self.autoencoder else out
