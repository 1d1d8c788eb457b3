"""Tile layouts of the paper's experiments and the rank / Gatherv arithmetic (no MPI needed)."""

import pytest

from ddc_hpc.partition import (
    default_grid, gatherv_layout, level_gather, phase_peers, level_grids, level_group, level_placement, level_tiles,
    relative_tiles, shard_range, subnet_group, subnet_owner, subnets_of_rank, tile_shape, tile_slices,
    tile_slices_nd, validate_layout,
)


def starts(tiles, axis):
    return sorted({t[axis].start for t in tiles})


def test_cifar_2x2_without_overlap_gives_four_16x16_tiles_covering_the_image():
    tiles = tile_slices(32, 32)
    assert tile_shape(tiles) == (16, 16)
    assert tiles == [(slice(0, 16), slice(0, 16)), (slice(0, 16), slice(16, 32)),
                     (slice(16, 32), slice(0, 16)), (slice(16, 32), slice(16, 32))]


def test_cifar_2x2_with_overlap_4_gives_20x20_tiles_flush_with_the_borders():
    tiles = tile_slices(32, 32, overlap=4)
    assert tile_shape(tiles) == (20, 20)
    assert starts(tiles, 0) == starts(tiles, 1) == [0, 12]


def test_food101_224_2x2_overlap_28_gives_140x140_tiles():
    tiles = tile_slices(224, 224, overlap=28)
    assert tile_shape(tiles) == (140, 140)
    assert starts(tiles, 0) == [0, 84]


def test_16_partitions_crop_24_4x4_grid_overlap_26_gives_70x70_tiles_inside_the_crop():
    tiles = tile_slices(224, 224, grid=(4, 4), overlap=26, crop=24)
    assert len(tiles) == 16 and tile_shape(tiles) == (70, 70)
    assert starts(tiles, 1) == [24, 59, 95, 130]
    assert max(t[0].stop for t in tiles) == 224 - 24


def test_2x4_grid_for_8_partitions_is_row_major():
    tiles = tile_slices(32, 32, grid=(2, 4))
    assert len(tiles) == 8 and tile_shape(tiles) == (16, 8)
    assert [t[1].start for t in tiles[:4]] == [0, 8, 16, 24]
    assert {t[0].start for t in tiles[:4]} == {0}


def test_3d_2x2x2_grid_cuts_a_volume_into_eight_cubes():
    tiles = tile_slices_nd((8, 8, 8), (2, 2, 2), overlap=2)
    assert len(tiles) == 8 and tile_shape(tiles) == (6, 6, 6)
    assert tiles[-1] == (slice(2, 8),) * 3


@pytest.mark.parametrize("kwargs, message", [
    (dict(height=30, width=32, grid=(4, 4)), "does not split into 4"),
    (dict(height=32, width=32, overlap=20), "overlap 20"),
    (dict(height=32, width=32, crop=16), "crop 16"),
    (dict(height=32, width=32, overlap=-1), ">= 0"),
    (dict(height=32, width=32, crop=-2), ">= 0"),
    (dict(height=32, width=32, grid=(2, 2, 2)), "grid"),
    (dict(height=32, width=32, grid=(1, 2), overlap=2), "at least 2 tiles"),
])
def test_bad_layouts_are_refused_with_the_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tile_slices(**kwargs)


@pytest.mark.parametrize("partitions, ndim, grid", [
    (1, 2, (1, 1)), (2, 2, (1, 2)), (4, 2, (2, 2)), (8, 2, (2, 4)), (16, 2, (4, 4)), (8, 3, (2, 2, 2)),
])
def test_default_grid_is_the_most_even_one(partitions, ndim, grid):
    assert default_grid(partitions, ndim) == grid


def test_default_grid_refuses_zero_partitions():
    with pytest.raises(ValueError):
        default_grid(0)


def test_sub_networks_are_dealt_round_robin_when_ranks_do_not_exceed_them():
    assert [subnets_of_rank(r, 4, 4) for r in range(4)] == [[0], [1], [2], [3]]
    assert [subnets_of_rank(r, 2, 4) for r in range(2)] == [[0, 2], [1, 3]]
    assert subnets_of_rank(0, 1, 4) == [0, 1, 2, 3]


def test_extra_ranks_form_one_contiguous_group_per_sub_network():
    assert [subnets_of_rank(r, 8, 4) for r in range(8)] == [[0], [0], [1], [1], [2], [2], [3], [3]]
    assert subnet_group(1, 8, 4) == [2, 3] and subnet_owner(1, 8, 4) == 2
    assert subnet_owner(3, 2, 4) == 1


