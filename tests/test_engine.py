"""The MPI-native data-parallel engine (run.backend = "mpi4py") against torch DDP over gloo.

Collective tests: `mpiexec -n 2|4 python -m pytest --with-mpi -m mpi tests/test_engine.py`;
the rest run serially (one rank, plain pytest).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ddc_hpc import build_model, comm
from ddc_hpc.engine import MPIDataParallel, plan_buckets


@pytest.fixture(scope="module")
def world():
    return comm.init_world()


@pytest.fixture(scope="module")
def gloo(world):
    comm.init_distributed(world, "gloo")
    yield
    comm.shutdown_distributed()


def _net(dtype=torch.float32, seed=0):
    """A small residual net with BatchNorm and 1x1 projection shortcuts."""
    torch.manual_seed(seed)
    return build_model("cifar_resnet20", 10, width=8).to(dtype)


def _batch(rank: int, step: int, dtype=torch.float32, n: int = 8):
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(n, 3, 16, 16, generator=g).to(dtype), torch.randint(0, 10, (n,), generator=g)


def _train(model, optimizer, rank: int, steps: int, dtype=torch.float32, evaluate_every: int = 2):
    """The fit loop's step (zero_grad(set_to_none), forward, backward, step), with an evaluation
    forward (eval mode, no_grad) now and then, as the loop does between epochs."""
    for step in range(steps):
        x, y = _batch(rank, step, dtype)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if (step + 1) % evaluate_every == 0:
            model.eval()
            with torch.no_grad():
                model(_batch(rank, 99, dtype)[0])
            model.train()


def _pair(world, dtype, make_optimizer, steps, memory_format=torch.contiguous_format, **engine_options):
    """The same start on rank 0 (other ranks start elsewhere: both must broadcast rank 0's),
    trained `steps` steps by DDP-gloo and by the engine; returns both bare networks."""
    start = _net(dtype, seed=0 if world.rank == 0 else 10 + world.rank)
    copies = [_net(dtype), _net(dtype)]
    for net in copies:
        net.load_state_dict(start.state_dict())
        net.to(memory_format=memory_format)
    ddp = DistributedDataParallel(copies[0])  # each broadcasts rank 0's state, as the pipeline relies on
    engine = MPIDataParallel(copies[1], world, **engine_options)
    for model in (ddp, engine):
        _train(model, make_optimizer(model.parameters()), world.rank, steps, dtype)
    return ddp.module, engine.module, engine


def _assert_states_close(a: nn.Module, b: nn.Module, **tolerance):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], msg=lambda m, key=key: f"{key}: {m}", **tolerance)


def _same_on_every_rank(world, module: nn.Module) -> bool:
    """Parameters agree bitwise across ranks (buffers may not: as with DDP, each rank updates its
    BN statistics locally after rank 0's were broadcast before the forward)."""
    digest = [t.double().sum().item() for t in module.parameters()]
    return all(d == digest for d in comm.allgather(world, digest, "comparing states"))


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("buckets", [{}, {"bucket_cap_mb": 0.02, "first_bucket_mb": 0.005}],
                         ids=["default-buckets", "many-small-buckets"])
def test_same_weights_as_ddp_gloo_in_float64(world, gloo, buckets):
    """Adam, 4 steps, BatchNorm, an evaluation forward in between: equal to float64 rounding.
    (float64 so that a different summation order across 4 ranks cannot be amplified by Adam's
    normalisation and ReLU switching into differences a float32 comparison would have to allow.)"""
    ddp, mine, engine = _pair(world, torch.float64, lambda p: torch.optim.Adam(p, 1e-3), 4, **buckets)
    _assert_states_close(mine, ddp, rtol=1e-10, atol=1e-12)
    assert _same_on_every_rank(world, mine)
    assert engine.stats.steps == 4
    if buckets:
        assert len(engine.stats.buckets) > 4
        # overlap: buckets started from hooks while backward was still running
        assert engine.stats.buckets_started_in_backward == 4 * len(engine.stats.buckets)


@pytest.mark.mpi(min_size=2)
def test_same_weights_as_ddp_gloo_in_float32(world, gloo):
    """float32, SGD with momentum, 3 steps: bitwise at 2 ranks (a sum of two does not depend on the
    order), within float32 rounding at more (gloo and MPI sum in different orders)."""
    optimizer = lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9)  # noqa: E731
    ddp, mine, _ = _pair(world, torch.float32, optimizer, 3)
    if world.size == 2:
        _assert_states_close(mine, ddp, rtol=0, atol=0)
    else:
        _assert_states_close(mine, ddp, rtol=1e-4, atol=1e-6)
    assert _same_on_every_rank(world, mine)


@pytest.mark.mpi(min_size=2)
def test_channels_last_parameters_reduce_like_ddp(world, gloo):
    """Gradients with channels_last strides go through the flat buckets and back in the right order."""
    ddp, mine, _ = _pair(world, torch.float64, lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), 3,
                         memory_format=torch.channels_last)
    assert mine.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    _assert_states_close(mine, ddp, rtol=1e-10, atol=1e-12)


