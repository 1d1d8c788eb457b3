"""Model sizes as the paper counts them: parameters, and FLOPs by eq. 2.10 (batch 1, forward).

A conv costs prod(output spatial) * (2 * C_in/groups * prod(kernel) - 1) * C_out: per output
value, one multiply per weight and one add fewer.  A Linear costs (2 * In - 1) * Out (per position
when it is applied along a sequence).  Bias, BatchNorm, activations and pooling are not counted,
as in the paper.

A recurrent layer (nn.RNN / GRU / LSTM) is counted the same way, per time step, as its two
matrix-vector products: with G gate blocks (1 RNN, 3 GRU, 4 LSTM), H hidden units and layer
input size I, one step of one layer and direction costs G*H*(2*I - 1) for W_ih x_t plus
G*H*(2*H - 1) for W_hh h_{t-1} (with proj_size P: G*H*(2*P - 1) and (2*H - 1)*P for the projection);
T steps cost T times that.  Gate nonlinearities, the GRU's reset product r*(W_hn h) and the LSTM's
cell update are elementwise and, like activations, not counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "GRU": 3, "LSTM": 4}


def _recurrent_flops(module: nn.RNNBase, output) -> int:
    sequence = output[0]
    steps = sequence.shape[0] if sequence.dim() == 2 or not module.batch_first else sequence.shape[1]
    gates, hidden, directions = _GATES[module.mode], module.hidden_size, 2 if module.bidirectional else 1
    recurrent = module.proj_size or hidden
    per_step = 0
    for layer in range(module.num_layers):
        inputs = module.input_size if layer == 0 else directions * recurrent
        one = gates * hidden * (2 * inputs - 1) + gates * hidden * (2 * recurrent - 1)
        if module.proj_size:
            one += (2 * hidden - 1) * module.proj_size
        per_step += directions * one
    return steps * per_step


def _layer_flops(module: nn.Module, output) -> int:
    if isinstance(module, nn.RNNBase):
        return _recurrent_flops(module, output)
    if isinstance(module, _CONVS):
        per_output = 2 * (module.in_channels // module.groups) * math.prod(module.kernel_size) - 1
        return math.prod(output.shape[2:]) * per_output * module.out_channels
    positions = output.numel() // (output.shape[0] * module.out_features)  # > 1 for Linear on sequences
    return positions * (2 * module.in_features - 1) * module.out_features


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass of one sample of shape `input_shape` (no batch axis; the layout the
    model takes, e.g. models.model_defaults(name)["input_shape"]).

    Runs the model once, in eval mode (restored after), on the device of its parameters: build
    it on the meta device (`with torch.device("meta")`) to count VGG16 without computing it.
    """
    total = 0

    def count(module, _inputs, output):
        nonlocal total
        total += _layer_flops(module, output)

    layers = [m for m in model.modules() if isinstance(m, (*_CONVS, nn.Linear, nn.RNNBase))]
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
