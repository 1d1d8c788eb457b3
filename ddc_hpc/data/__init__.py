"""Data layer: HDF5 format, importers, synthetic set, tiled views and batch augmentation.

The pipeline calls ``load_dataset`` (a source string -> ``Splits``), ``check_tiles``, and
``batches``/``make_batch`` to turn ``ImageSet`` samples into float32 NCHW training batches.
See docs/DATA.md.
"""

from .hdf5 import H5Writer, content_checksum
from .importers import describe, import_dataset
from .loader import ImageSet, Splits, channel_mean, load_dataset, stratified_split
from .sources import KINDS, parse_source
from .synthetic import synthetic
from .views import batches, check_tiles, make_batch, to_channels_first

__all__ = [
    "Splits",
    "ImageSet",
    "load_dataset",
    "make_batch",
    "batches",
    "synthetic",
    "check_tiles",
    "to_channels_first",
    "channel_mean",
    "stratified_split",
    "import_dataset",
    "describe",
    "content_checksum",
    "H5Writer",
    "parse_source",
    "KINDS",
]
