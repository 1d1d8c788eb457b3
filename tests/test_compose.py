"""Composition (eq. 2.11-2.14) checked against Theorem 2.1 and independent constructions."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddc_hpc.compose import (
    compose, compose_group, field_origins, flatten_fc_layers, flatten_state, output_tiled_layers, state_numel, theorem_error,
    unflatten_state,
)
from ddc_hpc.models import build_model, input_options, model_defaults, model_names, model_options
from ddc_hpc.partition import level_grids, level_group, level_tiles, relative_tiles, tile_shape, tile_slices_nd

torch.set_num_threads(1)
TOLERANCE = 1e-5  # relative, float32


def randomize_batchnorm(net: nn.Module) -> nn.Module:
    """Trained-looking BatchNorm: random affine and running statistics, so composition must move them."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(int(torch.randint(1, 100, ())))
    return net


def composed(name: str, K: int, num_classes: int = 10, task: str = "classification", **options):
    subnets = [randomize_batchnorm(build_model(name, num_classes, K, **options)) for _ in range(K)]
    return compose(subnets, build_model(name, num_classes, 1, **options), task=task), subnets


def has_flatten_fc(name: str) -> bool:
    with torch.device("meta"):
        return bool(flatten_fc_layers(build_model(name, 10)))


# Every registered model for which F(x) = sum_k F_k(x) holds exactly; a new family is covered by
# registering it.  VGG's flatten-FC head is checked field by field further down instead.
THEOREM_MODELS = [n for n in model_names() if not has_flatten_fc(n)]


def small_case(name: str, K: int, task: str | None = None, num_classes: int = 10, overlap: int = 2):
    """(global net, sub-networks, x, tiles, task) for model `name` at a size a 2-core machine runs fast.

    The per-family input comes from model_defaults: its channels and number of spatial axes.  A
    model with an `in_features` option decomposes its input: sub-network k is built for, and
    reads, tile k of a 1D grid with overlap; every other model's sub-networks read the full x.
    """
    defaults = model_defaults(name)
    dims = defaults["dims"]
    size = {1: 32, 3: 8}.get(dims, 16 if defaults["input_size"] <= 32 else 32)
    spatial, channels, tiles = (size,) * dims, None, None
    if "in_features" in model_options(name):  # two channels of a 1D feature vector, cut in K tiles
        channels, tiles = 2, tile_slices_nd(spatial, (K,), overlap=overlap)
    options = {"width": 16, **input_options(name, spatial, channels)}
    sub_options = {"width": 16, **input_options(name, tile_shape(tiles) if tiles else spatial, channels)}
    channels = model_defaults(name, **options)["input_shape"][0]
    subnets = [randomize_batchnorm(build_model(name, num_classes, K, **sub_options)) for _ in range(K)]
    global_net = build_model(name, num_classes, 1, **options)
    task = task or ("autoencoder" if output_tiled_layers(global_net) else "classification")
    compose(subnets, global_net, task=task, tiles=tiles)
    return global_net, subnets, torch.randn(16, channels, *(size,) * dims), tiles, task


@pytest.mark.parametrize("K", [2, 4, 8])
@pytest.mark.parametrize("name", THEOREM_MODELS)
def test_theorem_2_1_for_every_registered_model(name, K):
    """classification: F(x) = sum_k F_k(x) (GAP and recurrent nets on the full x, an mlp on its
    tiles x_k); mlp_autoencoder: F(x) on tile k = F_k(x_k); in eval and train mode."""
    torch.manual_seed(K)
    global_net, subnets, x, tiles, task = small_case(name, K)
    # 16 samples: train-mode BatchNorm over fewer values, at a 1x1 map, amplifies rounding
    for train in (False, True):
        error = theorem_error(global_net, subnets, x, task=task, tiles=tiles, train=train)
        assert error["max_rel"] <= TOLERANCE, f"train={train}: {error}"


@pytest.mark.parametrize("name", [n for n in THEOREM_MODELS if n != "mlp_autoencoder"])
def test_regression_output_of_every_registered_model_is_the_mean_of_the_sub_outputs(name):
    torch.manual_seed(1)
    global_net, subnets, x, tiles, _ = small_case(name, 4, task="regression", num_classes=3)
    assert theorem_error(global_net, subnets, x, task="regression", tiles=tiles)["max_rel"] <= TOLERANCE
    # ... and not the sum: the check can fail
    assert theorem_error(global_net, subnets, x, task="classification", tiles=tiles)["max_rel"] > 0.1


