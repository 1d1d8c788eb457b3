"""Theorem 2.1's check of a flatten-FC network (VGG) shares no code with the composition's placement:
a composition that puts a sub-network's field in the wrong place fails it."""

from __future__ import annotations

import importlib

import torch

from ddc_hpc.models import build_model
from ddc_hpc.partition import tile_shape, tile_slices_nd

composition = importlib.import_module("ddc_hpc.compose")  # the module (ddc_hpc.compose is also the function)
TOLERANCE = 1e-4
SIZE = (64, 64)


def _vgg(tiles, partitions):
    options = dict(width=8, fc_width=32)
    size = tile_shape(tiles) if partitions > 1 else SIZE
    return build_model("vgg11", 10, partitions, input_size=size, **options)


def test_a_misplaced_flatten_fc_field_fails_the_check(monkeypatch, one_thread):
    torch.manual_seed(0)
    tiles = tile_slices_nd(SIZE, (2, 2), overlap=16)  # 48x48 tiles: 1x1 fields on the 2x2 map
    subnets = [_vgg(tiles, 4).eval() for _ in range(4)]
    x = torch.randn(3, 3, *SIZE)
    right = composition.compose(subnets, _vgg(tiles, 1), tiles=tiles, input_size=SIZE).eval()
    assert composition.theorem_error(right, subnets, x, tiles=tiles)["max_rel"] <= TOLERANCE

    origins = composition.field_origins

    def swapped(*args, **kwargs):  # a bug in the placement: sub-networks 1 and 2 trade fields
        placed = origins(*args, **kwargs)
        placed[1], placed[2] = placed[2], placed[1]
        return placed

    monkeypatch.setattr(composition, "field_origins", swapped)  # in force for compose and for the check
    wrong = composition.compose(subnets, _vgg(tiles, 1), tiles=tiles, input_size=SIZE).eval()
    assert composition.theorem_error(wrong, subnets, x, tiles=tiles)["max_rel"] > 0.01
