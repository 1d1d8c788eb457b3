"""The MPI world of this rank: rank, size and node, its device, thread count and determinism."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import torch

from ..errors import BadInput
from . import state


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int
    local_size: int
    device: torch.device
    timeout: float = 300.0
    comm: state.MPI.Comm = field(default_factory=lambda: state.MPI.COMM_WORLD, repr=False, compare=False)
    # A sub-network's data-parallel group (R > K, enter_sub_group): the only world the sub phase may use.
    subnet_group: bool = False

    @property
    def is_root(self) -> bool:
        return self.rank == 0


def check_launcher(mpi_size: int) -> None:
    """SLURM started several tasks but MPI sees one: the classic wrong `srun --mpi` plugin."""
    ntasks = int(os.environ.get("SLURM_NTASKS", os.environ.get("SLURM_NPROCS", "1")) or 1)
    if ntasks > 1 and mpi_size == 1 and "SLURM_STEP_ID" in os.environ:
        raise BadInput(
            f"SLURM started {ntasks} tasks but MPI reports a world of size 1: every task runs alone "
            f"and would train the same thing {ntasks} times. srun's MPI plugin does not match the MPI "
            "that mpi4py was built against. Use `srun --mpi=pmix` (Open MPI, recent MPICH) or "
            "`srun --mpi=pmi2` (MPICH, Intel MPI); `srun --mpi=list` shows what this cluster offers."
        )


def device_type(preference: str) -> str:
    """'cuda' or 'cpu' for run.device ('auto' takes GPUs when there are any)."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise BadInput("run.device = 'cuda' but no CUDA device is visible on this node; use 'auto' or 'cpu'")
    return "cuda" if preference != "cpu" and torch.cuda.is_available() else "cpu"


def _pick_device(preference: str, local_rank: int) -> torch.device:
    if device_type(preference) == "cuda":
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)  # before any NCCL or CUDA context is made
        return device
    return torch.device("cpu")


def init_world() -> World:
    """The MPI world on the CPU; configure_world later picks the run's device and deadline."""
    comm = state.MPI.COMM_WORLD
    check_launcher(comm.Get_size())
    node = comm.Split_type(state.MPI.COMM_TYPE_SHARED)
    world = World(
        rank=comm.Get_rank(),
        size=comm.Get_size(),
        local_rank=node.Get_rank(),
        local_size=node.Get_size(),
        device=torch.device("cpu"),
        comm=comm,
    )
    node.Free()
    return world


def configure_world(world: World, device: str, timeout: float) -> World:
    """The world with the run's device (one per local rank) and collective deadline."""
    return dataclasses.replace(world, device=_pick_device(device, world.local_rank), timeout=timeout)


def configure_threads(world: World, threads: int, deterministic: bool) -> int:
    """Give each rank its share of this node's cores, so ranks x threads never oversubscribes."""
    if not threads:
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        threads = int(cpus) if cpus else max(1, len(os.sched_getaffinity(0)) // world.local_size)
    torch.set_num_threads(threads)
    if world.device.type == "cuda":  # autotuned convolution kernels: the fastest, not reproducible
        torch.backends.cudnn.benchmark = not deterministic
    return threads


CUBLAS_DETERMINISTIC = ":4096:8"  # the workspace setting cuBLAS needs for reproducible results


def configure_determinism(deterministic: bool, device_type: str) -> str | None:
    """run.deterministic: torch's deterministic algorithms; returns what the log must say.

    Call before CUDA is initialised (cuBLAS reads CUBLAS_WORKSPACE_CONFIG when it starts). On the
    CPU every kernel the models use is deterministic (strict: an exception otherwise). On CUDA torch
    has no deterministic backward for some kernels these models use (adaptive average pooling in the
    ResNets' head, 3D max pooling): strict mode would raise there, so they warn and stay non-deterministic.
    """
    if not deterministic:
        return None
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    if device_type != "cuda":
        torch.use_deterministic_algorithms(True)
        return "run.deterministic on cpu: deterministic algorithms (strict); a resumed run is bitwise identical"
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return ("run.deterministic on cuda: CUBLAS_WORKSPACE_CONFIG="
            f"{os.environ['CUBLAS_WORKSPACE_CONFIG']}, cuDNN deterministic, deterministic algorithms where torch "
            "has them; NOT deterministic: the backward of kernels torch has no deterministic CUDA version of (adaptive "
            "average pooling in the ResNets' head, 3D max pooling; torch warns once for each), so repeated GPU runs "
            "may differ in the last bits")
