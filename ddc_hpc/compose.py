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
  Linear with `input_shape` (C, *S): it reads the flattened network input, decomposed into tiles
                       (an FC net, section 2.4): sub k's columns go to tile k, all C channels
  Linear with `output_shape` (C, *S): its output is the reconstructed input (an autoencoder):
                       sub k's rows go to tile k; where tiles overlap, the covering rows average
  BatchNorm            weight, bias, running stats concatenated; num_batches_tracked = max
  RNN / GRU / LSTM     the one rule for recurrent layers (eq. 2.29): the hidden state is split
                       into K groups; each gate block of W_ih takes the sub-networks' rows (layer
                       0) or is block-diagonal (above), each gate block of W_hh is block-diagonal,
                       biases concatenated per gate

Every block is accumulated into zeros, so a position no sub-network owns stays exactly zero.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import re
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass

import torch
from torch import nn

from .kinds import TASKS
from .partition import default_grid, relative_tiles, spread

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM_STATE = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


def field_origins(global_spatial: Sequence[int], sub_spatial: Sequence[int], grid: Sequence[int] | None = None,
                  tiles: Sequence[tuple[slice, ...]] | None = None,
                  input_size: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    """Where each tile's activation field starts in the global feature map (eq. 2.13), tiles in order.

    From the decomposition itself: `tiles` (one slice per spatial axis, as partition.tile_slices_nd
    gives them) cut from an input of spatial shape `input_size`.  Along an axis of X px, a tile of
    t px starting at a has its field of h on the H-long feature map start at round(a*(H-h)/(X-t)):
    the first possible tile position maps to 0, the last to H-h, so a crop insets the fields and
    any layout of equal tiles is followed.  From a `grid` alone, the tiles are taken as
    tile_slices_nd spreads them without crop: origin i of g along an axis is round(i*(H-h)/(g-1)).
    """
    shapes = [tuple(global_spatial), tuple(sub_spatial)] + [tuple(v) for v in (grid, input_size) if v is not None]
    if len({len(v) for v in shapes}) != 1:
        raise ValueError(f"feature map {tuple(global_spatial)}, field {tuple(sub_spatial)}, grid {grid} and input size "
                         f"{input_size} must have one entry per spatial axis")
    if (grid is None) == (tiles is None):
        raise ValueError("field_origins takes a grid or the tiles (with input_size), not both or neither")
    if not all(0 < field <= size for size, field in zip(global_spatial, sub_spatial)) or \
            (grid is not None and min(grid) < 1):
        raise ValueError(f"a {tuple(sub_spatial)} field on a {tuple(global_spatial)} feature map "
                         f"with a {tuple(grid or ())} grid does not fit")
    if grid is not None:
        axes = [spread(size, field, parts) for size, field, parts in zip(global_spatial, sub_spatial, grid)]
        return list(itertools.product(*axes))
    if input_size is None:
        raise ValueError("field_origins: tiles need input_size, the spatial shape they were cut from")
    spans = [_tile_span(tile, input_size) for tile in tiles]
    if len({tuple(length for _, length in span) for span in spans}) > 1:
        raise ValueError(f"tiles of different sizes cannot share one sub-network field: {list(tiles)}")
    return [tuple(0 if length == size else round(start * (feature - field) / (size - length))
                  for (start, length), size, feature, field in zip(span, input_size, global_spatial, sub_spatial))
            for span in spans]


def _tile_span(tile: Sequence[slice], input_size: Sequence[int]) -> list[tuple[int, int]]:
    """(start, length) per axis of a tile, which must be a step-1 slice per axis inside `input_size`."""
    if len(tile) != len(input_size) or any(
            s.step not in (None, 1) or s.start is None or s.stop is None or not 0 <= s.start < s.stop <= size
            for s, size in zip(tile, input_size)):
        raise ValueError(f"tile {tuple(tile)} is not one step-1 slice per axis inside an input of {tuple(input_size)}")
    return [(s.start, s.stop - s.start) for s in tile]


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


@dataclass(frozen=True)
class _BlockPlacement:
    """How sub-network k's tensor maps into the global one along one side (outputs or inputs) of a weight.

    The global axes of that side are viewed as `view`, a sub-network's as `sub_view`, and sub k's
    block is added at `index[k]` of the global view.  `shared`: every sub-network spans the whole
    side (it is not split).  `divisor`: per-position count of the blocks added there (averaged).
    """

    index: list[tuple]
    view: tuple
    sub_view: tuple
    shared: bool = False
    divisor: torch.Tensor | None = None


def _tile_placements(name: str, what: str, shape: Sequence[int], sub_shape: Sequence[int], K: int,
                     tiles, grid) -> list[tuple[slice, ...]]:
    """The K tiles (one slice per axis of `shape`) that a layer's sub-network blocks occupy.

    `tiles` (the decomposition, as partition.tile_slices_nd gives it) are taken as they are and
    checked; without them the tiles are spread over `grid` like tile_slices_nd's without crop.
    """
    if tiles is None:
        spatial_grid = tuple(grid) if grid is not None else default_grid(K, len(shape))
        origins = field_origins(shape, sub_shape, spatial_grid)
        if len(origins) != K:
            raise ValueError(f"{_label(name)}: grid {spatial_grid} has {len(origins)} tiles for {K} sub-networks")
        return [tuple(slice(o, o + n) for o, n in zip(origin, sub_shape)) for origin in origins]
    tiles = [tuple(t) for t in tiles]
    if len(tiles) != K:
        raise ValueError(f"{_label(name)}: {len(tiles)} tiles for {K} sub-networks")
    for tile in tiles:
        if len(tile) != len(shape) or any(s.step not in (None, 1) for s in tile):
            raise ValueError(f"{_label(name)}: tile {tile} does not give one step-1 slice per axis of its {what} "
                             f"{tuple(shape)}")
        spans = [s.indices(n) for s, n in zip(tile, shape)]
        if any(stop - start != n or s.start is None or s.start < 0 or s.stop is None or s.stop > length
               for (start, stop, _), n, s, length in zip(spans, sub_shape, tile, shape)):
            raise ValueError(f"{_label(name)}: tile {tile} does not fit a sub-network {what} of {tuple(sub_shape)} "
                             f"inside the global {what} {tuple(shape)}")
    return tiles


def _flatten_fc_fields(name: str, layer: nn.Module, sub_layer: nn.Module, K: int, grid=None, tiles=None,
                       input_size=None) -> list[tuple[slice, ...]]:
    """Eq. 2.13's placement as compose makes it: sub-network k's flatten-FC input is channel group k
    of the global feature map at tile k's field (field_origins: from the tiles when given, which
    then need `input_size`; else from the grid). theorem_error checks it against _expected_fields."""
    feature_shape, sub_shape = tuple(layer.feature_shape), getattr(sub_layer, "feature_shape", None)
    if sub_shape is None or len(sub_shape) != len(feature_shape) or feature_shape[0] != K * sub_shape[0]:
        raise ValueError(f"{_label(name)}: flatten-FC over a {feature_shape} feature map cannot be "
                         f"composed from {K} sub-networks over {sub_shape} feature maps")
    if tiles is not None and input_size is None:
        raise ValueError(f"{_label(name)}: a flatten-FC's fields follow the tiles: pass input_size= too (the "
                         "spatial shape of the global network's input, which the tiles index)")
    spatial_grid = None
    if tiles is None:
        spatial_grid = tuple(grid) if grid is not None else default_grid(K, len(feature_shape) - 1)
    try:
        origins = field_origins(feature_shape[1:], sub_shape[1:], spatial_grid, tiles, input_size)
    except ValueError as err:
        raise ValueError(f"{_label(name)}: {err}") from None
    if len(origins) != K:
        raise ValueError(f"{_label(name)}: {'grid ' + str(spatial_grid) if tiles is None else 'the tiles'} give "
                         f"{len(origins)} fields for {K} sub-networks")
    channels = sub_shape[0]
    return [(slice(k * channels, (k + 1) * channels), *(slice(o, o + s) for o, s in zip(origin, sub_shape[1:])))
            for k, origin in enumerate(origins)]


def _placed_shapes(name: str, attr: str, module: nn.Module, parts: list[nn.Module], size: int, sub_size: int):
    """The (C, *S) shapes a Linear's `input_shape` / `output_shape` declares, checked against its weight."""
    shape, sub_shape = tuple(getattr(module, attr)), getattr(parts[0], attr, None)
    if sub_shape is None or len(sub_shape) != len(shape) or sub_shape[0] != shape[0] or size != math.prod(shape) \
            or sub_size != math.prod(sub_shape):
        raise ValueError(f"{_label(name)}: a Linear with {attr} {shape} and {size} features cannot be composed from "
                         f"sub-networks with {attr} {sub_shape} and {sub_size} features")
    return shape, tuple(sub_shape)


def _input_placement(name: str, module: nn.Module, parts: list[nn.Module], weight: torch.Tensor,
                     sub_weight: torch.Tensor, grid, tiles, input_size) -> _BlockPlacement:
    """Where sub k's weight goes along the input axes (after the output axes)."""
    K = len(parts)
    feature_shape = getattr(module, "feature_shape", None)
    if feature_shape is not None and hasattr(module, "input_shape"):
        raise ValueError(f"{_label(name)}: a Linear cannot carry both feature_shape and input_shape")
    if feature_shape is not None:
        index = _flatten_fc_fields(name, module, parts[0], K, grid, tiles, input_size)
        if weight.shape[1] != math.prod(feature_shape) or sub_weight.shape[1] != math.prod(parts[0].feature_shape):
            raise ValueError(f"{_label(name)}: the weights {tuple(weight.shape)} and {tuple(sub_weight.shape)} do not "
                             f"read feature maps of {tuple(feature_shape)} and {tuple(parts[0].feature_shape)}")
        return _BlockPlacement(index, tuple(feature_shape), tuple(parts[0].feature_shape))
    if hasattr(module, "input_shape"):
        shape, sub_shape = _placed_shapes(name, "input_shape", module, parts, weight.shape[1], sub_weight.shape[1])
        placed = _tile_placements(name, "input", shape[1:], sub_shape[1:], K, tiles, grid)
        return _BlockPlacement([(slice(None), *tile) for tile in placed], shape, sub_shape)
    groups, sub_groups = getattr(module, "groups", 1), getattr(parts[0], "groups", 1)
    if groups > 1 or sub_groups > 1:
        if groups != K * sub_groups or weight.shape[0] != K * sub_weight.shape[0]:
            raise ValueError(f"{_label(name)}: a grouped conv with {groups} groups and {weight.shape[0]} outputs "
                             f"cannot be composed block-diagonally from {K} sub-networks with {sub_groups} groups "
                             f"and {sub_weight.shape[0]} outputs (needs K times both)")
        return _BlockPlacement([(slice(None),)] * K, (weight.shape[1],), (sub_weight.shape[1],))  # per group: cat = block-diag
    return _split_placement(name, "inputs", weight.shape[1], sub_weight.shape[1], K, weight, sub_weight)


def _split_placement(name: str, what: str, size: int, sub_size: int, K: int, weight, sub_weight) -> _BlockPlacement:
    """A plain axis: split into K consecutive groups, or shared whole by every sub-network."""
    if size == K * sub_size:
        return _BlockPlacement([(slice(k * sub_size, (k + 1) * sub_size),) for k in range(K)], (size,), (sub_size,))
    if size == sub_size:
        return _BlockPlacement([(slice(None),)] * K, (size,), (sub_size,), shared=True)
    raise ValueError(f"{_label(name)}: {size} {what} cannot be composed from {K} sub-networks with {sub_size} {what} "
                     f"(global weight {tuple(weight.shape)}, sub-network weight {tuple(sub_weight.shape)})")


def _output_placement(name: str, module: nn.Module, parts: list[nn.Module], weight: torch.Tensor,
                      sub_weight: torch.Tensor, grid, tiles) -> _BlockPlacement:
    K = len(parts)
    if hasattr(module, "output_shape"):
        shape, sub_shape = _placed_shapes(name, "output_shape", module, parts, weight.shape[0], sub_weight.shape[0])
        placed = _tile_placements(name, "output", shape[1:], sub_shape[1:], K, tiles, grid)
        count = torch.zeros(shape, dtype=torch.float64)
        for tile in placed:
            count[(slice(None), *tile)] += 1
        return _BlockPlacement([(slice(None), *tile) for tile in placed], shape, sub_shape, divisor=count)
    return _split_placement(name, "outputs", weight.shape[0], sub_weight.shape[0], K, weight, sub_weight)


def _assemble(name: str, tensor_name: str, target: torch.Tensor, subs: Sequence[torch.Tensor], out: _BlockPlacement,
              inp: _BlockPlacement | None, kernel: tuple = (), scale: float = 1.0) -> None:
    """target = sum_k (sub k's tensor placed at out.index[k] x inp.index[k]) [/ out.divisor], zeros elsewhere."""
    in_view, in_sub_view = (inp.view, inp.sub_view) if inp is not None else ((), ())
    assembled = torch.zeros((*out.view, *in_view, *kernel), dtype=target.dtype, device=target.device)
    if assembled.numel() != target.numel():
        raise ValueError(f"{_label(name)}.{tensor_name}: global shape {tuple(target.shape)} does not fit the "
                         f"assembled layout {tuple(assembled.shape)}")
    sub_shape = (*out.sub_view, *in_sub_view, *kernel)
    for k, sub in enumerate(subs):
        if sub.numel() != math.prod(sub_shape):
            raise ValueError(f"{_label(name)}.{tensor_name}: sub-network {k}'s shape {tuple(sub.shape)} does not fit "
                             f"{sub_shape}")
        region = assembled[(*out.index[k], *(inp.index[k] if inp is not None else ()))]
        if region.shape != sub_shape:
            raise ValueError(f"{_label(name)}.{tensor_name}: sub-network {k}'s block {sub_shape} does not fit its "
                             f"place {tuple(region.shape)} in the global {tuple(assembled.shape)}")
        region += scale * sub.reshape(sub_shape).to(assembled)  # a view: adds into `assembled`
    if out.divisor is not None:
        divisor = out.divisor.clamp(min=1).to(assembled)
        assembled /= divisor.reshape(*divisor.shape, *[1] * (assembled.dim() - divisor.dim()))
    _write(name, tensor_name, target, assembled.reshape(target.shape))


def _compose_affine(name: str, module: nn.Module, parts: list[nn.Module], task: str, grid, tiles,
                    input_size) -> None:
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
    kernel = tuple(weight.shape[2:])
    if kernel != tuple(sub_weights[0].shape[2:]):
        raise ValueError(f"{_label(name)}: kernel {kernel} vs sub-network {tuple(sub_weights[0].shape[2:])}")
    out = _output_placement(name, module, parts, weight, sub_weights[0], grid, tiles)
    inp = _input_placement(name, module, parts, weight, sub_weights[0], grid, tiles, input_size)
    if out.shared:
        if inp.shared:
            raise ValueError(f"{_label(name)}: neither inputs nor outputs are split: {tuple(weight.shape)} from "
                             f"{K} x {tuple(sub_weights[0].shape)}")
        if task == "autoencoder":
            raise ValueError(f"{_label(name)}: an autoencoder's layers must all split their outputs (the output "
                             f"is the concatenation), but this layer sums {K} sub-networks' outputs")
    scale = 1.0 / K if task == "regression" and out.shared else 1.0
    _assemble(name, "weight", weight, sub_weights, out, inp, kernel, scale)

    biases = [p.bias for p in parts]
    if any((b is None) != ("bias" not in state) for b in biases):
        raise ValueError(f"{_label(name)}: the global layer and a sub-network disagree on having a bias")
    if "bias" in state:
        _assemble(name, "bias", module.bias, biases, out, None, (), scale)


_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "GRU": 3, "LSTM": 4}
_RECURRENT_PARAM = re.compile(r"(weight|bias)_(ih|hh)_l(\d+)")