def test_a_hidden_conv_is_block_diagonal_and_equals_a_grouped_conv():
    K = 4
    global_net, subnets = composed("cifar_resnet20", K, width=8)
    weight = global_net.layer1[0].conv1.weight
    sub_weights = [s.layer1[0].conv1.weight for s in subnets]
    o, i = sub_weights[0].shape[:2]
    for row in range(K):
        for col in range(K):
            block = weight[row * o:(row + 1) * o, col * i:(col + 1) * i]
            assert torch.equal(block, sub_weights[row] if row == col else torch.zeros_like(block))
    x = torch.randn(2, K * i, 8, 8)
    grouped = F.conv2d(x, torch.cat(sub_weights), padding=1, groups=K)
    torch.testing.assert_close(F.conv2d(x, weight, padding=1), grouped, rtol=1e-5, atol=1e-6)


def test_feature_maps_of_layers_1_3_5_are_the_sub_networks_maps_channel_group_by_channel_group():
    K = 4
    global_net, subnets = composed("cnn11", K, width=8)
    x = torch.randn(2, 3, 32, 32)

    def feature_maps(net):
        units = [m for m in net.features if isinstance(m, nn.Sequential)]  # the conv-BN-ReLU layers
        maps = {}
        hooks = [units[layer - 1].register_forward_hook(lambda m, i, out, layer=layer: maps.__setitem__(layer, out))
                 for layer in (1, 3, 5)]
        with torch.no_grad():
            net.eval()(x)
        for h in hooks:
            h.remove()
        return maps

    global_maps = feature_maps(global_net)
    for k, sub in enumerate(subnets):
        for layer, sub_map in feature_maps(sub).items():
            c = sub_map.shape[1]
            torch.testing.assert_close(global_maps[layer][:, k * c:(k + 1) * c], sub_map, rtol=1e-5, atol=1e-5)


def test_batchnorm_statistics_are_concatenated_and_batch_count_is_the_maximum():
    global_net, subnets = composed("cifar_resnet20", 2, width=8)
    bn, sub_bns = global_net.layer2[0].bn1, [s.layer2[0].bn1 for s in subnets]
    for attr in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(bn, attr), torch.cat([getattr(b, attr) for b in sub_bns]))
    assert bn.num_batches_tracked == max(b.num_batches_tracked for b in sub_bns)


def test_regression_output_is_the_mean_of_the_sub_outputs():
    K = 4
    global_net, subnets = composed("cifar_resnet20", K, num_classes=3, task="regression", width=8)
    assert theorem_error(global_net, subnets, torch.randn(4, 3, 16, 16), task="regression")["max_rel"] <= TOLERANCE
    torch.testing.assert_close(global_net.fc.bias, torch.stack([s.fc.bias for s in subnets]).mean(0))


def mlp(features: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, outputs))


def test_autoencoder_output_is_the_concatenation_of_sub_outputs_on_their_feature_segments():
    K, features, hidden = 4, 6, 5
    subnets = [mlp(features, hidden, features) for _ in range(K)]
    global_net = compose(subnets, mlp(K * features, K * hidden, K * features), task="autoencoder")
    x = torch.randn(8, K * features)
    expected = torch.cat([s(seg) for s, seg in zip(subnets, x.chunk(K, dim=1))], dim=1)
    torch.testing.assert_close(global_net(x), expected, rtol=1e-5, atol=1e-6)
    assert theorem_error(global_net, subnets, x, task="autoencoder")["max_rel"] <= TOLERANCE


def test_an_autoencoder_refuses_a_layer_that_sums_the_sub_networks():
    subnets = [mlp(6, 5, 3) for _ in range(2)]
    with pytest.raises(ValueError, match="autoencoder"):
        compose(subnets, mlp(12, 10, 3), task="autoencoder")


def depthwise_net(channels: int, groups_per_channel: bool = True) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1, groups=channels if groups_per_channel else 2),
        nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 5))


