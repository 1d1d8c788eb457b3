"""BatchNorm recalibration combines batches and ranks exactly (Chan et al.): the statistics equal
those of one rank reading every batch, the spread of the per-batch and per-rank means included.

    python -m pytest tests/test_bn_recalibration.py                                  # serial
    mpiexec -n 2 python -m pytest --with-mpi -m mpi tests/test_bn_recalibration.py   # and -n 4
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from ddc_hpc import comm
from ddc_hpc.data import make_batch
from ddc_hpc.data.loader import SampleSet
from ddc_hpc.data.sources import ArrayStore
from ddc_hpc.train import PhaseData, combine_moments, recalibrate_bn

BATCHES, BATCH_SIZE = 3, 10


def test_combined_moments_are_those_of_the_union():
    parts = [torch.randn(n, 3) * (1 + i) + 5 * i for i, n in enumerate((4, 9, 1, 6))]
    count, mean, m2 = combine_moments([(len(p), p.double().mean(0), ((p.double() - p.double().mean(0)) ** 2).sum(0))
                                       for p in parts])
    union = torch.cat(parts).double()
    assert count == len(union)
    torch.testing.assert_close(mean, union.mean(0))
    torch.testing.assert_close(m2 / (count - 1), union.var(0, unbiased=True))


def _data() -> PhaseData:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (97, 8, 8, 3), dtype=np.uint8)
    x[::2] //= 4  # batches (and ranks) with different means: their spread is part of the variance
    train = SampleSet(ArrayStore(x, np.zeros(97, np.int64), "tiny"))
    return PhaseData(train=train, val=train, mean=torch.full((3,), 0.5), augment=False)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5))


def _one_reader(net: nn.Module, data: PhaseData, ranks: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every rank's batches read by one process (train-mode BN, the batches as the ranks form
    them), each BatchNorm's input kept whole: its exact mean and unbiased variance."""
    inputs: dict[nn.Module, list[torch.Tensor]] = {}
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    hooks = [m.register_forward_pre_hook(lambda m, args: inputs.setdefault(m, []).append(args[0].detach()))
             for m in norms]
    net.train()
    with torch.no_grad():
        for rank in range(ranks):
            sampler = DistributedSampler(range(len(data.train)), num_replicas=ranks, rank=rank, shuffle=True, seed=0)
            sampler.set_epoch(0)
            order = list(sampler)
            for b in range(BATCHES):
                images, _ = data.train.read(np.asarray(order[b * BATCH_SIZE:(b + 1) * BATCH_SIZE]))
                net(make_batch(images, mean=data.mean, tile=None, augment=False, generator=None))
    for hook in hooks:
        hook.remove()
    stats = []
    for m in norms:
        x = torch.cat(inputs[m]).double().transpose(0, 1).reshape(m.num_features, -1)
        stats.append((x.mean(1), x.var(1, unbiased=True)))
    return stats


def _assert_recalibrated_as_one_reader(ranks: int) -> None:
    data = _data()
    net, reference = _net(), _one_reader(_net(), data, ranks)
    assert recalibrate_bn(net, data, torch.device("cpu"), BATCHES, BATCH_SIZE, seed=0)
    for m, (mean, var) in zip([m for m in net.modules() if isinstance(m, nn.BatchNorm2d)], reference):
        torch.testing.assert_close(m.running_mean, mean.float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m.running_var, var.float(), rtol=1e-5, atol=1e-6)


def test_one_rank_combines_its_batches_exactly(one_thread):
    _assert_recalibrated_as_one_reader(1)


@pytest.mark.mpi(min_size=2)
def test_ranks_combine_their_statistics_exactly():
    world = comm.init_world()
    comm.init_distributed(world, "gloo")
    try:
        _assert_recalibrated_as_one_reader(world.size)
    finally:
        comm.shutdown_distributed()