def _compose_recurrent(name: str, module: nn.RNNBase, parts: list[nn.Module]) -> None:
    """nn.RNN / GRU / LSTM, the one rule for recurrent layers (eq. 2.29).

    Each (G*H, X) weight is viewed as G gate blocks of H hidden rows; the hidden rows split into K
    groups; the X inputs are shared (layer 0 reads the input) or split (the layer below's hidden
    state).  Only unidirectional layers without projections: a bidirectional layer's output
    interleaves [forward, backward] states, which no consecutive group split describes.
    """
    K = len(parts)
    for attr in ("mode", "num_layers", "bidirectional", "batch_first", "bias", "proj_size"):
        if any(getattr(p, attr) != getattr(module, attr) for p in parts):
            raise ValueError(f"{_label(name)}: {attr} differs between the global network and a sub-network")
    if module.bidirectional or module.proj_size:
        raise ValueError(f"{_label(name)}: cannot compose a {'bidirectional' if module.bidirectional else 'projected'} "
                         f"{type(module).__name__}; compose supports unidirectional recurrent layers without proj_size")
    if module.hidden_size != K * parts[0].hidden_size:
        raise ValueError(f"{_label(name)}: {module.hidden_size} hidden units cannot be composed from {K} sub-networks "
                         f"with {parts[0].hidden_size} hidden units")
    gates, hidden, sub_hidden = _GATES[module.mode], module.hidden_size, parts[0].hidden_size
    for tensor_name, target in _own_state(module).items():
        match = _RECURRENT_PARAM.fullmatch(tensor_name)
        if match is None:
            raise TypeError(f"{_label(name)}: {type(module).__name__} holds {tensor_name}; compose knows "
                            f"weight_ih/hh_l* and bias_ih/hh_l*")
        subs = [_own_state(p)[tensor_name] for p in parts]
        out = _BlockPlacement([(slice(None), slice(k * sub_hidden, (k + 1) * sub_hidden)) for k in range(K)],
                    (gates, hidden), (gates, sub_hidden))
        inp = None
        if match.group(1) == "weight":
            inp = _split_placement(name, f"inputs of {tensor_name}", target.shape[1], subs[0].shape[1], K, target, subs[0])
        _assemble(name, tensor_name, target, subs, out, inp)


