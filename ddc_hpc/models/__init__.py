"""Width-scalable model families and their registry (timm style: `@register`, `build_model`).

A family is a module class whose constructor takes `(num_classes, partitions=1, *, **options)`;
`partitions=K` builds one sub-network with every hidden width divided by K (eq. 2.7-2.8) while
the input channels and the classes stay.  One class serves several names through fixed keyword
arguments (`@register("resnet50", block=Bottleneck, layers=(3, 4, 6, 3))`).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class _Entry:
    family: type
    fixed: dict = field(default_factory=dict)

    def options(self) -> dict[str, inspect.Parameter]:
        """The keyword-only constructor arguments a user may set (the fixed ones excluded)."""
        params = inspect.signature(self.family).parameters.values()
        return {p.name: p for p in params if p.kind is p.KEYWORD_ONLY and p.name not in self.fixed}


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, **fixed):
    """Class decorator: make `family` buildable as `name`, with `fixed` constructor arguments."""

    def decorator(family: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = _Entry(family, fixed)
        return family

    return decorator


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known models: {', '.join(model_names())}"
        raise ValueError(f"unknown model {name!r}{hint}")
    return _REGISTRY[name]


def model_options(name: str) -> dict:
    """Options `name` accepts and their defaults, e.g. {'width': 64, 'in_channels': 3}."""
    return {n: p.default for n, p in _entry(name).options().items()}


def input_options(name: str, spatial: Sequence[int], channels: int | None = None) -> dict:
    """The options of `name` that size its input, for samples of `spatial` shape with `channels`.

    Only those the family accepts: `in_channels` (left to its default when `channels` is None),
    `dims`, `input_size` (one int in 1D, a tuple otherwise: a flatten-FC head is built for it) and
    `in_features` (an mlp's first layer reads the whole length).
    """
    spatial = tuple(int(n) for n in spatial)
    derived = {"dims": len(spatial), "input_size": spatial if len(spatial) > 1 else spatial[0],
               "in_features": spatial[0]}
    if channels is not None:
        derived["in_channels"] = int(channels)
    accepted = model_options(name)
    return {k: v for k, v in derived.items() if k in accepted}


def model_defaults(name: str, **options) -> dict:
    """The data model `name` is made for, with `options` as `build_model` would take them.

    {'num_classes': 10, 'input_size': 32, 'dims': 2, 'input_shape': (3, 32, 32)} for the CIFAR
    ResNets: `input_size` is the default length of every spatial axis, `dims` the number of spatial
    axes (the tile grid's), `input_shape` one sample's tensor shape without the batch axis,
    channels first as the data pipeline delivers it: (C, L) for cnn1d, (C, D, H, W) for 3D nets,
    (C, F) for mlp (which also takes (N, F) when C = 1), (F, T) for the recurrent nets.  Options
    that size the input (`input_size`, `in_features`, `in_channels`, `dims`) are taken into account.
    """
    entry = _entry(name)
    unknown = sorted(set(options) - set(entry.options()))
    if unknown:
        raise TypeError(f"{name}: unknown option(s) {', '.join(unknown)}")
    family = entry.family
    resolved = {**entry.fixed, **model_options(name), **options}
    dims = resolved.get("dims", getattr(family, "default_dims", 2))
    shape = family.sample_shape(resolved) if hasattr(family, "sample_shape") else None
    if shape is None:
        size = resolved.get("in_features", resolved.get("input_size", family.default_input_size))
        spatial = (size,) * dims if isinstance(size, int) else tuple(size)
        shape = (resolved.get("in_channels", 3), *spatial)
    size = resolved.get("in_features", resolved.get("input_size", family.default_input_size))
    return {"num_classes": family.default_num_classes, "input_size": size if isinstance(size, int) else
            family.default_input_size, "dims": dims,
            "input_shape": tuple(shape)}


def _check_split(global_net: nn.Module, partitions: int) -> None:
    """Name the first layer of the global network whose width K does not divide.

    Every conv / BatchNorm / Linear output and every recurrent hidden state is hidden except the
    last layer's (the classes, or an autoencoder's reconstruction).
    """
    layers = [m for m in global_net.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    last = layers[-1] if layers else None
    for name, module in global_net.named_modules():
        if module is last:
            continue
        for attr, unit in (("out_channels", "channels"), ("out_features", "features"), ("num_features", "channels"),
                           ("hidden_size", "hidden units")):
            width = getattr(module, attr, None)
            if isinstance(width, int) and width % partitions:
                raise ValueError(f"{name}: {width} {unit} do not split into {partitions} sub-networks")
        groups = getattr(module, "groups", 1)
        if isinstance(module, nn.modules.conv._ConvNd) and groups > 1 and groups % partitions:
            raise ValueError(f"{name}: {groups} groups do not split into {partitions} sub-networks")


def build_model(name: str, num_classes: int, partitions: int = 1, **options) -> nn.Module:
    """The global network (`partitions=1`) or one of K width-1/K sub-networks of model `name`.

    `num_classes` is the number of outputs: classes, or target values per sample for regression
    (the name stays: it is the config key model.num_classes and a key of every saved spec).

    The result carries `ddc_spec`, every argument with defaults filled in, so that
    `build_model(**net.ddc_spec)` rebuilds it (from a checkpoint, on another rank).
    """
    entry = _entry(name)
    accepted = entry.options()
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"{name}: unknown option(s) {', '.join(unknown)}; it accepts {', '.join(accepted) or 'none'}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(partitions, int) or partitions < 1:
        raise ValueError(f"partitions must be a positive int, got {partitions!r}")
    if partitions > 1:
        with torch.device("meta"):  # shapes only: costs no memory even for VGG16
            _check_split(entry.family(num_classes, 1, **entry.fixed, **options), partitions)
    model = entry.family(num_classes, partitions, **entry.fixed, **options)
    resolved = {n: options.get(n, p.default) for n, p in accepted.items()}
    model.ddc_spec = {"name": name, "num_classes": num_classes, "partitions": partitions, **resolved}
    return model


# Importing the families registers them.
from . import cifar_resnet, cnn, convnd, mlp, recurrent, resnet, resnet3d, vgg  # noqa: E402,F401

__all__ = ["register", "build_model", "model_names", "model_options", "model_defaults", "input_options"]
