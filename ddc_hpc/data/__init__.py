"""Data layer: HDF5 format, importers, synthetic sets (2D, 1D, 3D), tiled views and batch augmentation.

The pipeline calls ``load_dataset`` (a source string -> ``Splits``; ``task`` classification,
regression or autoencoder), ``check_tiles``, and ``batches``/``make_batch`` to turn ``SampleSet``
samples (images, signals, volumes: uint8 channels last) into float32 channels-first batches.
See docs/DATA.md.
"""

from ..kinds import KINDS, TASKS, parse_source
from .hdf5 import H5Writer, check_labels, check_targets, content_checksum
from .importers import describe, import_dataset
from .loader import SampleSet, Splits, channel_mean, channel_std, load_dataset, load_from_config, split_options, \
    stratified_split
from .sources import resolve_source, same_data, source_identity
from .synthetic import TARGET_NAMES, synthetic, synthetic1d, synthetic3d
from .views import batches, check_tiles, make_batch, to_channels_first

__all__ = [
    "Splits",
    "SampleSet",
    "load_dataset",
    "load_from_config",
    "make_batch",
    "batches",
    "synthetic",
    "synthetic1d",
    "synthetic3d",
    "TARGET_NAMES",
    "TASKS",
    "check_labels",
    "check_targets",
    "channel_std",
    "check_tiles",
    "to_channels_first",
    "channel_mean",
    "stratified_split",
    "split_options",
    "import_dataset",
    "describe",
    "content_checksum",
    "H5Writer",
    "parse_source",
    "resolve_source",
    "same_data",
    "source_identity",
    "KINDS",
]
