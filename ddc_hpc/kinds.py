"""What a run can learn and what data it can read: the task table and the data-source syntax.

A leaf of the package (it imports only errors.py), so the configuration (config.py validates
model.task and data.source) and the data layer (data/ reads sources and checks tasks) both import it
without importing each other.
"""

from __future__ import annotations

from .errors import BadInput

TASKS = ("classification", "regression", "autoencoder")
KINDS = ("synthetic", "synthetic1d", "synthetic3d", "npz", "h5", "cifar10", "cifar100", "food101", "imagefolder")
SYNTHETIC_KINDS = ("synthetic", "synthetic1d", "synthetic3d")


def parse_source(source: str) -> tuple[str, str, dict[str, str]]:
    """``"KIND:ARG?opt=v&opt=v"`` -> (kind, arg, options).  A bare path ending in .h5/.hdf5/.npz
    is taken as that kind; ``synthetic``, ``synthetic1d`` and ``synthetic3d`` take their options as
    ARG (``synthetic:n=5000,seed=1``, ``synthetic1d:length=64,target=regression``)."""
    if not isinstance(source, str) or not source.strip():
        raise BadInput(f"data source must be a non-empty string such as 'synthetic' or 'h5:PATH', got {source!r}")
    source = source.strip()
    kind, sep, rest = source.partition(":")
    if not sep or kind not in KINDS:
        lower = source.lower()
        if lower.endswith((".h5", ".hdf5")):
            kind, rest = "h5", source
        elif lower.endswith(".npz"):
            kind, rest = "npz", source
        elif source in SYNTHETIC_KINDS:
            kind, rest = source, ""
        else:
            raise BadInput(
                f"unknown data source {source!r}: use one of "
                + ", ".join(k if k in SYNTHETIC_KINDS else f"{k}:PATH" for k in KINDS)
            )
    if kind in SYNTHETIC_KINDS:
        arg, query = "", rest.lstrip("?")
    else:
        arg, _, query = rest.partition("?")
        if not arg:
            raise BadInput(f"data source {source!r} needs a path after '{kind}:'")
    options = {}
    for item in filter(None, query.replace("&", ",").split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise BadInput(f"data source {source!r}: option {item!r} must be key=value")
        options[key.strip()] = value.strip()
    return kind, arg, options
