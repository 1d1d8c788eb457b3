"""The paper's section 2.4 extensions, one by one: FC nets on decomposed features, autoencoders,
1D and 3D CNNs, recurrent nets (eq. 2.29).  The registry-wide Theorem 2.1 test (test_compose.py)
covers every model at K = 2, 4, 8; these tests check what is particular to each extension."""

import pytest
import torch
from torch import nn

from ddc_hpc.compose import compose, input_tiled_layers, output_tiled_layers, theorem_error
from ddc_hpc.models import build_model, model_defaults
from ddc_hpc.partition import tile_shape, tile_slices_nd
from test_compose import randomize_batchnorm

torch.set_num_threads(1)
TOLERANCE = 1e-5  # relative, float32


def tiled_mlp(name: str, length: int, grid: int, overlap: int = 0, crop: int = 0, channels: int = 2, **options):
    """An mlp composed from sub-networks built for the tiles of a 1D decomposition of `length` features."""
    tiles = tile_slices_nd((length,), (grid,), overlap, crop)
    options = dict(width=16, in_channels=channels, **options)
    subnets = [randomize_batchnorm(build_model(name, 5, grid, in_features=tile_shape(tiles)[0], **options)).eval()
               for _ in tiles]
    task = "autoencoder" if name == "mlp_autoencoder" else "classification"
    global_net = compose(subnets, build_model(name, 5, 1, in_features=length, **options), task=task, tiles=tiles)
    return global_net.eval(), subnets, tiles


# ---- fully connected nets on decomposed input features ----------------------------------------

def test_mlp_first_layer_reads_only_each_sub_networks_segment_of_every_channel():
    global_net, subnets, tiles = tiled_mlp("mlp", 24, 4, overlap=2, crop=2)
    weight = global_net.body[0].weight.view(16, 2, 24)  # (hidden, channel, feature)
    for k, (tile,) in enumerate(tiles):
        rows = weight[4 * k:4 * (k + 1)]
        assert torch.equal(rows[:, :, tile], subnets[k].body[0].weight.view(4, 2, -1))
        outside = torch.ones(24, dtype=torch.bool)
        outside[tile] = False
        assert outside.any() and torch.count_nonzero(rows[:, :, outside]) == 0


@pytest.mark.parametrize("overlap, crop", [(0, 0), (3, 0), (0, 2), (2, 2)])
def test_mlp_output_is_the_sum_of_the_sub_networks_on_their_segments(overlap, crop):
    torch.manual_seed(overlap + 10 * crop)
    global_net, subnets, tiles = tiled_mlp("mlp", 32, 4, overlap, crop)
    x = torch.randn(8, 2, 32)
    with torch.no_grad():
        expected = sum(net(x[..., tile]) for net, (tile,) in zip(subnets, tiles))
        torch.testing.assert_close(global_net(x), expected, rtol=1e-5, atol=1e-5)
    assert theorem_error(global_net, subnets, x, tiles=tiles)["max_rel"] <= TOLERANCE
    sub_inputs = [x[..., tile] for (tile,) in tiles]
    assert theorem_error(global_net, subnets, x, sub_inputs=sub_inputs, tiles=tiles)["max_rel"] <= TOLERANCE


def test_a_cropped_layout_needs_the_tiles_themselves_a_grid_alone_places_them_wrong():
    tiles = tile_slices_nd((32,), (4,), overlap=0, crop=2)
    subnets = [build_model("mlp", 5, 4, width=16, in_features=tile_shape(tiles)[0]).eval() for _ in tiles]
    by_grid = compose(subnets, build_model("mlp", 5, 1, width=16, in_features=32)).eval()
    # the check is told the true tiles, so it exposes a composition that assumed none were cropped
    assert theorem_error(by_grid, subnets, torch.randn(8, 32), tiles=tiles)["max_rel"] > 0.01


