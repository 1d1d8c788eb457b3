"""Composition of K trained sub-networks into the global network (eq. 2.11-2.14), Theorem 2.1's
check, and flat state vectors for the Gatherv that brings the sub-networks to one rank.

`compose` is written once for every model: it walks the global network beside each sub-network
and decides each layer's assembly from the shapes alone.  With global weight (O, I) and sub
weight (o, i) (per-group input channels for convs):

  O == K*o, I == K*i   hidden layer: block-diagonal, cross blocks exactly zero (eq. 2.12);
                       a grouped conv with K times the sub-network's groups: concatenation
  O == K*o, I == i     first layer: outputs concatenated (eq. 2.11)
  O == o,   I == K*i   last layer: inputs concatenated, bias summed, so logits = sum of
                       sub-logits (eq. 2.14); "regression" divides by K (mean, eq. 2.22)
  Linear with `feature_shape` (flatten-FC, eq. 2.13): sub k's columns go to channel group k at
                       tile k's activation field of the global feature map, zeros elsewhere
  BatchNorm            weight, bias, running stats concatenated; num_batches_tracked = max
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

from .partition import default_grid

TASKS = ("classification", "regression", "autoencoder")
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM_STATE = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


def field_origins(global_spatial: Sequence[int], sub_spatial: Sequence[int], grid: Sequence[int]) -> list[tuple[int, ...]]:
    """Where each tile's activation field starts in the global feature map, tiles row-major.

    The fields are spread like the tiles themselves (partition.tile_slices_nd): the first starts
    at 0, the last ends at the border, origin i of g along an axis is round(i*(H-h)/(g-1)).
    """
    if not len(global_spatial) == len(sub_spatial) == len(grid):
        raise ValueError(f"feature map {tuple(global_spatial)}, field {tuple(sub_spatial)} and grid "
                         f"{tuple(grid)} must have one entry per spatial axis")
    axes = []
    for size, field, parts in zip(global_spatial, sub_spatial, grid):
        if not 0 < field <= size or parts < 1:
            raise ValueError(f"a {tuple(sub_spatial)} field on a {tuple(global_spatial)} feature map "
                             f"with a {tuple(grid)} grid does not fit")
        axes.append([0] if parts == 1 else [round(i * (size - field) / (parts - 1)) for i in range(parts)])
    return list(itertools.product(*axes))


def _label(name: str) -> str:
    return name or "<root module>"


def _aligned_modules(global_net: nn.Module, subnets: Sequence[nn.Module]):
    """(name, global module, [sub modules]) for every module; structures must agree."""
    global_modules = list(global_net.named_modules())
    sub_modules = [list(s.named_modules()) for s in subnets]
    for k, modules in enumerate(sub_modules):
        if len(modules) != len(global_modules):
            raise ValueError(f"sub-network {k} has {len(modules)} modules, the global network "
                             f"{len(global_modules)}: not the same architecture")
    for i, (name, module) in enumerate(global_modules):
        parts = []
        for k, modules in enumerate(sub_modules):
            sub_name, sub = modules[i]
            if sub_name != name or type(sub) is not type(module):
                raise ValueError(f"sub-network {k} does not match the global network: module {i} is "
                                 f"{_label(sub_name)} ({type(sub).__name__}) there and "
                                 f"{_label(name)} ({type(module).__name__}) in the global network")
            parts.append(sub)
        yield name, module, parts


def _own_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers held by the module itself (not its children)."""
    state = dict(module.named_parameters(recurse=False))
    state.update(module.named_buffers(recurse=False))
    return {n: t for n, t in state.items() if t is not None}


def _write(name: str, tensor_name: str, target: torch.Tensor, value: torch.Tensor) -> None:
    if target.shape != value.shape:
        raise ValueError(f"{_label(name)}.{tensor_name}: global shape {tuple(target.shape)} does not "
                         f"fit sub-network shape {tuple(value.shape)}")
    target.copy_(value)


def _compose_norm(name: str, module: nn.Module, parts: list[nn.Module]) -> None:
    """BatchNorm is per channel: stack the channel groups."""
    for tensor_name, target in _own_state(module).items():
        values = [_own_state(p).get(tensor_name) for p in parts]
        if any(v is None for v in values):
            raise ValueError(f"{_label(name)}: a sub-network lacks {tensor_name}")
        if tensor_name == "num_batches_tracked":
            target.copy_(torch.stack([v.to(target.device) for v in values]).max())
        else:
            _write(name, tensor_name, target, torch.cat([v.to(target) for v in values]))