@pytest.mark.parametrize("size, partitions", [(1, 4), (3, 4), (4, 4), (8, 4), (12, 4), (6, 2), (5, 1)])
def test_ranks_up_to_k_or_a_multiple_of_k_are_accepted(size, partitions):
    validate_layout(size, partitions)


@pytest.mark.parametrize("size, partitions", [(5, 4), (6, 4), (3, 2), (7, 3)])
def test_more_ranks_than_subnetworks_must_be_a_multiple_of_them(size, partitions):
    with pytest.raises(ValueError, match=f"{size} ranks do not split evenly over {partitions} sub-networks.*"
                                         f"multiple of {partitions}"):
        validate_layout(size, partitions)


def test_a_rank_outside_the_world_is_refused():
    with pytest.raises(ValueError, match="rank 4"):
        subnets_of_rank(4, 4, 4)


def test_gatherv_layout_lays_uneven_blocks_end_to_end():
    assert gatherv_layout([3, 0, 5]) == ([3, 0, 5], [0, 3, 3])
    with pytest.raises(ValueError):
        gatherv_layout([2, -1])


def test_shards_cover_every_index_once():
    shards = [shard_range(10, r, 3) for r in range(3)]
    assert [i for s in shards for i in s] == list(range(10))


def test_1d_segments_of_a_signal_with_overlap_and_crop_stay_inside_the_crop():
    tiles = tile_slices_nd((100,), (4,), overlap=4, crop=2)
    assert tile_shape(tiles) == (28,)
    assert [t[0].start for t in tiles] == [2, 25, 47, 70] and tiles[-1][0].stop == 98


def test_1d_segments_without_overlap_partition_the_feature_vector():
    tiles = tile_slices_nd((64,), (8,))
    assert [(t[0].start, t[0].stop) for t in tiles] == [(8 * i, 8 * i + 8) for i in range(8)]


def test_3d_grid_with_overlap_and_crop_per_axis():
    tiles = tile_slices_nd((16, 20, 24), (2, 2, 2), overlap=(2, 0, 4), crop=(0, 2, 4))
    assert len(tiles) == 8 and tile_shape(tiles) == (10, 8, 12)
    assert [starts(tiles, axis) for axis in range(3)] == [[0, 6], [2, 10], [4, 8]]
    assert tiles[1] == (slice(0, 10), slice(2, 10), slice(8, 20))  # row-major: the last axis varies fastest
    assert tiles[-1] == (slice(6, 16), slice(10, 18), slice(8, 20))


def test_3d_uneven_grid_of_eight_sub_volumes():
    tiles = tile_slices_nd((8, 8, 16), (1, 2, 4))
    assert len(tiles) == 8 and tile_shape(tiles) == (8, 4, 4)
    assert all(t[0] == slice(0, 8) for t in tiles)


