"""ddc_hpc: decomposition and composition of CNNs for MPI clusters (Gu, Zhang, Liu, Cai, ETNA 2022)."""

# Imported eagerly: a lazy attribute would be shadowed by the `ddc_hpc.compose` submodule.
from .compose import compose, theorem_error
from .models import build_model, model_names
from .partition import tile_slices, tile_slices_nd

__all__ = ["build_model", "model_names", "compose", "theorem_error", "tile_slices", "tile_slices_nd"]
__version__ = "0.1.0"