def _input_blocks(name: str, module: nn.Module, parts: list[nn.Module], weight: torch.Tensor,
                  sub_weight: torch.Tensor, grid) -> tuple[list[tuple], tuple, tuple] | None:
    """Where sub k's weight goes along the input axes, as (index per k, global view, sub view) shapes.

    None means the input is not split (a first layer: every sub-network reads the whole input).
    """
    K = len(parts)
    feature_shape = getattr(module, "feature_shape", None)
    if feature_shape is not None:
        sub_shape = getattr(parts[0], "feature_shape", None)
        if sub_shape is None or feature_shape[0] != K * sub_shape[0] or weight.shape[1] != math.prod(feature_shape) \
                or sub_weight.shape[1] != math.prod(sub_shape):
            raise ValueError(f"{_label(name)}: flatten-FC over a {tuple(feature_shape)} feature map cannot be "
                             f"composed from {K} sub-networks over {sub_shape} feature maps")
        channels = sub_shape[0]
        spatial_grid = tuple(grid) if grid is not None else default_grid(K, len(feature_shape) - 1)
        origins = field_origins(feature_shape[1:], sub_shape[1:], spatial_grid)
        if len(origins) != K:
            raise ValueError(f"{_label(name)}: grid {spatial_grid} has {len(origins)} tiles for {K} sub-networks")
        index = [(slice(k * channels, (k + 1) * channels), *(slice(o, o + s) for o, s in zip(origin, sub_shape[1:])))
                 for k, origin in enumerate(origins)]
        return index, tuple(feature_shape), tuple(sub_shape)
    groups, sub_groups = getattr(module, "groups", 1), getattr(parts[0], "groups", 1)
    if groups > 1 or sub_groups > 1:
        if groups != K * sub_groups or weight.shape[0] != K * sub_weight.shape[0]:
            raise ValueError(f"{_label(name)}: a grouped conv with {groups} groups and {weight.shape[0]} outputs "
                             f"cannot be composed block-diagonally from {K} sub-networks with {sub_groups} groups "
                             f"and {sub_weight.shape[0]} outputs (needs K times both)")
        return [(slice(None),)] * K, (weight.shape[1],), (sub_weight.shape[1],)  # per-group input: cat = block-diagonal
    inputs, sub_inputs = weight.shape[1], sub_weight.shape[1]
    if inputs == K * sub_inputs:
        return [(slice(k * sub_inputs, (k + 1) * sub_inputs),) for k in range(K)], (inputs,), (sub_inputs,)
    if inputs == sub_inputs:
        return None
    raise ValueError(f"{_label(name)}: global weight {tuple(weight.shape)} is neither split nor shared against "
                     f"sub-network weight {tuple(sub_weight.shape)} with {K} sub-networks")


