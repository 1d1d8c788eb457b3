"""ddc_hpc: decomposition and composition of CNNs for MPI clusters (Gu, Zhang, Liu, Cai, ETNA 2022).

The public API is imported lazily, so `python -m ddc_hpc.<tool>` loads only what the tool needs.
"""

import importlib

_API = {
    "build_model": "models",
    "model_names": "models",
    "compose": "compose",
    "theorem_error": "compose",
    "tile_slices": "partition",
    "tile_slices_nd": "partition",
}
__all__ = list(_API)
__version__ = "0.1.0"


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'ddc_hpc' has no attribute {name!r}")
