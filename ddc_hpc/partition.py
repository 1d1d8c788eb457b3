"""Pure partition arithmetic: tiles of an image, sub-networks of a rank, Gatherv layouts.

Nothing here touches MPI or the environment; every function takes rank/size explicitly so it can
be unit-tested without a communicator (the heat style of counts/displacements helpers).
"""

from __future__ import annotations

import math
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


def phase_peers(slot: str, size: int, partitions: int, levels: Sequence[int] = ()) -> int:
    """Data-parallel peers that train `slot` ("sub_<k>", "global" or "random"; with decompose.levels
    `levels`, "l<level>_sub_<k>" too) in a run of `size` ranks."""
    if slot.startswith("l") and "_sub_" in slot:
        level, k = slot[1:].split("_sub_")
        return len(level_placement(size, levels)[int(level)][int(k)])
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


def level_grids(levels: Sequence[int], ndim: int, grid: Sequence[int] = ()) -> list[tuple[int, ...]]:
    """The tile grid of every level of `levels` (sub-network counts, finest first, e.g. [16, 4]):
    `grid` (or default_grid) for the finest, default_grid for the coarser ones.  Each level's grid
    must refine the next one's axis by axis, so every next-level tile is a whole block of tiles."""
    if not levels or any(k < 1 for k in levels):
        raise ValueError(f"levels must be sub-network counts >= 1, finest first, got {list(levels)}")
    grids = [tuple(grid) or default_grid(levels[0], ndim)] + [default_grid(k, ndim) for k in levels[1:]]
    for level, (fine, coarse) in enumerate(zip(grids, grids[1:])):
        if len(fine) != ndim or any(f % c for f, c in zip(fine, coarse)) or math.prod(fine) <= math.prod(coarse):
            raise ValueError(f"level {level}'s {'x'.join(map(str, fine))} grid of {levels[level]} tiles does not refine "
                             f"level {level + 1}'s {'x'.join(map(str, coarse))} grid of {levels[level + 1]}: every axis "
                             "of a level must split each tile of the next level into equal parts")
    return grids


def level_tiles(spatial: Sequence[int], grids: Sequence[Sequence[int]], overlap=0,
                crop=0) -> list[list[tuple[slice, ...]]]:
    """Tiles of every level, finest first, cut recursively: the coarsest level's tiles from the image
    (tile_slices_nd with `overlap` and `crop`), each finer level's by cutting every tile of the next
    level into its block (with `overlap`, no crop).  Tiles are numbered group by group: sub-networks
    g*m .. g*m+m-1 of a level (m = its count / the next one's) are the block of the next level's
    tile g, so one level is exactly today's tile_slices_nd."""
    levels = [tile_slices_nd(spatial, grids[-1], overlap, crop)]
    for fine, coarse in zip(reversed(grids[:-1]), reversed(grids[1:])):
        parent = levels[0]
        block = tuple(f // c for f, c in zip(fine, coarse))
        levels.insert(0, [tuple(slice(outer.start + s.start, outer.start + s.stop) for outer, s in zip(tile, cut))
                          for tile in parent for cut in tile_slices_nd(tile_shape([tile]), block, overlap)])
    return levels


def level_group(subnet: int, levels: Sequence[int], level: int) -> list[int]:
    """Sub-networks of level `level` that compose into sub-network `subnet` of level `level + 1`
    (the global network, subnet 0, above the last level)."""
    above = levels[level + 1] if level + 1 < len(levels) else 1
    m = levels[level] // above
    if not 0 <= subnet < above:
        raise ValueError(f"level {level + 1} has {above} sub-network(s), not {subnet}")
    return list(range(subnet * m, (subnet + 1) * m))


def relative_tiles(tiles: Sequence[tuple[slice, ...]], within: tuple[slice, ...]) -> list[tuple[slice, ...]]:
    """`tiles` as slices of the tile `within` (a group's tiles inside the next level's tile): a
    next-level sub-network is a global network whose image is its tile."""
    if any(not (w.start <= s.start and s.stop <= w.stop) for t in tiles for s, w in zip(t, within)):
        raise ValueError(f"tiles {list(tiles)} do not lie inside {within}")
    return [tuple(slice(s.start - w.start, s.stop - w.start) for s, w in zip(t, within)) for t in tiles]


def level_placement(size: int, levels: Sequence[int]) -> list[list[list[int]]]:
    """For every level (finest first) and sub-network, the ranks that train it (the first owns it).

    The last level is placed as today's one level (subnets_of_rank).  A finer level follows the
    next one, so composing a group needs no rank outside the next sub-network's ranks: a group
    whose next-level sub-network has one rank lives on that rank; one whose next-level sub-network
    has a group of ranks spreads over them (contiguous blocks when it has at least as many ranks as
    sub-networks, round robin within the group otherwise)."""
    for k in levels:
        validate_layout(size, k)
    placement = [[subnet_group(k, size, levels[-1]) for k in range(levels[-1])]]
    for level in range(len(levels) - 2, -1, -1):
        above, groups = placement[0], []
        for j, ranks in enumerate(above):
            members = level_group(j, levels, level)
            m, n = len(members), len(ranks)
            if n <= m:
                groups += [[ranks[i % n]] for i in range(m)]
            else:
                groups += [ranks[i * n // m:(i + 1) * n // m] for i in range(m)]
        placement.insert(0, groups)
    return placement


def level_gather(size: int, levels: Sequence[int], level: int, counts: Sequence[int]) -> list[dict]:
    """How level `level`'s trained sub-networks reach the owners of level `level + 1`'s: one entry per
    next-level sub-network j (the global network above the last level) with `root` (its owner),
    `ranks` (the ranks taking part, the root first: the next sub-network's ranks, or the whole world
    for the global network) and `counts` / `displs` (elements each of those ranks sends, in `ranks`
    order: the flat states of the members it owns; `counts[k]` is sub-network k's flat size).  The
    groups of different j are disjoint, so the level takes one Gatherv per group at once."""
    placement = level_placement(size, levels)
    last = level == len(levels) - 1
    above = [list(range(size))] if last else placement[level + 1]
    owners = [ranks[0] for ranks in placement[level]]
    plan = []
    for j, ranks in enumerate(above):
        members = level_group(j, levels, level)
        sent = [sum(counts[k] for k in members if owners[k] == r) for r in ranks]
        plan.append({"root": ranks[0], "ranks": list(ranks), "members": members,
                     "order": sorted(members, key=lambda k: (ranks.index(owners[k]), k)),
                     "counts": sent, "displs": gatherv_layout(sent)[1]})
    return plan


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
    "level_grids",
    "level_tiles",
    "level_group",
    "relative_tiles",
    "level_placement",
    "level_gather",
]