def _compose_affine(name: str, module: nn.Module, parts: list[nn.Module], task: str, grid) -> None:
    """Conv or Linear: the weight layout follows from the output and input splits (table above)."""
    state = _own_state(module)
    if set(state) - {"weight", "bias"}:
        raise TypeError(f"{_label(name)}: {type(module).__name__} holds {sorted(state)}; compose knows weight and bias")
    if isinstance(module, _CONVS):
        for attr in ("kernel_size", "stride", "padding", "dilation", "padding_mode"):
            if any(getattr(p, attr) != getattr(module, attr) for p in parts):
                raise ValueError(f"{_label(name)}: {attr} differs between the global network and a sub-network")
    K = len(parts)
    weight, sub_weights = module.weight, [p.weight for p in parts]
    if any(w.shape != sub_weights[0].shape for w in sub_weights):
        raise ValueError(f"{_label(name)}: sub-network weights differ in shape: {[tuple(w.shape) for w in sub_weights]}")
    outputs, sub_outputs = weight.shape[0], sub_weights[0].shape[0]
    kernel = tuple(weight.shape[2:])
    if kernel != tuple(sub_weights[0].shape[2:]):
        raise ValueError(f"{_label(name)}: kernel {kernel} vs sub-network {tuple(sub_weights[0].shape[2:])}")
    split_outputs = outputs == K * sub_outputs
    if not split_outputs and outputs != sub_outputs:
        raise ValueError(f"{_label(name)}: {outputs} outputs cannot be composed from {K} sub-networks "
                         f"with {sub_outputs} outputs")
    blocks = _input_blocks(name, module, parts, weight, sub_weights[0], grid)
    if not split_outputs:
        if blocks is None:
            raise ValueError(f"{_label(name)}: neither inputs nor outputs are split: {tuple(weight.shape)} from "
                             f"{K} x {tuple(sub_weights[0].shape)}")
        if task == "autoencoder":
            raise ValueError(f"{_label(name)}: an autoencoder's layers must all split their outputs (the output "
                             f"is the concatenation), but this layer sums {K} sub-networks' outputs")
    scale = 1.0 / K if task == "regression" and not split_outputs else 1.0

    # A first layer reads the whole input: sub k's block spans every input column.
    index, view, sub_view = blocks or ([()] * K, (weight.shape[1],), (sub_weights[0].shape[1],))
    assembled = torch.zeros((outputs, *view, *kernel), dtype=weight.dtype, device=weight.device)
    for k, sub_weight in enumerate(sub_weights):
        rows = slice(k * sub_outputs, (k + 1) * sub_outputs) if split_outputs else slice(None)
        _write(name, "weight", assembled[(rows, *index[k])],
               scale * sub_weight.reshape(sub_outputs, *sub_view, *kernel).to(weight))
    _write(name, "weight", weight, assembled.reshape(weight.shape))

    biases = [p.bias for p in parts]
    if any((b is None) != ("bias" not in state) for b in biases):
        raise ValueError(f"{_label(name)}: the global layer and a sub-network disagree on having a bias")
    if "bias" in state:
        biases = [b.to(weight) for b in biases]
        _write(name, "bias", module.bias, torch.cat(biases) if split_outputs else scale * torch.stack(biases).sum(0))