def test_depthwise_convs_compose_by_concatenation():
    K = 4
    subnets = [randomize_batchnorm(depthwise_net(4)) for _ in range(K)]
    global_net = compose(subnets, depthwise_net(4 * K))
    assert torch.equal(global_net[3].weight, torch.cat([s[3].weight for s in subnets]))
    for train in (False, True):
        assert theorem_error(global_net, subnets, torch.randn(8, 3, 8, 8), train=train)["max_rel"] <= TOLERANCE


def test_a_grouped_conv_with_as_many_groups_as_its_sub_networks_is_refused():
    subnets = [depthwise_net(4, groups_per_channel=False) for _ in range(2)]
    with pytest.raises(ValueError, match="grouped conv with 2 groups"):
        compose(subnets, depthwise_net(8, groups_per_channel=False))


@pytest.mark.parametrize("tile, K, grid, origins", [
    (140, 4, None, [(0, 0), (0, 3), (3, 0), (3, 3)]),    # overlapping tiles: 4x4 fields on a 7x7 map
    (112, 4, None, [(0, 0), (0, 4), (4, 0), (4, 4)]),    # non-overlapping: 3x3 fields
    ((224, 56), 4, (1, 4), [(0, 0), (0, 2), (0, 4), (0, 6)]),
    ((112, 56), 8, None, [(r, c) for r in (0, 4) for c in (0, 2, 4, 6)]),  # the 2x4 grid of 8 partitions
])
def test_vgg_flatten_fc_places_each_sub_network_at_its_tiles_field(tile, K, grid, origins):
    torch.manual_seed(0)
    options = dict(width=8, fc_width=64)
    subnets = [build_model("vgg11", 10, K, input_size=tile, **options).eval() for _ in range(K)]
    global_net = compose(subnets, build_model("vgg11", 10, 1, input_size=224, **options), grid=grid).eval()
    C, H, W = global_net.classifier[0].feature_shape
    c, h, w = subnets[0].classifier[0].feature_shape
    assert field_origins((H, W), (h, w), grid or (2, 2) if K == 4 else (2, 4)) == origins
    sub_maps = torch.randn(K, 2, c, h, w)
    # Noise wherever no field lies: the composed weights there must be zero.
    global_map = torch.randn(2, C, H, W)
    for k, (row, col) in enumerate(origins):
        global_map[:, k * c:(k + 1) * c, row:row + h, col:col + w] = sub_maps[k]
    with torch.no_grad():
        logits = global_net.classifier(global_map.flatten(1))
        expected = sum(s.classifier(m.flatten(1)) for s, m in zip(subnets, sub_maps))
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size, overlap, crop", [
    ((128, 128), 0, 16),   # the crop insets the fields: (1, 1)..(2, 2), not the grid's (0, 0)..(3, 3)
    ((96, 128), 8, 8),     # overlap and crop, non-square
    ((64, 64), 8, 4),
])
def test_a_flatten_fc_network_satisfies_theorem_2_1_per_tile_field(size, overlap, crop):
    """VGG, composed from the tiles: F with sub k's feature map at tile k's field = sum_k F_k(x_k)."""
    torch.manual_seed(0)
    tiles = tile_slices_nd(size, (2, 2), overlap=overlap, crop=crop)
    options = dict(width=8, fc_width=32)
    subnets = [randomize_batchnorm(build_model("vgg11", 10, 4, input_size=tile_shape(tiles), **options)) for _ in range(4)]
    global_net = compose(subnets, build_model("vgg11", 10, 1, input_size=size, **options), tiles=tiles, input_size=size)
    x = torch.randn(4, 3, *size)
    assert theorem_error(global_net, subnets, x, tiles=tiles)["max_rel"] <= TOLERANCE
    assert theorem_error(global_net, subnets, x, task="regression", tiles=tiles)["max_rel"] > 0.1  # the check can fail
    with pytest.raises(ValueError, match="classifier.0 reads tile fields.*pass tiles="):
        theorem_error(global_net, subnets, x)


