"""comm at 1, 2 and 4 ranks (pytest-mpi: `mpiexec -n N python -m pytest --with-mpi -m mpi`)."""

import dataclasses

import numpy as np
import pytest
import torch

from ddc_hpc import comm
from ddc_hpc.errors import BadInput

pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def world():
    return comm.init_world()


def test_world_matches_mpi(world):
    from mpi4py import MPI

    assert (world.rank, world.size) == (MPI.COMM_WORLD.rank, MPI.COMM_WORLD.size)
    assert world.local_size == world.size and world.local_rank == world.rank  # one node here
    assert world.is_root == (world.rank == 0)


def test_gatherv_with_uneven_counts(world):
    mine = np.arange(world.rank * 2, dtype=np.float32) + 100 * world.rank  # rank 0 sends nothing
    got = comm.gatherv(world, mine)
    if world.is_root:
        expected = np.concatenate([np.arange(r * 2, dtype=np.float32) + 100 * r for r in range(world.size)])
        np.testing.assert_array_equal(got, expected)
    else:
        assert got is None


def test_agree_passes_on_equal_values_and_stops_every_rank_on_a_difference(world):
    comm.agree(world, "same", "a value")
    if world.size == 1:
        return
    with pytest.raises(BadInput, match=r"rank\(s\) \[1\]"):
        comm.agree(world, "odd" if world.rank == 1 else "same", "a value")


def test_raise_first_bad_input_raises_on_all_ranks_when_one_rank_failed(world):
    comm.raise_first_bad_input(world, None)
    failing = BadInput("data file missing") if world.rank == world.size - 1 else None
    with pytest.raises(BadInput, match="data file missing"):
        comm.raise_first_bad_input(world, failing)


def test_torch_distributed_bootstrapped_from_mpi(world):
    assert comm.init_distributed(world, "gloo") == "gloo"
    total = comm.all_reduce_sum(torch.tensor([float(world.rank)]))
    assert total.item() == sum(range(world.size))
    comm.shutdown_distributed()


def test_the_sub_phase_world_reaches_only_a_sub_network_group(world):
    """Alone: COMM_SELF, no torch.distributed, every collective raises; a group (ranks of one
    parity, at 4 ranks): torch.distributed spans the group only."""
    import torch.distributed as dist

    ranks = [r for r in range(world.size) if r % 2 == world.rank % 2]
    local = comm.enter_sub_group(world, "gloo", ranks)
    comm.set_phase("sub")
    try:
        if len(ranks) == 1:
            assert local.size == 1 and not dist.is_initialized()
            with pytest.raises(comm.StrayCollective, match="a lonely barrier: a collective in the sub phase"):
                comm.barrier(local, "a lonely barrier")
        else:
            assert dist.get_world_size() == local.size == len(ranks)
            comm.barrier(local, "a group barrier")  # inside the group: allowed
            assert comm.all_reduce_sum(torch.ones(1)).item() == len(ranks)
    finally:
        comm.set_phase("startup")
    comm.leave_sub_group(local)
    assert not dist.is_initialized()


@pytest.mark.mpi(min_size=2)
def test_bookkeeping_runs_where_the_gradient_backend_takes_no_cpu_tensors(world, monkeypatch):
    """NCCL refuses CPU tensors; gloo registered for CUDA only (the stand-in) refuses them the same
    way. The metric and stop reductions must still work, world-wide and in a sub-phase group."""
    from ddc_hpc import build_model
    from ddc_hpc.data import load_dataset
    from ddc_hpc.train import PhaseData, evaluate

    monkeypatch.setenv("DDC_NCCL_STANDIN", "gloo")
    data = load_dataset("synthetic", num_classes=10, val_fraction=0.5, seed=0, limit=32)
    phase = PhaseData(train=data.train, val=data.val, mean=data.mean, augment=False)
    model = build_model("cifar_resnet20", 10, width=4)

    def bookkeeping(peers):
        assert evaluate(model, phase, torch.device("cpu"))["val_samples"] == len(data.val)
        assert comm.any_stop_requested() is False
        assert comm.all_gather_float(world.rank) == [float(r) for r in peers]

    assert comm.init_distributed(world, "nccl") == "nccl"
    try:
        bookkeeping(range(world.size))
    finally:
        comm.shutdown_distributed()
    pair = [world.rank // 2 * 2, world.rank // 2 * 2 + 1]
    if pair[1] < world.size:  # the sub phase's data-parallel group (R > K) has its own process group
        local = comm.enter_sub_group(world, "nccl", pair)
        try:
            bookkeeping(pair)
        finally:
            comm.leave_sub_group(local)


@pytest.mark.mpi(min_size=2)
def test_a_collective_that_a_rank_never_joins_times_out(world):
    private = dataclasses.replace(world, comm=world.comm.Dup(), timeout=0.5)
    if world.rank == 0:
        with pytest.raises(comm.CollectiveTimeout, match="did not complete within 0.5 s") as timed_out:
            comm.barrier(private, "a lonely barrier")
    comm.barrier(world)  # rank 0 has given up; the others now join its pending barrier
    if world.rank == 0:
        timed_out.value.requests[0].Wait()
    else:
        private.comm.Ibarrier().Wait()
    private.comm.Free()


def test_wrong_srun_mpi_plugin_is_diagnosed(monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    with pytest.raises(BadInput, match="--mpi=pmi2"):
        comm.check_launcher(1)
    comm.check_launcher(4)  # a real 4-rank world is fine


def test_fault_injection_names_phase_and_rank(monkeypatch, world):
    monkeypatch.setenv("DDC_FAULT", f"global:{world.rank}")
    comm.set_phase("sub")
    with pytest.raises(RuntimeError, match="injected fault"):
        comm.set_phase("global")
