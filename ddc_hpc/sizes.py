"""Model sizes as the paper counts them: parameters, and FLOPs by eq. 2.10 (batch 1, forward).

A conv costs prod(output spatial) * (2 * C_in/groups * prod(kernel) - 1) * C_out: per output
value, one multiply per weight and one add fewer.  A Linear costs (2 * In - 1) * Out.  Bias,
BatchNorm, activations and pooling are not counted, as in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _layer_flops(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, _CONVS):
        per_output = 2 * (module.in_channels // module.groups) * math.prod(module.kernel_size) - 1
        return math.prod(output.shape[2:]) * per_output * module.out_channels
    positions = output.numel() // (output.shape[0] * module.out_features)  # > 1 for Linear on sequences
    return positions * (2 * module.in_features - 1) * module.out_features


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass of one sample of shape `input_shape` (channels first, no batch).

    Runs the model once, in eval mode (restored after), on the device of its parameters: build
    it on the meta device (`with torch.device("meta")`) to count VGG16 without computing it.
    """
    total = 0

    def count(module, _inputs, output):
        nonlocal total
        total += _layer_flops(module, output)

    layers = [m for m in model.modules() if isinstance(m, (*_CONVS, nn.Linear))]
    handles = [m.register_forward_hook(count) for m in layers]
    modes = [m.training for m in model.modules()]
    parameter = next(model.parameters())
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, dtype=parameter.dtype, device=parameter.device))
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in zip(model.modules(), modes):
            module.training = mode
    return total


__all__ = ["count_params", "count_flops"]
