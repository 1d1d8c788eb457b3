"""Pure partition arithmetic: tiles of an image, sub-networks of a rank, Gatherv layouts.

Nothing here touches MPI or the environment; every function takes rank/size explicitly so it can
be unit-tested without a communicator (the heat style of counts/displacements helpers).
"""

from __future__ import annotations

from collections.abc import Sequence


def _per_axis(value, ndim: int, name: str) -> tuple[int, ...]:
    """Broadcast an int (or a sequence of ndim ints) to one int per spatial axis."""
    values = (value,) * ndim if isinstance(value, int) else tuple(value)
    if len(values) != ndim or not all(isinstance(v, int) for v in values):
        raise ValueError(f"{name} must be an int or {ndim} ints, got {value!r}")
    return values


def _axis_tiles(length: int, parts: int, overlap: int, crop: int, axis: int) -> list[slice]:
    """Slices of one axis: crop both ends, cut into `parts` equal blocks, widen each by `overlap`."""
    if parts < 1:
        raise ValueError(f"axis {axis}: the grid needs at least 1 tile, got {parts}")
    if overlap < 0 or crop < 0:
        raise ValueError(f"axis {axis}: overlap and crop must be >= 0, got {overlap} and {crop}")
    inner = length - 2 * crop
    if inner <= 0:
        raise ValueError(f"axis {axis}: crop {crop} per border leaves nothing of length {length}")
    if inner % parts:
        raise ValueError(
            f"axis {axis}: length {inner} (after crop {crop}) does not split into {parts} equal tiles"
        )
    if parts == 1:
        if overlap:
            raise ValueError(f"axis {axis}: overlap {overlap} needs at least 2 tiles on that axis")
        return [slice(crop, crop + inner)]
    size = inner // parts + overlap
    if size > inner:
        raise ValueError(
            f"axis {axis}: overlap {overlap} makes tiles of {size} px, larger than the {inner} px "
            f"being split; use an overlap below {inner - inner // parts + 1}"
        )
    return [slice(crop + s, crop + s + size) for s in spread(inner, size, parts)]


def spread(length: int, size: int, parts: int) -> list[int]:
    """Starts of `parts` blocks of `size` along `length`: the first at 0, the last ending at
    `length`, the others evenly between (rounded). Tiles and their activation fields both use it."""
    if parts == 1:
        return [0]
    return [round(i * (length - size) / (parts - 1)) for i in range(parts)]


def tile_slices_nd(
    shape: Sequence[int], grid: Sequence[int], overlap=0, crop=0
) -> list[tuple[slice, ...]]:
    """Tiles of an N-dimensional spatial domain, row-major (last axis fastest).

    Every tile has the same size: (length - 2*crop) / parts + overlap along each axis, so every
    sub-network sees inputs of one shape.  `overlap` and `crop` are ints or one int per axis.
    """
    ndim = len(shape)
    grid = _per_axis(tuple(grid), ndim, "grid")
    overlap = _per_axis(overlap, ndim, "overlap")
    crop = _per_axis(crop, ndim, "crop")
    axes = [_axis_tiles(n, g, o, c, a) for a, (n, g, o, c) in enumerate(zip(shape, grid, overlap, crop))]
    tiles: list[tuple[slice, ...]] = [()]
    for axis in axes:
        tiles = [t + (s,) for t in tiles for s in axis]
    return tiles


def tile_slices(height: int, width: int, grid=(2, 2), overlap=0, crop=0) -> list[tuple[slice, slice]]:
    """2D tiles (row slice, column slice), row-major: CIFAR 32x32, 2x2 -> 16x16, overlap 4 -> 20x20."""
    return tile_slices_nd((height, width), grid, overlap, crop)


def tile_shape(tiles: Sequence[tuple[slice, ...]]) -> tuple[int, ...]:
    """Spatial shape shared by all tiles of a layout."""
    return tuple(s.stop - s.start for s in tiles[0])