@pytest.mark.mpi(min_size=2)
def test_rank_zero_weights_and_buffers_are_broadcast_at_start(world):
    net = _net(seed=world.rank)
    with torch.no_grad():
        net.bn1.running_mean.fill_(float(world.rank))
    engine = MPIDataParallel(net, world)
    expected = _net(seed=0).state_dict()
    for key, value in engine.module.state_dict().items():
        if key != "bn1.running_mean":
            torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
    assert torch.all(engine.module.bn1.running_mean == 0)
    engine.close()


@pytest.mark.mpi(min_size=2)
def test_buffers_are_broadcast_before_a_training_forward_not_after_eval(world):
    engine = MPIDataParallel(_net(), world)
    x, _ = _batch(world.rank, 0)
    engine(x)  # each rank's BN statistics now differ (different data)
    engine.eval()
    with torch.no_grad():
        engine(x)  # the first forward after a training forward broadcasts rank 0's buffers
    before = engine.stats.buffer_syncs
    means = comm.allgather(world, engine.module.bn1.running_mean.tolist(), "BN means")
    assert all(m == means[0] for m in means)
    with torch.no_grad():
        engine(x)
    assert engine.stats.buffer_syncs == before  # no broadcast after an eval forward
    engine.close()


@pytest.mark.mpi(min_size=2)
def test_a_parameter_unused_on_some_ranks_gets_the_average(world):
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 1, bias=False)
            self.b = nn.Linear(3, 1, bias=False)

        def forward(self, x, use_b: bool):
            return self.a(x) + (self.b(x) if use_b else 0)

    torch.manual_seed(0)
    engine = MPIDataParallel(TwoHeads(), world)
    x = torch.ones(1, 3) * (world.rank + 1)
    engine(x, use_b=world.rank == 0).sum().backward()
    expected_a = sum(r + 1 for r in range(world.size)) / world.size
    torch.testing.assert_close(engine.module.a.weight.grad, torch.full((1, 3), expected_a))
    torch.testing.assert_close(engine.module.b.weight.grad, torch.full((1, 3), 1 / world.size))
    engine.close()


@pytest.mark.mpi(min_size=2)
def test_a_parameter_no_rank_used_keeps_no_gradient_as_with_ddp(world):
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 1, bias=False)
            self.b = nn.Linear(3, 1, bias=False)  # a head this step does not need, on any rank

        def forward(self, x):
            return self.a(x)

    engine = MPIDataParallel(Unused(), world)
    optimizer = torch.optim.Adam(engine.parameters(), lr=0.1)
    before = engine.module.b.weight.detach().clone()
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        engine(torch.ones(1, 3)).sum().backward()
        assert engine.module.b.weight.grad is None and engine.module.a.weight.grad is not None
        optimizer.step()
    assert torch.equal(engine.module.b.weight, before)  # the optimizer skipped it
    engine.close()


