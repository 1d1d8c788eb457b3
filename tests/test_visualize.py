"""`python -m ddc_hpc.visualize`: feature maps of SNets vs the composed net, class activation maps.

The tests on the cnn11 smoke run read the 2-rank stage's run of it (test_jobs) and call the CLI's
main() in-process on every rank, each into its own folder; test_serial_tools launches the CLI."""

from __future__ import annotations

import json

import pytest
import torch

import ddc_hpc.plan
from conftest import cli
from ddc_hpc import build_model, compose, visualize
from ddc_hpc.config import load_config
from ddc_hpc.errors import BadInput
from test_jobs import finished_smoke_run

PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cnn11_run(tmp_path_factory):  # in the 2-rank stage (tests marked ranks(2))
    """The cnn11 smoke job (dogscats-cnn11-smoke: 64x64 images, 40x40 tiles, overlap 8), shared with test_jobs."""
    return finished_smoke_run("dogscats-cnn11-smoke", tmp_path_factory)[0]


def _check_features(summary, images: int, K: int, layers):
    rows = summary["features"]
    assert len(rows) == images * K * len(layers)
    for r in rows:
        assert r["aligned"], r
        # Theorem 2.1: channel group k of the composed net is SNet-k's map away from interior borders
        assert r["max_abs_diff_interior"] is not None
        assert r["max_abs_diff_interior"] <= 1e-5 * max(1.0, r["max_abs_value"]), r
    # ... and not near them: there SNet-k padded with zeros where GNet-T sees the neighbours
    assert max(r["max_abs_diff"] for r in rows) > 1e-2


@pytest.mark.ranks(2)
def test_cli_draws_features_and_cams_of_the_cnn11_run(cnn11_run, tmp_path):
    out = tmp_path / "vis"  # this rank's own
    done = cli(visualize.main, "--run", str(cnn11_run), "--images", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr
    for name in ("features_0.png", "features_1.png", "cam_0.png", "cam_1.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
    summary = json.loads((out / "visualize.json").read_text())
    assert [im["index"] for im in summary["images"]] == [0, 1]
    _check_features(summary, 2, 4, [1, 3, 5])
    # cnn11: layers 1 and 3 are before / after the first 2x2 max-pool, 5 after the second
    strides = {r["layer"]: r["stride"] for r in summary["features"]}
    assert strides == {1: 1, 3: 2, 5: 4}
    networks = {c["network"] for c in summary["cams"]}
    assert networks == {"GNet-T before training", "GNet-T after training", "GNet-R before training",
                        "GNet-R after training", "SNet-0", "SNet-1", "SNet-2", "SNet-3"}
    assert all(0 < c["probability"] <= 1 and c["class"] in ("class0", "class1") for c in summary["cams"])
    assert "layer 5: max |SNet - GNet-T|" in done.stdout


def test_resnet_run_with_chosen_indices_and_layers(tiny_run, tmp_path):
    out, _ = tiny_run  # cifar_resnet20, width 8, 16x16 tiles without overlap
    summary = visualize.visualize(out, [3, 0], tmp_path / "vis", layers=[1, 2, 7])
    _check_features(summary, 2, 4, [1, 2, 7])
    assert {r["layer"]: r["stride"] for r in summary["features"]} == {1: 1, 2: 1, 7: 1}
    assert (tmp_path / "vis" / "features_3.png").exists() and (tmp_path / "vis" / "cam_0.png").exists()


def test_cam_is_the_logit_spread_over_the_feature_map():
    torch.manual_seed(0)
    for name in ("cnn11", "cifar_resnet20", "resnet18"):
        net = build_model(name, 3, width=8).eval()
        x = torch.randn(1, 3, 64, 64)
        cam = visualize.class_activation_map(net, x)
        assert cam["cam"].shape == (64, 64)
        # GAP: the mean of M = sum_n w_n X_n plus the bias is the predicted class's logit
        assert cam["map"].mean() + cam["bias"] == pytest.approx(cam["logit"], rel=1e-4, abs=1e-5)
        assert cam["predicted"] == int(net(x).argmax())


def test_cam_refuses_a_flatten_fc_network():
    net = build_model("vgg11", 2, width=8, input_size=32).eval()
    with pytest.raises(BadInput, match="global average pooling"):
        visualize.class_activation_map(net, torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("name, count", [("cnn11", 10), ("cifar_resnet20", 19), ("resnet50", 49)])
def test_layers_are_main_path_convs_in_forward_order(name, count):
    net = build_model(name, 2, width=8).eval()
    probe = visualize.LayerProbe(net)
    probe(torch.randn(1, 3, 64, 64))
    probe.close()
    assert len(probe.maps) == count and all(m is not None for m in probe.maps)
    if name == "resnet50":  # 7x7/2 stem, 3x3/2 max-pool, then layer1.0's 1x1 and 3x3 convs
        assert probe.fields[:3] == [(7, 2), (11, 4), (19, 4)]


def test_features_coincide_for_a_freshly_composed_resnet_with_projections():
    """Projection shortcuts and stride-2 stages: the interior of every aligned tile agrees exactly."""
    torch.manual_seed(1)
    from ddc_hpc.partition import tile_slices

    tiles = tile_slices(64, 64, grid=(2, 2), overlap=16)  # 48x48 tiles at offsets 0 and 16
    subnets = [build_model("cifar_resnet20", 2, partitions=4, width=8).eval() for _ in tiles]
    for net in subnets:  # non-trivial BatchNorm statistics
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    composed = compose(subnets, build_model("cifar_resnet20", 2, width=8)).eval()
    image = torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8)
    saved = [(net, {"tile": tile}) for net, tile in zip(subnets, tiles)]
    layers = [1, 8, 15]  # stage 1, stage 2 after its projection (stride 2), stage 3 (stride 4)
    rows = visualize.feature_comparison(saved, composed, image, torch.full((3,), 0.5), layers)
    assert {r["layer"]: r["stride"] for r in rows} == {1: 1, 8: 2, 15: 4}
    for r in rows:
        assert r["aligned"] and r["max_abs_diff_interior"] <= 1e-5 * max(1.0, r["max_abs_value"]), r


def test_gnet_r_before_training_is_rebuilt_as_run_py_builds_it():
    config = load_config(None, ["model.width=8", "run.seed=3"])
    baseline = ddc_hpc.plan.build(config, 1, (32, 32, 3), config.run.seed + ddc_hpc.config.RANDOM_INIT_SEED_OFFSET)
    rebuilt = visualize.random_init(baseline.ddc_spec, config.run.seed)
    for (name, a), b in zip(baseline.state_dict().items(), rebuilt.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.ranks(2)
def test_cli_errors_exit_2_without_traceback(tmp_path, cnn11_run):
    done = cli(visualize.main, "--run", str(tmp_path / "nothing"))
    assert done.returncode == 2 and "config.toml" in done.stderr and "Traceback" not in done.stderr
    with pytest.raises(BadInput, match="outside the validation split"):
        visualize.visualize(cnn11_run, [100000], tmp_path / "v")


def test_a_regression_run_is_refused_before_anything_is_loaded(tmp_path):
    (tmp_path / "config.toml").write_text('[model]\ntask = "regression"\nnum_classes = 2\n')
    with pytest.raises(BadInput, match="regression run: class activation maps need a classifier"):
        visualize.load_networks_and_data(tmp_path)