@pytest.mark.parametrize("shape, grid, kwargs, message", [
    ((16, 16, 16), (2, 2, 2), dict(overlap=(1, 2)), "overlap must be an int or 3 ints"),
    ((16, 16, 16), (2, 2), {}, "grid must be an int or 3 ints"),
    ((16, 16, 18), (2, 2, 4), {}, "axis 2: length 18"),
    ((30,), (3,), dict(crop=(3,), overlap=30), "axis 0: overlap 30"),
])
def test_bad_nd_layouts_name_the_axis_or_argument(shape, grid, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tile_slices_nd(shape, grid, **kwargs)


def test_default_grids_for_signals_and_volumes():
    assert default_grid(4, 1) == (4,)
    assert default_grid(4, 3) == (1, 2, 2)
    assert default_grid(16, 3) == (2, 2, 4)


def test_spread_puts_the_first_block_at_zero_and_the_last_at_the_end():
    """One formula for tiles (tile_slices_nd) and their activation fields (compose.field_origins)."""
    from ddc_hpc.compose import field_origins
    from ddc_hpc.partition import spread

    assert spread(32, 20, 2) == [0, 12] and spread(10, 4, 3) == [0, 3, 6] and spread(7, 7, 1) == [0]
    assert [t[0].start for t in tile_slices_nd((32,), (3,), overlap=2, crop=1)] == [1 + s for s in spread(30, 12, 3)]
    assert field_origins((8, 8), (5, 5), (2, 2)) == [(a, b) for a in spread(8, 5, 2) for b in spread(8, 5, 2)]


# ---- decompose.levels: multilevel composition (issue 33) ----

def test_level_grids_refine_and_a_grid_that_does_not_is_refused():
    assert level_grids([16, 4], 2) == [(4, 4), (2, 2)]
    assert level_grids([8, 2], 3) == [(2, 2, 2), (1, 1, 2)]
    assert level_grids([4], 2, (1, 4)) == [(1, 4)]
    with pytest.raises(ValueError, match="does not refine"):
        level_grids([16, 4], 2, (1, 16))


@pytest.mark.parametrize("overlap, crop", [(0, 0), (4, 0), (2, 4)])
def test_one_level_has_todays_tiles(overlap, crop):
    assert level_tiles((32, 32), [(2, 2)], overlap, crop) == [tile_slices(32, 32, (2, 2), overlap, crop)]


@pytest.mark.parametrize("overlap", [0, 2])
def test_each_group_of_tiles_is_cut_from_its_next_level_tile(overlap):
    """[16, 4] on 32x32: the 4 level-1 tiles are today's K = 4 tiles; group g (sub-networks 4g..4g+3)
    cuts tile g into its 2x2 block (covering it exactly without overlap), all tiles of a level alike."""
    fine, coarse = level_tiles((32, 32), level_grids([16, 4], 2), overlap)
    assert coarse == tile_slices(32, 32, (2, 2), overlap)
    for g, parent in enumerate(coarse):
        group = [fine[k] for k in level_group(g, [16, 4], 0)]
        assert relative_tiles(group, parent) == tile_slices(*tile_shape([parent]), (2, 2), overlap)
    assert len({tile_shape([t]) for t in fine}) == 1
    side = (16 + overlap) // 2 + overlap  # 8x8 without overlap
    assert tile_shape(fine) == (side, side)


def test_the_groups_of_the_last_level_make_the_global_network():
    assert level_group(0, [16, 4], 1) == [0, 1, 2, 3]
    assert level_group(3, [16, 4], 0) == [12, 13, 14, 15]
    with pytest.raises(ValueError, match="level 2 has 1"):
        level_group(1, [16, 4], 1)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 8, 16])
def test_every_group_lives_on_the_ranks_of_the_sub_network_it_composes_into(size):
    """No all-to-all: a level's group reaches only its next sub-network's ranks; the last level is
    placed as one level is today; ranks beyond a level's K train its sub-networks data parallel."""
    levels = [16, 4]
    placement = level_placement(size, levels)
    assert placement[-1] == [subnet_group(k, size, 4) for k in range(4)]
    for j, ranks in enumerate(placement[1]):
        for k in level_group(j, levels, 0):
            assert set(placement[0][k]) <= set(ranks)
    for level, count in enumerate(levels):
        trained = [k for r in range(size) for k in range(count) if r in placement[level][k]]
        assert sorted(set(trained)) == list(range(count))  # every sub-network trained, every rank busy
        assert {r for ranks in placement[level] for r in ranks} == set(range(size))
        if size > count:
            assert {len(ranks) for ranks in placement[level]} == {size // count}


@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_each_levels_gatherv_brings_every_member_to_its_root_in_order(size):
    """Simulate each level's Gathervs on flat states (sub-network k = [k] * its count): the root
    reads back exactly its group's members, in the order the layout names."""
    levels = [16, 4]
    placement = level_placement(size, levels)
    for level, count in enumerate(levels):
        sizes = [3 + k % 2 for k in range(count)]
        gathers = level_gather(size, levels, level, sizes)
        assert len(gathers) == (levels[level + 1] if level + 1 < len(levels) else 1)
        for gather in gathers:
            blocks = [[k] * sizes[k] for r in gather["ranks"] for k in sorted(gather["members"])
                      if placement[level][k][0] == r]
            received = [v for block in blocks for v in block]
            assert len(received) == sum(gather["counts"]) and gather["root"] == gather["ranks"][0]
            assert gather["displs"] == gatherv_layout(gather["counts"])[1]
            start = 0
            for k in gather["order"]:
                assert received[start:start + sizes[k]] == [k] * sizes[k]
                start += sizes[k]
            assert sorted(gather["order"]) == gather["members"]


def test_relative_tiles_refuse_a_tile_outside():
    with pytest.raises(ValueError, match="do not lie inside"):
        relative_tiles([(slice(0, 8), slice(0, 8))], (slice(4, 16), slice(0, 16)))


def test_phase_peers_count_a_levels_sub_network_by_its_placement():
    """An elastic resume keeps a level's batch of a step: l1_sub_j's peers are its ranks at that level."""
    assert phase_peers("l1_sub_0", 2, 16, [16, 4]) == 1 and phase_peers("l1_sub_3", 8, 16, [16, 4]) == 2
    assert phase_peers("sub_5", 32, 16, [16, 4]) == 2 == len(level_placement(32, [16, 4])[0][5])
