"""Helpers every model family shares: the width split of eq. 2.7-2.8 and the weight init."""

from __future__ import annotations

from torch import nn


def split_width(channels: int, partitions: int) -> int:
    """Hidden width of one of `partitions` sub-networks of a layer `channels` wide.

    The registry checks every layer of the global network first and names the one that does not
    split; this guard only catches a width that no layer carries.
    """
    if channels % partitions:
        raise ValueError(f"{channels} channels do not split into {partitions} sub-networks")
    return channels // partitions


def conv_layers(dims: int) -> tuple[type, type, type]:
    """(Conv, BatchNorm, MaxPool) classes for 1-, 2- or 3-dimensional inputs (paper section 2.4)."""
    layers = {
        1: (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d),
        2: (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d),
        3: (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d),
    }
    if dims not in layers:
        raise ValueError(f"dims must be 1, 2 or 3, got {dims!r}")
    return layers[dims]


def init_weights(model: nn.Module) -> None:
    """torchvision's init: He-normal (fan-out) convs, BatchNorm at identity; Linear left at default."""
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
