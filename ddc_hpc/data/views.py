"""Tiled views and batch augmentation on whole uint8 batches (torch ops, no per-image PIL).

Images are channels-last uint8 ``(n, *spatial, C)`` as stored; ``make_batch`` returns float32
channels-first ``(n, C, *spatial)`` that is contiguous in memory.  (A permuted NHWC batch is
channels_last in memory, and the backward pass of a 4->8 channel 1x1 stride-2 convolution in
oneDNN corrupts the heap on such inputs with torch 2.14 on AVX2 CPUs: docs/PLATFORM.md.)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..errors import BadInput


def _describe(tile: tuple[slice, ...]) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in tile) + "]"


def check_tiles(image_shape, tiles) -> None:
    """BadInput unless every tile fits the images and all tiles have one shape.

    ``image_shape`` is ``(*spatial, C)`` as ``SampleSet.image_shape`` gives it; ``tiles`` is a list of
    tuples of slices (``tile_slices``), one slice per spatial axis.
    """
    tiles = list(tiles)
    if not tiles:
        raise BadInput("the tile layout is empty: need at least one tile")
    image_shape = tuple(int(d) for d in image_shape)
    spatial = image_shape[:-1]
    shapes = set()
    for k, tile in enumerate(tiles):
        tile = tuple(tile)
        if len(tile) != len(spatial) or not all(isinstance(s, slice) for s in tile):
            raise BadInput(f"tile {k} has {len(tile)} slices but the images have {len(spatial)} spatial "
                           f"axes (image shape {image_shape}, channels last)")
        for axis, (s, n) in enumerate(zip(tile, spatial)):
            if not (isinstance(s.start, int) and isinstance(s.stop, int)) or s.step not in (None, 1):
                raise BadInput(f"tile {k}: axis {axis} must be a slice start:stop with ints, got {s}")
            if not 0 <= s.start < s.stop <= n:
                need = "x".join(str(max(t[a].stop for t in tiles)) for a in range(len(spatial)))
                raise BadInput(
                    f"tile {k} {_describe(tile)} does not fit images of {'x'.join(map(str, spatial))} "
                    f"(axis {axis} has {n} px, the tile needs {s.start}:{s.stop}); the tile layout needs "
                    f"images of at least {need}: use a smaller grid/overlap, or import the data with a "
                    "larger --size"
                )
        shapes.add(tuple(s.stop - s.start for s in tile))
    if len(shapes) > 1:
        raise BadInput(f"tiles differ in shape {sorted(shapes)}: every sub-network needs one input shape")


def to_channels_first(images: torch.Tensor) -> torch.Tensor:
    """(n, *spatial, C) -> (n, C, *spatial), contiguous (a real copy, not a strided view)."""
    return images.permute(0, images.ndim - 1, *range(1, images.ndim - 1)).contiguous()


def _shift(x: torch.Tensor, shifts: torch.Tensor, axis: int, max_shift: int) -> torch.Tensor:
    """Translate each sample of x along `axis` by shifts[i] px (positive: towards higher index),
    filling with zeros. x is (n, C, *spatial); shifts is int64 (n,) on x's device."""
    length = x.shape[axis]
    pad = [0, 0] * (x.ndim - 1 - axis) + [max_shift, max_shift]  # F.pad lists the last axis first
    padded = torch.nn.functional.pad(x, pad)
    # output position j takes padded position j + max_shift - shift
    index = torch.arange(length, device=x.device).view(1, length) + (max_shift - shifts).view(-1, 1)
    view = [x.shape[0]] + [1] * (x.ndim - 1)
    view[axis] = length
    index = index.view(view).expand(*x.shape[:axis], length, *x.shape[axis + 1:])
    return torch.gather(padded, axis, index)


def make_batch(images_uint8: torch.Tensor, *, mean: torch.Tensor, tile: tuple[slice, ...] | None,
               augment: bool, generator: torch.Generator | None, max_shift: int = 4,
               std: torch.Tensor | None = None) -> torch.Tensor:
    """A training/evaluation batch: crop ``tile``, then (if ``augment``) random horizontal flip and
    random translation by up to ``max_shift`` px per spatial axis (zero-filled, i.e. black, in
    pixel space), then scale to [0, 1] and subtract the per-channel ``mean`` (and, if ``std`` is
    given, divide by the per-channel ``std``, also in [0, 1] units: see ``channel_std``).

    ``images_uint8`` is (n, *spatial, C) uint8 — images, 1D signals (n, L, C) with a tile of one
    slice, 3D volumes (n, D, H, W, C) with a tile of three; returns float32 (n, C, *tile_spatial),
    contiguous. "Horizontal" is the last spatial axis (time for signals, W for volumes). All
    randomness comes from ``generator`` (CPU), so a batch is reproducible from the generator's state.
    """
    if images_uint8.dtype != torch.uint8 or images_uint8.ndim < 3:
        raise ValueError(f"expected uint8 (n, *spatial, C), got {images_uint8.dtype} {tuple(images_uint8.shape)}")
    x = images_uint8
    if tile is not None:
        tile = tuple(tile)
        if len(tile) != x.ndim - 2:
            raise ValueError(f"tile has {len(tile)} slices for {x.ndim - 2} spatial axes")
        x = x[(slice(None), *tile)]
    x = to_channels_first(x)  # uint8 (n, C, *spatial), contiguous
    n, spatial_axes = x.shape[0], range(2, x.ndim)
    if augment and n:
        draw = {"generator": generator, "device": generator.device if generator is not None else "cpu"}
        flip = (torch.rand(n, **draw) < 0.5).to(x.device)
        x = torch.where(flip.view(-1, *[1] * (x.ndim - 1)), x.flip(-1), x)
        if max_shift > 0:
            for axis in spatial_axes:
                shifts = torch.randint(-max_shift, max_shift + 1, (n,), **draw).to(x.device)
                x = _shift(x, shifts, axis, max_shift)
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, *[1] * (x.ndim - 2))
    if mean.shape[1] != x.shape[1]:
        raise ValueError(f"mean has {mean.shape[1]} channels, images have {x.shape[1]}")
    out = x.to(torch.float32).mul_(1.0 / 255.0).sub_(mean)
    if std is not None:
        std = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, *[1] * (x.ndim - 2))
        if std.shape[1] != x.shape[1]:
            raise ValueError(f"std has {std.shape[1]} channels, images have {x.shape[1]}")
        out.div_(std)
    return out.contiguous()


def batches(images, indices: Sequence[int], batch_size: int, *, mean, tile=None, augment=False,
            generator=None, drop_last=False, max_shift: int = 4,
            std=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches of ``images`` (a SampleSet) in the order of ``indices``; one ``read`` each.

    The caller chooses the order (its own seeded permutation or a DistributedSampler shard).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    indices = np.asarray(indices, dtype=np.int64)
    stop = len(indices) - len(indices) % batch_size if drop_last else len(indices)

    def produce(start):
        chunk = indices[start:start + batch_size]
        pixels, labels = images.read(chunk)
        return make_batch(pixels, mean=mean, tile=tile, augment=augment, generator=generator,
                          max_shift=max_shift, std=std), labels

    for start in range(0, stop, batch_size):
        yield produce(start)
