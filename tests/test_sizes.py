"""Parameter and FLOP counts (eq. 2.10) against hand counts and the paper's tables, and the info CLI."""

import json

import pytest
import torch
from torch import nn

from conftest import cli
from ddc_hpc import info
from ddc_hpc.models import build_model
from ddc_hpc.sizes import count_flops, count_params


@pytest.mark.parametrize("layer, input_shape, flops", [
    (nn.Conv2d(3, 8, 3, padding=1), (3, 10, 10), 10 * 10 * (2 * 3 * 9 - 1) * 8),
    (nn.Conv2d(8, 8, 3, stride=2, groups=4), (8, 9, 9), 4 * 4 * (2 * 2 * 9 - 1) * 8),
    (nn.Conv1d(2, 4, 5), (2, 20), 16 * (2 * 2 * 5 - 1) * 4),
    (nn.Conv3d(2, 3, 3, padding=1), (2, 4, 4, 4), 64 * (2 * 2 * 27 - 1) * 3),
    (nn.Linear(10, 4), (10,), (2 * 10 - 1) * 4),
])
def test_eq_2_10_per_layer(layer, input_shape, flops):
    assert count_flops(layer, input_shape) == flops


@pytest.mark.parametrize("layer, input_shape, flops", [
    # per step: G*H*(2*I - 1) for W_ih x_t + G*H*(2*H - 1) for W_hh h_{t-1}; T steps
    (nn.RNN(3, 4, batch_first=True), (5, 3), 5 * 4 * ((2 * 3 - 1) + (2 * 4 - 1))),
    (nn.GRU(3, 4, batch_first=True), (5, 3), 5 * 3 * 4 * ((2 * 3 - 1) + (2 * 4 - 1))),
    (nn.LSTM(3, 4, num_layers=2, batch_first=True), (6, 3),
     6 * (4 * 4 * ((2 * 3 - 1) + (2 * 4 - 1)) + 4 * 4 * ((2 * 4 - 1) + (2 * 4 - 1)))),
    (nn.GRU(3, 4, batch_first=True, bidirectional=True), (5, 3), 2 * 5 * 3 * 4 * ((2 * 3 - 1) + (2 * 4 - 1))),
    (nn.LSTM(3, 4, batch_first=True, proj_size=2), (5, 3),
     5 * (4 * 4 * ((2 * 3 - 1) + (2 * 2 - 1)) + (2 * 4 - 1) * 2)),
])
@pytest.mark.filterwarnings("ignore:LSTM with projections")
def test_recurrent_layers_count_their_two_matmuls_per_time_step(layer, input_shape, flops):
    assert count_flops(layer, input_shape) == flops


def test_a_recurrent_model_counts_every_step_and_its_classifier_once():
    model = build_model("gru", 5, width=8, in_channels=3)  # input (F, T) = (3, 10)
    assert count_flops(model, (3, 10)) == 10 * 3 * 8 * ((2 * 3 - 1) + (2 * 8 - 1)) + (2 * 8 - 1) * 5


def test_flops_add_up_over_layers_and_params_count_every_parameter():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))
    assert count_flops(net, (3, 6, 6)) == 36 * (2 * 27 - 1) * 4 + (2 * 144 - 1) * 2
    assert count_params(net) == (3 * 9 * 4 + 4) + 8 + (144 * 2 + 2)


def test_counting_leaves_the_training_mode_alone():
    net = nn.Sequential(nn.Linear(3, 3), nn.Dropout()).train()
    count_flops(net, (3,))
    assert all(m.training for m in net.modules())


def meta_flops(name, partitions, size, **options):
    with torch.device("meta"):
        return count_flops(build_model(name, 10, partitions, **options), (3, size, size))


def test_cifar_resnet32_flops_match_table_3_1():
    assert meta_flops("cifar_resnet32", 1, 32) / 1e9 == pytest.approx(2.24, rel=0.05)
    assert meta_flops("cifar_resnet32", 4, 16) / 1e9 == pytest.approx(0.0345, rel=0.02)
    assert meta_flops("cifar_resnet32", 4, 20) / 1e9 == pytest.approx(0.0539, rel=0.02)


def test_info_reports_global_and_sub_network_with_vgg_built_for_its_tile(capsys):
    assert info.main(["--model", "vgg16", "--partitions", "4", "--input-size", "224", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["global"]["params"] == 138_357_544
    assert report["sub"]["params"] == pytest.approx(4.17e6, rel=0.01)  # Table 2.2, 112x112 tile
    assert report["tile_size"] == [112, 112]


def test_info_prints_a_table_with_ratios(capsys):
    assert info.main(["--model", "cifar_resnet32", "--partitions", "4", "--input-size", "32", "--tile-size", "20"]) == 0
    out = capsys.readouterr().out
    assert "global" in out and "sub" in out and "ratio" in out and "20x20" in out


def run_info(*args):
    """The CLI's main() in-process (test_serial_tools launches it without mpi4py)."""
    return cli(info.main, *args)


def test_info_cli_json_for_the_papers_resnet32():
    result = run_info("--model", "cifar_resnet32", "--partitions", "4", "--input-size", "32", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["global"]["flops"] / 1e9 == pytest.approx(2.24, rel=0.05)
    assert report["sub"] == {"params": pytest.approx(0.47e6, rel=0.03), "flops": pytest.approx(0.0345e9, rel=0.02)}


def test_info_cli_unknown_model_is_one_line_and_exit_code_2():
    result = run_info("--model", "resnet05", "--partitions", "4")
    assert result.returncode == 2
    assert "unknown model 'resnet05'; did you mean resnet50" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_info_for_the_extensions_uses_their_axes_and_builds_the_mlp_for_its_segment():
    volume = info.sizes("resnet3d", 8, input_size=(32,))
    assert volume["input_size"] == [32, 32, 32] and volume["tile_size"] == [16, 16, 16]  # 2x2x2 grid
    assert volume["global"]["flops"] > 400 * volume["sub"]["flops"]  # width/8 and volume/8: ~512x
    mlp = info.sizes("mlp", 4, input_size=(64,), width=16)
    assert mlp["tile_size"] == [16]
    hidden = 16 // 4  # sub-network: two hidden layers of 4 units (BatchNorm 2x4 each), 10 outputs
    assert mlp["sub"]["params"] == (16 * hidden + hidden) + 2 * hidden + (hidden * hidden + hidden) + 2 * hidden \
        + (hidden * 10 + 10)
    signal = info.sizes("cnn1d", 4, input_size=(128,), tile_size=(40,))
    assert signal["tile_size"] == [40] and signal["global"]["flops"] > signal["sub"]["flops"]


def test_info_cli_takes_a_volume_size(capsys):
    assert info.main(["--model", "cnn3d", "--partitions", "8", "--input-size", "16x32x32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tile_size"] == [8, 16, 16]


@pytest.mark.parametrize("args, message", [
    (("--model", "resnet3d", "--input-size", "32x32"), "resnet3d has 3 spatial axes, expected N or DxHxW"),
    (("--model", "mlp", "--tile-size", "1x2x3x4"), "expected N, HxW or DxHxW"),
    (("--model", "resnet50", "--partitions", "5"), "conv1: 64 channels do not split into 5 sub-networks"),
    (("--model", "vgg16", "--tile-size", "16"), "at least 32 px"),
    (("--model", "vgg16", "--tile-size", "1x2x3"), "expected N or HxW"),
])
def test_info_bad_arguments_exit_2_with_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        info.main(list(args))
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in stderr and stderr.count("\n") == 1