def compose(subnets: Sequence[nn.Module], global_net: nn.Module, task: str = "classification",
            grid: Sequence[int] | None = None, tiles: Sequence[tuple[slice, ...]] | None = None,
            input_size: Sequence[int] | None = None) -> nn.Module:
    """Fill `global_net`'s parameters and buffers in place from its K sub-networks; returns it.

    `tiles`, the decomposition itself (partition.tile_slices_nd's slices, sub-network k's tile k),
    places the layers that read the network input or write its reconstruction (an mlp's first
    layer, an mlp_autoencoder's last) and, with `input_size` (the spatial shape of the global
    input the tiles index), a flatten-FC's fields (field_origins).  Without tiles those layers are
    spread over `grid` (default `partition.default_grid(K, axes)`) as tile_slices_nd spreads tiles
    without crop, so pass them whenever there is a crop.  All three are ignored by networks
    without such layers (a pipeline may always pass them).  Any other module that holds
    parameters or buffers is an error, so an unsupported layer is never silently left at its
    random initialisation.
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
                _compose_affine(name, module, parts, task, grid, tiles, input_size)
            elif isinstance(module, nn.RNNBase) and type(module) in (nn.RNN, nn.GRU, nn.LSTM):
                _compose_recurrent(name, module, parts)
            else:
                raise TypeError(f"{_label(name)}: cannot compose a {type(module).__name__} (it holds "
                                f"{', '.join(sorted(state))}); compose supports Conv1d/2d/3d, Linear, BatchNorm "
                                f"and RNN/GRU/LSTM")
    return global_net


def compose_group(subnets: Sequence[nn.Module], parent: nn.Module, tiles: Sequence[tuple[slice, ...]],
                  within: tuple[slice, ...], task: str = "classification") -> nn.Module:
    """Multilevel composition: fill the next level's sub-network `parent`, whose image is the tile
    `within`, from the group of finer sub-networks trained on `tiles` (their tiles of the image).
    A next-level sub-network is a global network for its group's tiles (Theorem 2.1 applies to any
    image), so this is compose with the tiles taken relative to `within`; check it with
    theorem_error(parent, subnets, x[(..., *within)], tiles=relative_tiles(tiles, within))."""
    return compose(subnets, parent, task=task, tiles=relative_tiles(tiles, within),
                   input_size=tuple(s.stop - s.start for s in within))


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


@contextlib.contextmanager
def _fp32(nets: Sequence[nn.Module]):
    """Autocast off on every device the nets live on: the theorem is checked to fp32 rounding,
    which a caller's bf16/fp16 autocast would swamp."""
    devices = {t.device.type for net in nets for t in itertools.chain(net.parameters(), net.buffers())}
    with contextlib.ExitStack() as stack:
        for device in sorted(devices - {"meta"}):
            stack.enter_context(torch.autocast(device, enabled=False))
        yield


