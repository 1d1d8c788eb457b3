"""Registry, sizes against torchvision and the paper, and the width split of every model."""

import json
import math

import pytest
import torch
import torchvision
from torch import nn

from ddc_hpc.models import build_model, model_defaults, model_names, model_options

CONTRACT_NAMES = [*(f"cifar_resnet{d}" for d in (20, 32, 44, 56, 110)), *(f"resnet{d}" for d in (18, 34, 50, 101, 152)),
                  *(f"vgg{d}" for d in (11, 13, 16, 19)), "cnn11"]


def meta_model(*args, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return build_model(*args, **kwargs)


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_the_contract_names_sorted():
    assert model_names() == sorted(model_names())
    assert set(CONTRACT_NAMES) <= set(model_names())


@pytest.mark.parametrize("name", [n for n in CONTRACT_NAMES if not n.startswith("cifar") and n != "cnn11"])
def test_imagenet_models_have_torchvisions_exact_layers(name):
    ours = meta_model(name, 1000)
    with torch.device("meta"):
        reference = getattr(torchvision.models, name)(weights=None)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}


@pytest.mark.parametrize("name, params", [("resnet50", 25_557_032), ("resnet101", 44_549_160), ("vgg16", 138_357_544)])
def test_parameter_counts_of_the_papers_imagenet_models(name, params):
    assert param_count(meta_model(name, 1000)) == params


@pytest.mark.parametrize("name, global_millions, sub_millions", [
    ("cifar_resnet32", 7.44, 0.47), ("cifar_resnet56", 13.65, 0.86), ("cifar_resnet110", 27.62, 1.74),
])
def test_cifar_resnets_match_table_3_1_within_3_percent(name, global_millions, sub_millions):
    assert param_count(meta_model(name, 10)) / 1e6 == pytest.approx(global_millions, rel=0.03)
    assert param_count(meta_model(name, 10, partitions=4)) / 1e6 == pytest.approx(sub_millions, rel=0.03)


def _weight_matrices(model: nn.Module) -> list[tuple[str, nn.Module, tuple]]:
    """(name, module, (outputs, inputs)) of every weight: conv, Linear, recurrent W_ih and W_hh, in order."""
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            rows.append((name, module, tuple(module.weight.shape[:2])))
        elif isinstance(module, nn.RNNBase):
            rows += [(f"{name}.{p}", module, tuple(w.shape)) for p, w in module.named_parameters(recurse=False)
                     if p.startswith("weight")]
    return rows


@pytest.mark.parametrize("name", model_names())
def test_partitions_divide_every_hidden_width_and_keep_inputs_and_classes(name):
    K, options = 4, dict(width=8)
    if "fc_width" in model_options(name):
        options["fc_width"] = 64
    sample = model_defaults(name)["input_shape"]
    full, sub = meta_model(name, 7, **options), meta_model(name, 7, partitions=K, **options)
    layers, sub_layers = _weight_matrices(full), _weight_matrices(sub)
    assert [n for n, _, _ in layers] == [n for n, _, _ in sub_layers]
    for i, ((layer_name, layer, (out, inp)), (_, _, (sub_out, sub_inp))) in enumerate(zip(layers, sub_layers)):
        if i < len(layers) - 1:
            assert out == K * sub_out, layer_name
        elif hasattr(layer, "output_shape"):  # an autoencoder reconstructs the whole input
            assert out == sub_out == math.prod(sample), layer_name
        else:
            assert out == sub_out == 7, layer_name
        if i == 0:  # reads the input: its channels (an mlp: every input value, as both were built for it)
            assert inp == sub_inp == (math.prod(sample) if hasattr(layer, "input_shape") else sample[0]), layer_name
        elif not hasattr(layer, "feature_shape"):  # a flatten-FC's input also shrinks with the tile
            assert inp == K * sub_inp, layer_name


@pytest.mark.parametrize("name", model_names())
def test_ddc_spec_records_every_option_and_rebuilds_the_model(name):
    model = meta_model(name, 5, partitions=2, width=16)
    spec = json.loads(json.dumps(model.ddc_spec))  # as a checkpoint would store it
    assert spec == {"name": name, "num_classes": 5, "partitions": 2, **model_options(name), "width": 16}
    rebuilt = meta_model(**spec)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", model_names())