def test_a_flatten_fc_placed_by_the_grid_despite_a_crop_fails_the_check():
    tiles, size = tile_slices_nd((128, 128), (2, 2), crop=16), (128, 128)
    subnets = [build_model("vgg11", 10, 4, width=8, fc_width=32, input_size=48) for _ in range(4)]
    by_grid = compose(subnets, build_model("vgg11", 10, 1, width=8, fc_width=32, input_size=size), grid=(2, 2))
    assert theorem_error(by_grid, subnets, torch.randn(4, 3, *size), tiles=tiles)["max_rel"] > 0.01
    with pytest.raises(ValueError, match="classifier.0: .*pass input_size="):
        compose(subnets, build_model("vgg11", 10, 1, width=8, fc_width=32, input_size=size), tiles=tiles)


def test_field_origins_follow_the_tiles():
    # without crop the tiles give the grid's fields; a crop of 16 px insets them on the 4x4 map
    for overlap in (0, 16):
        tiles = tile_slices_nd((128, 128), (2, 2), overlap=overlap)
        field = (128 // 2 + overlap) // 32
        assert field_origins((4, 4), (field, field), tiles=tiles, input_size=(128, 128)) == \
            field_origins((4, 4), (field, field), (2, 2))
    cropped = tile_slices_nd((128, 128), (2, 2), crop=16)
    assert field_origins((4, 4), (1, 1), tiles=cropped, input_size=(128, 128)) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    uneven = [(slice(0, 64),), (slice(16, 80),), (slice(64, 128),)]  # any layout of equal tiles
    assert field_origins((4,), (2,), tiles=uneven, input_size=(128,)) == [(0,), (0,), (2,)]
    with pytest.raises(ValueError, match="different sizes"):
        field_origins((4,), (2,), tiles=[(slice(0, 64),), (slice(0, 32),)], input_size=(128,))
    with pytest.raises(ValueError, match="inside an input"):
        field_origins((4,), (2,), tiles=[(slice(100, 164),)], input_size=(128,))


def test_field_origins_spread_like_the_tiles():
    assert field_origins((7,), (4,), (1,)) == [(0,)]
    assert field_origins((8, 8, 8), (4, 4, 4), (2, 2, 2))[-1] == (4, 4, 4)
    with pytest.raises(ValueError, match="does not fit"):
        field_origins((3, 3), (4, 4), (2, 2))


def test_mismatched_structures_are_refused_naming_the_module():
    subnets = [build_model("cifar_resnet20", 10, 2, width=8) for _ in range(2)]
    with pytest.raises(ValueError, match="modules"):
        compose(subnets, build_model("cifar_resnet32", 10, 1, width=8))
    other = [nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()) for _ in range(2)]
    with pytest.raises(ValueError, match=r"0 \(Conv2d\).*0 \(Linear\)"):
        compose(other, nn.Sequential(nn.Linear(3, 8), nn.ReLU()))


def test_sub_networks_of_another_partition_count_are_refused_with_the_shapes():
    subnets = [build_model("cifar_resnet20", 10, 4, width=8) for _ in range(2)]
    with pytest.raises(ValueError, match=r"conv1.*\b8\b.*\b2\b"):
        compose(subnets, build_model("cifar_resnet20", 10, 1, width=8))


def test_a_conv_with_other_stride_is_refused():
    subnets = [nn.Sequential(nn.Conv2d(3, 4, 3, stride=2)) for _ in range(2)]
    with pytest.raises(ValueError, match="0: stride"):
        compose(subnets, nn.Sequential(nn.Conv2d(3, 8, 3)))


@pytest.mark.parametrize("layer", [lambda n: nn.LayerNorm(n), lambda n: nn.PReLU(n), lambda n: nn.GroupNorm(2, n)])
def test_an_unsupported_layer_with_parameters_is_an_error_not_skipped(layer):
    subnets = [nn.Sequential(nn.Linear(4, 4), layer(4)) for _ in range(2)]
    with pytest.raises(TypeError, match=f"1: cannot compose a {type(layer(4)).__name__}"):
        compose(subnets, nn.Sequential(nn.Linear(4, 8), layer(8)))


def test_an_unknown_task_is_refused():
    with pytest.raises(ValueError, match="task"):
        compose([nn.Linear(2, 2)], nn.Linear(2, 2), task="segmentation")


