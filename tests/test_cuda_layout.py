"""Issue 21 item 1: on CUDA every tensor takes the layout of its own rank. channels_last is for 4-D
tensors only: the 5-D Conv3d weights of cnn3d and resnet3d made torch raise `required rank 4 tensor
to use channels_last format` when data_parallel converted the whole model. No GPU here: the choice
is a pure function, checked over every model of the registry (tools/gpu_check.sh runs one model of
every family on a GPU)."""

from __future__ import annotations

import copy

import pytest
import torch

from ddc_hpc.models import build_model, input_options, model_defaults, model_names
from ddc_hpc.train import memory_format, to_cuda_layout

SPATIAL = {1: (32,), 2: (32, 32), 3: (8, 8, 8)}


def test_each_rank_has_its_layout():
    assert memory_format(4) == torch.channels_last
    assert memory_format(5) == torch.channels_last_3d
    assert {memory_format(n) for n in (0, 1, 2, 3, 6)} == {torch.contiguous_format}


@pytest.mark.parametrize("name", model_names())
def test_every_model_of_the_registry_takes_the_cuda_layout(name):
    """The conversion data_parallel applies on CUDA, on each model's global network and a
    sub-network (shapes only: the meta device allocates nothing)."""
    dims = model_defaults(name)["dims"]
    ranks = set()
    for partitions in (1, 4):
        with torch.device("meta"):
            net = build_model(name, 10, partitions=partitions, width=8, **input_options(name, SPATIAL[dims], 1))
        to_cuda_layout(net)
        for tensor in (*net.parameters(), *net.buffers()):
            assert tensor.is_contiguous(memory_format=memory_format(tensor.ndim)), (name, tensor.shape)
            ranks.add(tensor.ndim)
    assert (5 in ranks) == (dims == 3) and (4 in ranks) <= (dims == 2)


def test_a_3d_model_keeps_its_weights_in_channels_last_3d():
    """The real conversion on the CPU (where torch raises the same error as on CUDA), values kept."""
    net = build_model("cnn3d", 10, width=8, **input_options("cnn3d", SPATIAL[3], 1))
    with pytest.raises(RuntimeError, match="required rank 4 tensor to use channels_last format"):
        copy.deepcopy(net).to(memory_format=torch.channels_last)  # what data_parallel did on CUDA
    before = {k: v.clone() for k, v in net.state_dict().items()}
    to_cuda_layout(net)
    weights = [p for p in net.parameters() if p.ndim == 5]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in weights)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