def test_in_channels_option_changes_only_the_first_layer(name):
    channels = model_options(name)["in_channels"] + 1
    default, changed = meta_model(name, 3, width=8), meta_model(name, 3, width=8, in_channels=channels)
    sample = model_defaults(name, in_channels=channels)["input_shape"]
    assert changed(torch.zeros(2, *sample, device="meta")).shape in ((2, 3), (2, *sample))
    shapes = [(n, p.shape) for n, p in default.named_parameters()]
    changed_shapes = [(n, p.shape) for n, p in changed.named_parameters()]
    assert [n for n, _ in shapes] == [n for n, _ in changed_shapes]
    differing = [n for (n, a), (_, b) in zip(shapes, changed_shapes) if a != b]
    last_name, last, _ = _weight_matrices(default)[-1]
    reconstruction = [n for n, _ in shapes if n.startswith(f"{last_name}.")] if hasattr(last, "output_shape") else []
    assert differing == [shapes[0][0], *reconstruction]  # an autoencoder also reconstructs the extra channel


def test_an_unknown_model_name_suggests_close_matches():
    with pytest.raises(ValueError, match="resnet50"):
        build_model("resnet05", 10)


def test_an_unknown_option_is_named():
    with pytest.raises(TypeError, match="depth_multiplier"):
        build_model("cifar_resnet20", 10, depth_multiplier=2)


def test_a_fixed_family_argument_is_not_an_option():
    with pytest.raises(TypeError, match="layers"):
        build_model("resnet18", 10, layers=(1, 1, 1, 1))


@pytest.mark.parametrize("name, options, partitions, message", [
    ("resnet50", {}, 5, "conv1: 64 channels do not split into 5 sub-networks"),
    ("cifar_resnet20", dict(width=12), 8, "conv1: 12 channels do not split into 8"),
    ("vgg11", dict(width=8, fc_width=100), 8, "classifier.0: 100 features do not split into 8"),
])
def test_a_width_that_k_does_not_divide_is_named_with_its_layer(name, options, partitions, message):
    with pytest.raises(ValueError, match=message):
        build_model(name, 10, partitions, **options)


@pytest.mark.parametrize("num_classes, partitions", [(0, 1), (10, 0), (10, 2.0)])
def test_bad_class_or_partition_counts_are_refused(num_classes, partitions):
    with pytest.raises(ValueError):
        build_model("cnn11", num_classes, partitions)


def test_vgg_head_reads_its_own_final_feature_map():
    assert meta_model("vgg16", 1000).classifier[0].feature_shape == (512, 7, 7)
    sub = meta_model("vgg16", 101, partitions=4, input_size=140)
    assert sub.classifier[0].feature_shape == (128, 4, 4)
    assert sub.classifier[0].in_features == 128 * 4 * 4 and sub.classifier[0].out_features == 1024
    assert meta_model("vgg11", 10, input_size=(112, 56)).classifier[0].feature_shape == (512, 3, 1)


def test_vgg_refuses_too_small_an_input_and_an_input_it_was_not_built_for():
    with pytest.raises(ValueError, match="at least 32"):
        build_model("vgg11", 10, input_size=16)
    model = meta_model("vgg11", 10, width=8, input_size=64)
    with pytest.raises(ValueError, match="input_size"):
        model(torch.zeros(1, 3, 96, 96, device="meta"))


@pytest.mark.parametrize("dims, shape", [(1, (2, 3, 64)), (2, (2, 3, 16, 16)), (3, (2, 3, 16, 16, 16))])
def test_cnn11_comes_in_1d_2d_and_3d(dims, shape):
    model = meta_model("cnn11", 4, width=8, dims=dims)
    assert model(torch.zeros(shape, device="meta")).shape == (2, 4)
    assert sum(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules()) == 10


def test_input_options_are_what_each_family_accepts_of_the_sample_shape():
    """One derivation of a model's input options from a sample shape (plan.build, info, the tests)."""
    from ddc_hpc.models import input_options

    assert input_options("vgg11", (64, 32), 1) == {"in_channels": 1, "input_size": (64, 32)}
    assert input_options("cnn11", (32, 32), 3) == {"in_channels": 3, "dims": 2}
    assert input_options("mlp", (20,), 2) == {"in_channels": 2, "in_features": 20}
    assert input_options("cifar_resnet20", (32, 32)) == {}
    for name in model_names():
        spatial = (model_defaults(name)["input_size"],) * model_defaults(name)["dims"]
        assert set(input_options(name, spatial, 1)) <= set(model_options(name))