def test_theorem_check_leaves_modes_and_running_statistics_as_found():
    global_net, subnets = composed("cifar_resnet20", 2, width=8)
    global_net.eval()
    subnets[0].layer1.train()
    nets = [global_net, *subnets]
    modes = [[m.training for m in n.modules()] for n in nets]
    state = [{k: v.clone() for k, v in n.state_dict().items()} for n in nets]
    theorem_error(global_net, subnets, torch.randn(4, 3, 16, 16), train=True)
    assert [[m.training for m in n.modules()] for n in nets] == modes
    for net, saved in zip(nets, state):
        assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())


def test_flat_state_round_trips_parameters_and_batchnorm_buffers_exactly():
    source = randomize_batchnorm(build_model("cifar_resnet20", 10, 2, width=8))
    flat = flatten_state(source)
    assert flat.dtype == torch.float32 and flat.shape == (state_numel(source),)
    target = build_model("cifar_resnet20", 10, 2, width=8)
    unflatten_state(target, flat)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    with pytest.raises(ValueError, match="does not fit"):
        unflatten_state(target, flat[:-1])


def test_a_batch_count_float32_cannot_hold_exactly_is_refused():
    net = nn.BatchNorm1d(2)
    net.num_batches_tracked.fill_(2**24 + 1)
    with pytest.raises(ValueError, match="num_batches_tracked"):
        flatten_state(net)
    assert flatten_state(net.double()).dtype == torch.float64  # float64 holds it


def test_the_public_compose_is_the_function_even_after_its_module_was_imported():
    import sys

    import ddc_hpc
    from ddc_hpc.compose import compose as compose_function  # imports the submodule

    assert ddc_hpc.compose is compose_function is sys.modules["ddc_hpc.compose"].compose


def test_a_bias_only_the_sub_networks_have_is_refused_not_dropped():
    subnets = [nn.Sequential(nn.Linear(4, 2)) for _ in range(2)]
    with pytest.raises(ValueError, match="bias"):
        compose(subnets, nn.Sequential(nn.Linear(4, 4, bias=False)))


# ---- decompose.levels: every level's composition (issue 33) ----

# One model of every 2-D family and one 3-D, at the smallest size whose finest tiles it takes.
LEVEL_CASES = [("cifar_resnet20", 32, [16, 4]), ("resnet18", 32, [16, 4]), ("cnn11", 32, [16, 4]),
               ("vgg11", 128, [16, 4]), ("resnet3d", 8, [8, 2])]


@pytest.mark.parametrize("name, size, levels", LEVEL_CASES, ids=[c[0] for c in LEVEL_CASES])
def test_every_level_of_a_multilevel_composition_satisfies_theorem_2_1(name, size, levels):
    """16 sub-networks on 8x8 tiles compose group by group into 4 on 16x16 (each a global network
    for its group's tile), those into the global network: Theorem 2.1 at each level, on the
    composed sub-network's tile of x (per tile field for VGG's flatten-FC head), eval and train mode
    (eval only with dropout, whose train mode draws masks)."""
    torch.manual_seed(0)
    dims = model_defaults(name)["dims"]
    spatial = (size,) * dims
    tiles = level_tiles(spatial, level_grids(levels, dims))
    whole = tuple(slice(0, n) for n in spatial)

    def net(count, tile):
        return randomize_batchnorm(build_model(name, 10, count, width=16, **input_options(name, tile_shape([tile]), 3)))

    x = torch.randn(4, 3, *spatial)
    nets = [net(levels[0], tile) for tile in tiles[0]]
    for level in range(len(levels)):
        above = tiles[level + 1] if level + 1 < len(levels) else [whole]
        count = levels[level + 1] if level + 1 < len(levels) else 1
        composed_nets = []
        for j, within in enumerate(above):
            group = level_group(j, levels, level)
            parent = compose_group([nets[k] for k in group], net(count, within), [tiles[level][k] for k in group], within)
            for train in (False, True) if not any(isinstance(m, nn.Dropout) for m in parent.modules()) else (False,):
                error = theorem_error(parent, [nets[k] for k in group], x[(..., *within)], train=train,
                                      tiles=relative_tiles([tiles[level][k] for k in group], within))
                assert error["max_rel"] <= TOLERANCE, f"level {level} -> {level + 1}, sub-network {j}: {error}"
            composed_nets.append(randomize_batchnorm(parent) if count > 1 else parent)
        nets = composed_nets