def default_grid(partitions: int, ndim: int = 2) -> tuple[int, ...]:
    """The most nearly even grid of `partitions` tiles over `ndim` axes (4 -> 2x2, 8 -> 2x4)."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    grid, remaining = [], partitions
    for left in range(ndim, 1, -1):
        grid.append(max(d for d in range(1, remaining + 1) if remaining % d == 0 and d**left <= remaining))
        remaining //= grid[-1]
    return (*grid, remaining)


def subnets_of_rank(rank: int, size: int, partitions: int) -> list[int]:
    """Sub-networks rank `rank` trains: round-robin when size <= K, one group per sub-network else.

    With more ranks than sub-networks the ranks form K contiguous groups (so a group stays on one
    node where possible) and every rank of group k trains sub-network k data parallel.
    """
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} outside a world of {size}")
    if size <= partitions:
        return list(range(rank, partitions, size))
    return [rank * partitions // size]


def validate_layout(size: int, partitions: int) -> None:
    """Refuse R ranks that cannot split evenly over K sub-networks (R > K, R % K != 0): unequal
    groups would train with different effective batch sizes and step counts at the same lr."""
    if size > partitions and size % partitions:
        fits = [r for r in range(1, 4 * partitions + 1) if r <= partitions or r % partitions == 0]
        raise ValueError(f"{size} ranks do not split evenly over {partitions} sub-networks: sub-network groups "
                         f"would differ in size and train with different batch sizes and step counts; use at most "
                         f"{partitions} ranks or a multiple of {partitions} ({', '.join(map(str, fits))}, ...)")


def subnet_group(subnet: int, size: int, partitions: int) -> list[int]:
    """Ranks that train sub-network `subnet` together (a single rank unless size > K)."""
    return [r for r in range(size) if subnet in subnets_of_rank(r, size, partitions)]


def subnet_owner(subnet: int, size: int, partitions: int) -> int:
    """The rank that holds sub-network `subnet`'s weights for the Gatherv (its group's first)."""
    return subnet_group(subnet, size, partitions)[0]


def phase_peers(slot: str, size: int, partitions: int) -> int:
    """Data-parallel peers that train `slot` ("sub_<k>", "global" or "random") in a run of `size` ranks."""
    return len(subnet_group(int(slot[4:]), size, partitions)) if slot.startswith("sub_") else size


def elastic_batch(slot: str, total: int, peers: int) -> int:
    """The per-rank batch at which `peers` data-parallel peers continue `slot`, stopped with a batch
    of `total` samples per step over all its peers: the same `total`, so the step count of an epoch,
    the lr schedule and the samples of every step stay what they were. ValueError if `total` does not
    split evenly over `peers`."""
    if total % peers:
        fits = [p for p in range(1, total + 1) if total % p == 0]
        raise ValueError(f"{slot} was stopped at a batch of {total} samples per step over all its ranks, which "
                         f"does not split evenly over {peers} rank(s); {slot} continues on a number of ranks that "
                         f"divides {total} ({', '.join(map(str, fits))})")
    return total // peers


def gatherv_layout(counts: Sequence[int]) -> tuple[list[int], list[int]]:
    """Counts and displacements (in elements) for a Gatherv of per-rank blocks laid end to end."""
    if any(c < 0 for c in counts):
        raise ValueError(f"counts must be >= 0, got {list(counts)}")
    displs = [0] * len(counts)
    for i in range(1, len(counts)):
        displs[i] = displs[i - 1] + counts[i - 1]
    return list(counts), displs


def shard_range(n: int, rank: int, size: int) -> range:
    """Indices 0..n-1 split into `size` near-equal contiguous blocks; block `rank`."""
    start = rank * n // size
    return range(start, (rank + 1) * n // size)


__all__ = [
    "tile_slices",
    "tile_slices_nd",
    "tile_shape",
    "spread",
    "default_grid",
    "subnets_of_rank",
    "validate_layout",
    "subnet_group",
    "subnet_owner",
    "phase_peers",
    "elastic_batch",
    "gatherv_layout",
    "shard_range",
]
