"""The only package that reads the environment or touches MPI / torch.distributed.

MPI is the source of truth for rank, size and local rank; torch.distributed is bootstrapped from
it (rank 0 picks host and port and broadcasts them). Every collective here has a deadline, and an
exception on any rank ends the whole job (MPI Abort, as `python -m mpi4py` does): a hung job
burns a cluster allocation, a dead one costs a minute.

state        mpi4py.MPI (imported on first use) and the current phase
world        the MPI world of a rank: node, device, threads, determinism
collectives  deadline collectives, the arrival wait, the MPI engine's primitives
faults       the test fault hooks (DDC_* variables)
distributed  the torch.distributed bootstrap and its group reductions
lifecycle    phases, stop signals, requeue, run_guarded (run_contained: a job inside a process that goes on)
"""

from __future__ import annotations

from . import state
from .collectives import (
    CollectiveTimeout,
    StrayCollective,
    agree,
    allgather,
    arrive,
    barrier,
    bcast,
    collective_error,
    data_parallel_world,
    free_world,
    gatherv,
    progress,
    raise_first_bad_input,
    start_allreduce,
    start_bcast,
    wait_all,
)
from .distributed import (
    all_gather_float,
    all_reduce_sum,
    choose_rendezvous,
    enter_sub_group,
    group_rank,
    group_size,
    init_distributed,
    leave_sub_group,
    named_interfaces,
    rendezvous_host,
    resolve_backend,
    shutdown_distributed,
    wait_for_peers,
)
from .faults import nan_point, signal_point, slow_write_point, stray_point
from .lifecycle import (
    Preempted,
    RankFailed,
    abort,
    any_stop_requested,
    install_stop_handlers,
    restart_count,
    run_contained,
    run_guarded,
    set_phase,
    slurm_job,
    slurm_time_left,
    stop_requested,
)
from .state import current_phase
from .world import (
    World,
    check_launcher,
    configure_determinism,
    configure_threads,
    configure_world,
    device_type,
    init_world,
)


def __getattr__(name: str):
    """comm.MPI: read from state on each use (the lazy stand-in, then mpi4py.MPI), never a stale copy."""
    if name == "MPI":
        return state.MPI
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