@pytest.mark.mpi(min_size=2)
def test_a_rank_that_never_reduces_makes_backward_raise_collective_timeout(world):
    """Rank 0 waits alone past its deadline: backward raises (the pipeline then aborts the job)."""
    mine = dataclasses.replace(world, timeout=0.5 if world.rank == 0 else 120.0)
    engine = MPIDataParallel(_net(), mine)
    x, y = _batch(world.rank, 0)
    if world.rank == 0:
        with pytest.raises(comm.CollectiveTimeout, match="allreduce of gradient buckets") as timed_out:
            F.cross_entropy(engine(x), y).backward()
    comm.barrier(world)  # rank 0 has given up; the others now join its pending allreduces
    if world.rank == 0:
        from mpi4py import MPI

        MPI.Request.Waitall(timed_out.value.requests)
    else:
        F.cross_entropy(engine(x), y).backward()
    engine.close()


@pytest.mark.mpi(min_size=4)
def test_engine_over_a_subset_of_ranks(world):
    """Groups {0,1} and {2,3} (the sub phase with more ranks than sub-networks): each group agrees
    within itself and trains apart from the other."""
    group = [0, 1] if world.rank < 2 else [2, 3]
    engine = MPIDataParallel(_net(seed=group[0] + world.rank), world, ranks=group)
    assert engine._world.size == 2
    _train(engine, torch.optim.SGD(engine.parameters(), lr=0.05), world.rank, 2)
    sums = comm.allgather(world, sum(t.double().sum().item() for t in engine.module.state_dict().values()), "sums")
    assert sums[0] == sums[1] and sums[2] == sums[3] and sums[0] != sums[2]
    engine.close()


# ---- serial -------------------------------------------------------------------------------------


def test_plan_buckets_caps_and_first_bucket():
    assert plan_buckets([4, 4, 4, 4], cap_bytes=8) == [[0, 1], [2, 3]]
    assert plan_buckets([4, 4, 4, 4], cap_bytes=8, first_cap_bytes=4) == [[0], [1, 2], [3]]
    assert plan_buckets([20, 4, 4], cap_bytes=8) == [[0], [1, 2]]  # too big: a bucket of its own
    assert plan_buckets([], cap_bytes=8) == []


def test_one_rank_engine_trains_exactly_like_the_bare_network(world):
    if world.size != 1:
        pytest.skip("serial test")
    bare, wrapped = _net(), MPIDataParallel(_net(), world)
    _train(bare, torch.optim.Adam(bare.parameters(), 1e-3), 0, 3)
    _train(wrapped, torch.optim.Adam(wrapped.parameters(), 1e-3), 0, 3)
    _assert_states_close(wrapped.module, bare, rtol=0, atol=0)


def test_the_wrapper_has_ddps_interface(world):
    net = _net()
    engine = MPIDataParallel(net, world)
    assert engine.module is net
    assert [id(p) for p in engine.parameters()] == [id(p) for p in net.parameters()]
    assert all(key.startswith("module.") for key in engine.state_dict())
    assert engine.eval() is engine and not net.training
    engine.train()
    assert net.training
    x, y = _batch(0, 0)
    F.cross_entropy(engine(x), y).backward()  # the end-of-backward callback has averaged the gradients
    assert all(p.grad is not None for p in net.parameters())
    engine.close()


def test_buckets_cover_every_parameter_once_in_reverse_order(world):
    net = _net()
    engine = MPIDataParallel(net, world, bucket_cap_mb=0.01, first_bucket_mb=0.001)
    order = [i for bucket in engine._buckets for i in bucket.params]
    assert order == list(reversed(range(len(list(net.parameters())))))
    sizes = engine.stats.buckets
    assert sum(sizes) == 4 * sum(p.numel() + 1 for p in net.parameters())  # gradients and a "used" flag each
    assert sizes[0] <= max(0.001 * 2**20, 4 * list(net.parameters())[-1].numel())
    engine.close()


def test_cpu_buckets_share_memory_with_what_mpi_sends(world):
    engine = MPIDataParallel(nn.Linear(3, 2), world)
    for bucket in engine._buckets:
        assert np.shares_memory(bucket.host, bucket.flat.numpy())
    engine.close()