def test_mlp_takes_a_flat_or_a_channels_first_feature_vector_and_names_its_in_features():
    net = build_model("mlp", 3, in_features=20, width=8).eval()
    x = torch.randn(4, 20)
    torch.testing.assert_close(net(x), net(x[:, None]))
    with pytest.raises(ValueError, match="in_features=20"):
        net(torch.randn(4, 21))
    with pytest.raises(ValueError, match="depth"):
        build_model("mlp", 3, depth=0)


def test_the_theorem_check_of_an_mlp_asks_for_the_tiles():
    global_net, subnets, tiles = tiled_mlp("mlp", 16, 2)
    assert input_tiled_layers(global_net) == ["body.0"]
    with pytest.raises(ValueError, match="body.0 reads tiles of the input: pass tiles="):
        theorem_error(global_net, subnets, torch.randn(4, 2, 16))


def test_compose_refuses_tiles_that_do_not_fit_the_sub_networks_segments():
    tiles = tile_slices_nd((16,), (2,))
    subnets = [build_model("mlp", 5, 2, width=8, in_features=8) for _ in tiles]
    with pytest.raises(ValueError, match=r"body.0: tile \(slice\(0, 10, None\),\) does not fit"):
        compose(subnets, build_model("mlp", 5, 1, width=8, in_features=16), tiles=[(slice(0, 10),), (slice(8, 16),)])
    with pytest.raises(ValueError, match="body.0: 1 tiles for 2 sub-networks"):
        compose(subnets, build_model("mlp", 5, 1, width=8, in_features=16), tiles=tiles[:1])


# ---- autoencoders --------------------------------------------------------------------------------

@pytest.mark.parametrize("crop", [0, 2])
def test_autoencoder_output_on_each_tile_is_that_sub_networks_reconstruction(crop):
    torch.manual_seed(crop)
    global_net, subnets, tiles = tiled_mlp("mlp_autoencoder", 36, 4, crop=crop)
    assert output_tiled_layers(global_net) == ["head"]
    x = torch.randn(8, 2, 36)
    with torch.no_grad():
        output = global_net(x)
        assert output.shape == x.shape
        for net, (tile,) in zip(subnets, tiles):
            torch.testing.assert_close(output[..., tile], net(x[..., tile]), rtol=1e-5, atol=1e-5)
        if crop:  # nobody reconstructs the cropped border: exactly zero there
            assert torch.count_nonzero(output[..., :crop]) == torch.count_nonzero(output[..., -crop:]) == 0
    assert theorem_error(global_net, subnets, x, task="autoencoder", tiles=tiles)["max_rel"] <= TOLERANCE