def compose(subnets: Sequence[nn.Module], global_net: nn.Module, task: str = "classification",
            grid: Sequence[int] | None = None) -> nn.Module:
    """Fill `global_net`'s parameters and buffers in place from its K sub-networks; returns it.

    `grid` is the tile grid (default `partition.default_grid(K)`), needed only to place a
    flatten-FC's fields.  Any other module that holds parameters or buffers is an error, so an
    unsupported layer is never silently left at its random initialisation.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    subnets = list(subnets)
    if not subnets:
        raise ValueError("compose needs at least one sub-network")
    with torch.no_grad():
        for name, module, parts in _aligned_modules(global_net, subnets):
            state = _own_state(module)
            if not state:
                continue
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and set(state) <= _NORM_STATE:
                _compose_norm(name, module, parts)
            elif isinstance(module, (*_CONVS, nn.Linear)):
                _compose_affine(name, module, parts, task, grid)
            else:
                raise TypeError(f"{_label(name)}: cannot compose a {type(module).__name__} (it holds "
                                f"{', '.join(sorted(state))}); compose supports Conv1d/2d/3d, Linear and BatchNorm")
    return global_net


@contextlib.contextmanager
def _checking_mode(nets: Sequence[nn.Module], train: bool):
    """Put every module in train or eval mode; afterwards restore the modes and the buffers
    (a train-mode forward updates BatchNorm's running statistics)."""
    modes = [[m.training for m in net.modules()] for net in nets]
    buffers = [[b.clone() for b in net.buffers()] for net in nets]
    try:
        for net in nets:
            net.train(train)
        yield
    finally:
        with torch.no_grad():
            for net, net_modes, net_buffers in zip(nets, modes, buffers):
                for module, mode in zip(net.modules(), net_modes):
                    module.training = mode
                for buffer, saved in zip(net.buffers(), net_buffers):
                    buffer.copy_(saved)


def _on_device_of(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`x` on the device `net` lives on (sub-networks may arrive on another device)."""
    tensor = next(itertools.chain(net.parameters(), net.buffers()), None)
    return x if tensor is None else x.to(tensor.device)


def flatten_fc_layers(model: nn.Module) -> list[str]:
    """Names of the Linear layers that read a flattened feature map (they carry `feature_shape`).

    A network with one does not satisfy F(x) = sum_k F_k(x) on a full-size x: its sub-networks'
    heads are built for tiles.  Theorem 2.1 holds exactly only for networks that pool globally.
    """
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and hasattr(m, "feature_shape")]


def theorem_error(global_net: nn.Module, subnets: Sequence[nn.Module], x: torch.Tensor,
                  task: str = "classification", sub_inputs: Sequence[torch.Tensor] | None = None,
                  train: bool = False) -> dict[str, float]:
    """How far the composed network is from Theorem 2.1 on the batch `x`.

    classification: F(x) vs sum_k F_k(x); regression: vs the mean; autoencoder: vs the
    concatenation of F_k(sub_inputs[k]) (default: x cut into K feature groups along dim 1).
    Sub-network k reads sub_inputs[k], by default x itself.  `train=True` checks with batch
    statistics (meaningless with dropout).  Modes and BatchNorm statistics are left as found.
    Returns max_abs = max |F(x) - reference| and max_rel = max_abs / max |F(x)|.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if flatten_fc_layers(global_net):
        raise ValueError(f"{flatten_fc_layers(global_net)[0]} is a flatten-FC head: F(x) = sum_k F_k(x) holds only "
                         "for networks that end in global pooling (check such a network with flatten_fc_layers first)")
    subnets = list(subnets)
    if sub_inputs is None:
        sub_inputs = list(x.chunk(len(subnets), dim=1)) if task == "autoencoder" else [x] * len(subnets)
    if len(sub_inputs) != len(subnets):
        raise ValueError(f"{len(sub_inputs)} sub-network inputs for {len(subnets)} sub-networks")
    with torch.no_grad(), _checking_mode([global_net, *subnets], train):
        output = global_net(_on_device_of(global_net, x))
        sub_outputs = [net(_on_device_of(net, inp)).to(output) for net, inp in zip(subnets, sub_inputs)]
    if task == "autoencoder":
        reference = torch.cat(sub_outputs, dim=1)
    else:
        reference = torch.stack(sub_outputs).sum(0)
        if task == "regression":
            reference = reference / len(subnets)
    max_abs = (output - reference).abs().max().item()
    scale = output.abs().max().item()
    return {"max_abs": max_abs, "max_rel": max_abs / scale if scale else max_abs}


def _state_tensors(module: nn.Module) -> list[torch.Tensor]:
    return list(module.state_dict(keep_vars=True).values())


def state_numel(module: nn.Module) -> int:
    """Number of elements of flatten_state(module)."""
    return sum(t.numel() for t in _state_tensors(module))


def flatten_state(module: nn.Module) -> torch.Tensor:
    """All parameters and buffers (BatchNorm statistics and num_batches_tracked included), in
    state_dict order, as one 1-D tensor: what a rank sends in the compose phase's Gatherv.

    The dtype is float32, or float64 for a float64 state (bf16/fp16 states are widened, not
    rounded further).  Integer buffers are cast to it;
    an integer the dtype cannot hold exactly (above 2**24 in float32) raises instead of being
    rounded, so unflatten_state always restores the exact state.
    """
    state = module.state_dict(keep_vars=True)
    dtype = torch.float32
    for t in state.values():
        if t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    exact = 2 / torch.finfo(dtype).eps  # the largest integer every smaller one is exact below
    for name, t in state.items():
        if not t.is_floating_point() and t.numel() and t.abs().max().item() > exact:
            raise ValueError(f"{name} = {t.abs().max().item()} is not exact in {dtype}: cannot flatten")
    if not state:
        return torch.zeros(0, dtype=dtype)
    device = next(iter(state.values())).device
    return torch.cat([t.detach().reshape(-1).to(device=device, dtype=dtype) for t in state.values()])


def unflatten_state(module: nn.Module, flat: torch.Tensor) -> None:
    """Copy a flatten_state vector back into `module`'s parameters and buffers, in place."""
    tensors = _state_tensors(module)
    if flat.dim() != 1 or flat.numel() != state_numel(module):
        raise ValueError(f"a flat state of {tuple(flat.shape)} does not fit a module with {state_numel(module)} "
                         f"state elements")
    with torch.no_grad():
        for tensor, chunk in zip(tensors, flat.split([t.numel() for t in tensors])):
            values = chunk.reshape(tensor.shape)
            tensor.copy_(values if tensor.is_floating_point() else values.round())


__all__ = ["compose", "theorem_error", "flatten_fc_layers", "field_origins", "flatten_state", "unflatten_state", "state_numel", "TASKS"]
