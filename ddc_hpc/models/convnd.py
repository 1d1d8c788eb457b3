"""Plain CNNs over 1D signals and 3D volumes (paper section 2.4): `cnn1d`, `cnn3d`.

Three stages of two 3-wide conv-BN-ReLU layers (widths w, 2w, 4w), a 2-wide max-pool after the
first two stages, global average pooling and an FC.  Input (N, C, L) for cnn1d, (N, C, D, H, W)
for cnn3d; any length of at least 4 per axis.  Tiles are segments of the signal / sub-volumes of
a 3D grid such as 2x2x2; the GAP head lets every sub-network also read the full input, which is
where Theorem 2.1 holds exactly.
"""

from __future__ import annotations

from . import register
from .cnn import PooledConvNet

_STAGE_WIDTHS = (1, 2, 4)


@register("cnn1d", dims=1)
@register("cnn3d", dims=3)
class ConvNetND(PooledConvNet):
    stage_widths = _STAGE_WIDTHS
    default_num_classes = 10
    default_input_size = 32  # per axis; cnn1d typically runs on longer signals

    def __init__(self, num_classes: int, partitions: int = 1, *, dims: int, width: int = 32, in_channels: int = 1):
        super().__init__(num_classes, partitions, width=width, in_channels=in_channels, dims=dims)