def test_autoencoder_with_overlapping_tiles_averages_the_reconstructions_where_they_overlap():
    torch.manual_seed(3)
    global_net, subnets, tiles = tiled_mlp("mlp_autoencoder", 16, 2, overlap=4)
    assert tiles == [(slice(0, 12),), (slice(4, 16),)]
    x = torch.randn(8, 2, 16)
    with torch.no_grad():
        output = global_net(x)
        first, second = (net(x[..., tile]) for net, (tile,) in zip(subnets, tiles))
    torch.testing.assert_close(output[..., :4], first[..., :4], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(output[..., 4:12], (first[..., 4:] + second[..., :8]) / 2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(output[..., 12:], second[..., 8:], rtol=1e-5, atol=1e-5)
    assert theorem_error(global_net, subnets, x, task="autoencoder", tiles=tiles)["max_rel"] <= TOLERANCE


def test_autoencoder_check_fails_for_a_reconstruction_placed_on_the_wrong_tiles():
    global_net, subnets, tiles = tiled_mlp("mlp_autoencoder", 16, 2)
    swapped = tiles[::-1]
    error = theorem_error(global_net, subnets[::-1], torch.randn(8, 2, 16), task="autoencoder", tiles=swapped,
                          sub_inputs=[torch.randn(8, 2, 8)] * 2)
    assert error["max_rel"] > 0.01


# ---- 1D and 3D CNNs ------------------------------------------------------------------------------

def feature_groups_match(global_net: nn.Module, subnets, x: torch.Tensor, kind: type) -> int:
    """Check Theorem 2.1 layer by layer: channel group k of every `kind` output (a conv-BN-ReLU
    unit, a residual block) equals sub-network k's; returns how many layers were compared."""
    def outputs(net):
        found = []
        hooks = [m.register_forward_hook(lambda m, i, out: found.append(out)) for m in net.modules()
                 if isinstance(m, kind)]
        with torch.no_grad():
            net.eval()(x)
        for h in hooks:
            h.remove()
        return found

    global_maps = outputs(global_net)
    for k, sub in enumerate(subnets):
        for global_map, sub_map in zip(global_maps, outputs(sub), strict=True):
            c = sub_map.shape[1]
            torch.testing.assert_close(global_map[:, k * c:(k + 1) * c], sub_map, rtol=1e-5, atol=1e-5)
    return len(global_maps)


@pytest.mark.parametrize("name, kind, shape", [
    ("cnn1d", nn.Sequential, (2, 1, 40)),
    ("cnn3d", nn.Sequential, (2, 1, 8, 12, 8)),
    ("resnet3d", nn.Module, (2, 1, 8, 8, 8)),
])
def test_every_hidden_layer_of_a_1d_or_3d_net_holds_the_sub_networks_maps(name, kind, shape):
    from ddc_hpc.models.cnn import ConvUnit
    from ddc_hpc.models.resnet import BasicBlock

    K = 4
    subnets = [randomize_batchnorm(build_model(name, 5, K, width=16)) for _ in range(K)]
    global_net = compose(subnets, build_model(name, 5, 1, width=16))
    layer = ConvUnit if kind is nn.Sequential else BasicBlock
    assert feature_groups_match(global_net, subnets, torch.randn(shape), layer) >= 6


def test_3d_sub_networks_train_on_sub_volumes_of_a_2x2x2_grid_with_per_axis_overlap_and_crop():
    volume = torch.randn(2, 1, 16, 20, 24)
    tiles = tile_slices_nd(volume.shape[2:], (2, 2, 2), overlap=(2, 0, 4), crop=(0, 2, 4))
    assert len(tiles) == 8 and tile_shape(tiles) == (10, 8, 12)
    subnets = [build_model("resnet3d", 3, 8, width=16) for _ in tiles]
    for net, tile in zip(subnets, tiles):
        assert net(volume[(..., *tile)]).shape == (2, 3)
    global_net = compose(subnets, build_model("resnet3d", 3, 1, width=16))
    assert theorem_error(global_net, subnets, volume, tiles=tiles)["max_rel"] <= TOLERANCE  # tiles unused: GAP


def test_1d_and_3d_nets_name_the_layout_they_take():
    with pytest.raises(ValueError, match=r"\(N, C, L\)"):
        build_model("cnn1d", 3, width=8)(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\(N, C, D, H, W\)"):
        build_model("resnet3d", 3, width=8)(torch.randn(1, 1, 8, 8))
    assert model_defaults("cnn3d")["input_shape"] == (1, 32, 32, 32)
    assert model_defaults("cnn1d", in_channels=2)["input_shape"] == (2, 32)


# ---- recurrent nets (eq. 2.29) ---------------------------------------------------------------------

def composed_recurrent(name: str, K: int = 4, **options):
    options = dict(width=16, in_channels=3, **options)
    subnets = [build_model(name, 5, K, **options).eval() for _ in range(K)]
    return compose(subnets, build_model(name, 5, 1, **options)).eval(), subnets


@pytest.mark.parametrize("name", ["rnn", "gru", "lstm"])
def test_recurrent_hidden_state_group_k_is_sub_network_ks_at_every_time_step(name):
    torch.manual_seed(0)
    global_net, subnets = composed_recurrent(name, num_layers=2)
    x = torch.randn(4, 3, 9)  # (N, F, T)
    with torch.no_grad():
        states, last = global_net.hidden_states(x)
        for k, sub in enumerate(subnets):
            sub_states, sub_last = sub.hidden_states(x)
            h = sub_states.shape[-1]
            torch.testing.assert_close(states[..., k * h:(k + 1) * h], sub_states, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(last[..., k * h:(k + 1) * h], sub_last, rtol=1e-5, atol=1e-6)  # both layers
        torch.testing.assert_close(global_net(x), sum(s(x) for s in subnets), rtol=1e-5, atol=1e-5)
    assert states.shape == (4, 9, 16) and last.shape == (2, 4, 16)


def test_gru_gate_blocks_are_composed_separately():
    K, h = 4, 4
    global_net, subnets = composed_recurrent("gru", K)
    w_hh = global_net.rnn.weight_hh_l0.detach().clone().view(3, 16, 16)
    w_ih = global_net.rnn.weight_ih_l0.detach().view(3, 16, 3)
    for gate in range(3):
        for k, sub in enumerate(subnets):
            rows = slice(k * h, (k + 1) * h)
            assert torch.equal(w_ih[gate, rows], sub.rnn.weight_ih_l0.view(3, h, 3)[gate])
            assert torch.equal(w_hh[gate, rows, rows], sub.rnn.weight_hh_l0.view(3, h, h)[gate])
            w_hh[gate, rows, rows] = 0
        assert torch.count_nonzero(w_hh[gate]) == 0  # every cross block is zero
    # A block-diagonal of the stacked (3H, H) matrices, blind to the gates, would not be the GRU's.
    with torch.no_grad():
        rnn = global_net.rnn
        rnn.weight_hh_l0.copy_(torch.block_diag(*[s.rnn.weight_hh_l0 for s in subnets]))
        for tensor in ("weight_ih_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(rnn, tensor).copy_(torch.cat([getattr(s.rnn, tensor) for s in subnets]))
    assert theorem_error(global_net, subnets, torch.randn(4, 3, 6))["max_rel"] > 0.01


@pytest.mark.parametrize("readout", ["last", "mean"])
def test_recurrent_readouts_and_the_time_major_layout(readout):
    torch.manual_seed(1)
    global_net, subnets = composed_recurrent("gru", readout=readout, layout="NTF")
    x = torch.randn(4, 7, 3)  # (N, T, F)
    assert theorem_error(global_net, subnets, x)["max_rel"] <= TOLERANCE
    channels_first = build_model("gru", 5, width=16, in_channels=3, readout=readout)
    channels_first.load_state_dict(global_net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(channels_first.eval()(x.transpose(1, 2)), global_net(x))
    with pytest.raises(ValueError, match=r"\(N, T, F\) input with F = in_channels = 3"):
        global_net(torch.randn(4, 3, 7))


def test_recurrent_regression_is_the_mean():
    global_net, subnets = composed_recurrent("lstm", num_layers=2)
    regression = compose(subnets, build_model("lstm", 5, width=16, in_channels=3, num_layers=2), task="regression")
    x = torch.randn(4, 3, 5)
    assert theorem_error(regression, subnets, x, task="regression")["max_rel"] <= TOLERANCE
    torch.testing.assert_close(regression.fc.bias, torch.stack([s.fc.bias for s in subnets]).mean(0))


class Bidirectional(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.rnn = nn.GRU(3, hidden, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, 2)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])


def test_recurrent_layers_compose_cannot_describe_are_refused_naming_the_module():
    with pytest.raises(ValueError, match="rnn: cannot compose a bidirectional GRU"):
        compose([Bidirectional(4), Bidirectional(4)], Bidirectional(8))
    subnets = [build_model("gru", 5, 2, width=8, num_layers=2) for _ in range(2)]
    with pytest.raises(ValueError, match="modules|num_layers"):
        compose(subnets, build_model("gru", 5, 1, width=8, num_layers=1))
    with pytest.raises(ValueError, match="rnn: 8 hidden units cannot be composed from 2 sub-networks with 2"):
        compose([build_model("gru", 5, 4, width=8) for _ in range(2)], build_model("gru", 5, 1, width=8))
    with pytest.raises(ValueError, match="rnn: 6 hidden units do not split into 4"):
        build_model("rnn", 5, 4, width=6)