def flatten_fc_layers(model: nn.Module) -> list[str]:
    """Names of the Linear layers that read a flattened feature map (they carry `feature_shape`).

    A network with one does not satisfy F(x) = sum_k F_k(x) on a full-size x: its sub-networks'
    heads are built for tiles.  Theorem 2.1 holds for it per tile field (theorem_error).
    """
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and hasattr(m, "feature_shape")]


def input_tiled_layers(model: nn.Module) -> list[str]:
    """Names of the Linear layers that read the flattened network input (they carry `input_shape`).

    Sub-network k of such a network (an mlp) reads only its tile x_k: F(x) = sum_k F_k(x_k).
    """
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and hasattr(m, "input_shape")]


def output_tiled_layers(model: nn.Module) -> list[str]:
    """Names of the Linear layers whose output is the reconstructed input (they carry `output_shape`)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and hasattr(m, "output_shape")]


def _tile_of(x: torch.Tensor, tile: Sequence[slice]) -> torch.Tensor:
    return x[(..., *tile)]  # tiles index the trailing (spatial / feature) axes


def _expected_fields(feature_shape: Sequence[int], sub_feature_shape: Sequence[int], tiles,
                     input_size: Sequence[int]) -> list[tuple[slice, ...]]:
    """Where sub-network k's flatten-FC map belongs in the global one, worked out from eq. 2.13's
    rule for theorem_error alone (no code shared with compose's placement, so a composition that
    puts a field in the wrong place fails the check): channel group k, and along each axis the
    field of a tile at its first possible position starts at 0, at its last at H - h, linearly in
    between, rounded to the nearest position."""
    channels, fields = sub_feature_shape[0], []
    for k, tile in enumerate(tiles):
        index = [slice(k * channels, (k + 1) * channels)]
        for cut, size, length, field in zip(tile, input_size, feature_shape[1:], sub_feature_shape[1:]):
            tile_length = cut.stop - cut.start
            last_start, last_field = size - tile_length, length - field
            start = round(cut.start * last_field / last_start) if last_start else 0
            index.append(slice(start, start + field))
        fields.append(tuple(index))
    return fields


@contextlib.contextmanager
def _sub_maps_at_their_fields(global_net: nn.Module, subnets: Sequence[nn.Module], name: str, tiles,
                              input_size: Sequence[int]):
    """While active, each sub-network's flatten-FC `name` records the feature map it reads, and the
    global one reads its own map with channel group k at tile k's field (_expected_fields)
    replaced by sub-network k's recorded map (run the sub-networks first)."""
    layer, sub_layers = global_net.get_submodule(name), [net.get_submodule(name) for net in subnets]
    if len(tiles) != len(subnets) or tuple(layer.feature_shape)[0] != len(subnets) * sub_layers[0].feature_shape[0]:
        raise ValueError(f"{_label(name)}: a flatten-FC over {tuple(layer.feature_shape)} is not {len(subnets)} "
                         f"sub-networks' {tuple(sub_layers[0].feature_shape)} on {len(tiles)} tiles")
    fields = _expected_fields(layer.feature_shape, sub_layers[0].feature_shape, tiles, input_size)
    recorded: list[torch.Tensor | None] = [None] * len(subnets)

    def record(k):
        return lambda module, args: recorded.__setitem__(k, args[0])

    def place(module, args):
        features = args[0].reshape(len(args[0]), *layer.feature_shape).clone()
        for field, sub_layer, sub_map in zip(fields, sub_layers, recorded):
            features[(slice(None), *field)] = sub_map.reshape(len(sub_map), *sub_layer.feature_shape).to(features)
        return (features.flatten(1), *args[1:])

    hooks = [sub.register_forward_pre_hook(record(k)) for k, sub in enumerate(sub_layers)]
    hooks.append(layer.register_forward_pre_hook(place))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def theorem_error(global_net: nn.Module, subnets: Sequence[nn.Module], x: torch.Tensor,
                  task: str = "classification", sub_inputs: Sequence[torch.Tensor] | None = None,
                  train: bool = False, tiles: Sequence[tuple[slice, ...]] | None = None) -> dict[str, float]:
    """How far the composed network is from Theorem 2.1 on the batch `x`.

    What sub-network k reads: `sub_inputs[k]` if given; else its tile of x when the network reads
    input tiles (an mlp) or has a flatten-FC head (VGG); else the whole x (GAP networks and
    recurrent nets, where the theorem holds on the full input; `tiles` is then not used, so a
    pipeline may always pass it).  A flatten-FC network is checked per tile field, the identity
    eq. 2.13's placement gives: the global network's flatten-FC reads its own feature map of x with
    channel group k at tile k's field replaced by the map sub-network k computed from its own tile
    of x; then F = sum_k F_k(x_k) exactly (everything from the flatten-FC on is checked, including
    the zeros off the fields; the layers below it are not, as their output is replaced where it
    counts).  The fields come from _expected_fields, which shares no code with compose's
    placement.  Such networks and mlps need `tiles`, the decomposition (a composition from the
    grid alone fails the check when a crop moves the tiles).  The reference F(x) is compared with: classification: sum_k
    F_k; regression: their mean (eq. 2.22); autoencoder: F_k placed at tile k (the mean where tiles
    overlap) for a network with an `output_shape` layer, else the concatenation of
    F_k(sub_inputs[k]) along dim 1 (default inputs: x cut into K groups along dim 1).  Tiles index
    the trailing axes of x.  `train=True` checks with batch statistics (meaningless with
    dropout).  Modes and BatchNorm statistics are left as found.
    Returns max_abs = max |F(x) - reference| and max_rel = max_abs / max |F(x)|.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    subnets = list(subnets)
    flatten_fc = flatten_fc_layers(global_net)
    if len(flatten_fc) > 1:
        raise ValueError(f"{', '.join(flatten_fc)}: theorem_error checks networks with at most one flatten-FC layer")
    tiled_in, tiled_out = input_tiled_layers(global_net), output_tiled_layers(global_net)
    needs_tiles = [*flatten_fc, *(tiled_in if sub_inputs is None else []), *tiled_out]  # fields, cut x, place F_k
    if needs_tiles and tiles is None:
        layer = needs_tiles[0]
        what = "reads tile fields of a feature map" if layer in flatten_fc else \
            "reads tiles of the input" if layer in tiled_in else "writes tiles of the input"
        raise ValueError(f"{layer} {what}: pass tiles= (the decomposition: one tuple of slices per sub-network)")
    if tiles is not None and needs_tiles and len(tiles) != len(subnets):
        raise ValueError(f"{len(tiles)} tiles for {len(subnets)} sub-networks")
    if sub_inputs is None:
        if tiled_in or flatten_fc:
            sub_inputs = [_tile_of(x, tile) for tile in tiles]
        elif task == "autoencoder" and not tiled_out:
            sub_inputs = list(x.chunk(len(subnets), dim=1))
        else:
            sub_inputs = [x] * len(subnets)
    if len(sub_inputs) != len(subnets):
        raise ValueError(f"{len(sub_inputs)} sub-network inputs for {len(subnets)} sub-networks")
    fields = _sub_maps_at_their_fields(global_net, subnets, flatten_fc[0], tiles, x.shape[x.dim() - len(tiles[0]):]) \
        if flatten_fc else contextlib.nullcontext()
    with torch.no_grad(), _checking_mode([global_net, *subnets], train), fields, _fp32([global_net, *subnets]):
        sub_outputs = [net(_on_device_of(net, inp)) for net, inp in zip(subnets, sub_inputs)]
        output = global_net(_on_device_of(global_net, x))
    sub_outputs = [sub_output.to(output) for sub_output in sub_outputs]
    if tiled_out:
        reference, count = torch.zeros_like(output), torch.zeros_like(output)
        for tile, sub_output in zip(tiles, sub_outputs):
            _tile_of(reference, tile).add_(sub_output)
            _tile_of(count, tile).add_(1)
        reference = reference / count.clamp(min=1)
    elif task == "autoencoder":
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


def with_parameters(module: nn.Module, values: Sequence[torch.Tensor]) -> nn.Module:
    """A copy of `module` whose parameters hold `values` (in parameters() order; buffers kept): an
    optimizer's per-parameter moments in the shape of the network, to be flattened, gathered and
    composed exactly like its weights."""
    copy = deepcopy(module)
    with torch.no_grad():
        for parameter, value in zip(copy.parameters(), values, strict=True):
            parameter.copy_(value)
    return copy


def shrink_perturb(net: nn.Module, fresh: nn.Module, shrink: float, perturb: float) -> None:
    """w <- shrink * w + perturb * w_fresh for every parameter (Ash & Adams, "On warm-starting
    neural network training", NeurIPS 2020): a composed net moved towards a fresh initialisation."""
    with torch.no_grad():
        for w, w_fresh in zip(net.parameters(), fresh.parameters(), strict=True):
            w.mul_(shrink).add_(w_fresh, alpha=perturb)


__all__ = ["compose", "compose_group", "with_parameters", "shrink_perturb", "theorem_error", "flatten_fc_layers", "input_tiled_layers", "output_tiled_layers", "field_origins", "flatten_state", "unflatten_state", "state_numel", "TASKS"]
