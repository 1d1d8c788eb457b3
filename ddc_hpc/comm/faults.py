"""The test fault hooks: the one place that reads DDC_FAULT, DDC_STRAY, DDC_*_AT, DDC_SLOW_*, DDC_LEAVE_SECONDS
and DDC_NCCL_STANDIN."""

from __future__ import annotations

import os
import signal
import time

import torch
import torch.distributed as dist

from . import state
from .collectives import barrier
from .world import World


def phase_fault(name: str) -> None:
    """DDC_FAULT=<phase>:<rank>[:<kind>] ('*' for every rank) at the start of that phase: kind
    `error` (default) raises, `hang` never returns, `kill` SIGKILLs this rank."""
    fault_phase, fault_rank, kind = (os.environ.get("DDC_FAULT", "").split(":") + ["", "", "error"])[:3]
    if fault_phase != name or not _is_my_rank(fault_rank):
        return
    if kind == "hang":
        while True:
            time.sleep(3600)
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"injected fault DDC_FAULT={os.environ['DDC_FAULT']} at the start of phase {name!r}")


def _is_my_rank(spec: str) -> bool:
    return spec.strip() in ("", "*", str(state.MPI.COMM_WORLD.Get_rank()))


def stray_point(world: World) -> None:
    """Test hook: DDC_STRAY=<phase>[:torch] makes that phase run one collective it must not: a
    barrier on `world`, or (`torch`) a torch.distributed all_reduce on the default process group."""
    phase, _, kind = os.environ.get("DDC_STRAY", "").partition(":")
    if phase != state.current_phase():
        return
    if kind == "torch":
        dist.all_reduce(torch.zeros(1))
    else:
        barrier(world, "a stray barrier (DDC_STRAY)")


def signal_point(job: str, epoch: int, step: int) -> None:
    """Test hooks after a training step (1-based epoch and step), as a cluster would do it:
    DDC_STOP_AT=<job>:<epoch>:<step> sends SIGUSR1 (SLURM's pre-timeout warning) to this rank;
    DDC_INTERRUPT_AT (same form) SIGINT, as Ctrl-C on an interactive mpiexec does; DDC_KILL_AT=<job>:<epoch>:<step>:<rank> SIGKILLs that rank; DDC_HANG_AT (same form) makes it
    hang there, alive and making no progress."""
    here = f"{job}:{epoch}:{step}"
    if os.environ.get("DDC_STOP_AT") == here:
        signal.raise_signal(signal.SIGUSR1)
    if os.environ.get("DDC_INTERRUPT_AT") == here:
        signal.raise_signal(signal.SIGINT)
    kill_at, _, rank = os.environ.get("DDC_KILL_AT", "").rpartition(":")
    if kill_at == here and _is_my_rank(rank):
        os.kill(os.getpid(), signal.SIGKILL)
    hang_at, _, rank = os.environ.get("DDC_HANG_AT", "").rpartition(":")
    while hang_at == here and _is_my_rank(rank):
        time.sleep(3600)


def nan_point(job: str, epoch: int, step: int) -> bool:
    """DDC_NAN_AT=<job>:<epoch>:<step>[:<rank>]: make that step's loss NaN (numerical-fault tests),
    on every rank or on that one."""
    where, rank = os.environ.get("DDC_NAN_AT", ""), ""
    if where.count(":") == 3:
        where, _, rank = where.rpartition(":")
    return where == f"{job}:{epoch}:{step}" and _is_my_rank(rank)


def slow_write_point() -> None:
    """DDC_SLOW_WRITE=<rank>:<seconds> ('*' for every rank): each checkpoint that rank writes takes
    `seconds` longer, as a large network on a slow parallel file system does."""
    rank, _, seconds = os.environ.get("DDC_SLOW_WRITE", "").partition(":")
    if seconds and _is_my_rank(rank):
        time.sleep(float(seconds))


def slow_requeue_point() -> None:
    """DDC_SLOW_REQUEUE=<seconds>: rank 0's `scontrol requeue` takes `seconds` longer, as it does when
    slurmctld is busy."""
    seconds = os.environ.get("DDC_SLOW_REQUEUE")
    if seconds:
        time.sleep(float(seconds))


def leave_seconds(default: float) -> float:
    """DDC_LEAVE_SECONDS=<seconds>: how long a stopped rank waits for the others before it leaves
    (`default` without it), so that a test's slow stop checkpoint outlasts that wait in seconds."""
    return float(os.environ.get("DDC_LEAVE_SECONDS") or default)


def nccl_standin() -> str:
    """DDC_NCCL_STANDIN=gloo (tests on hosts without GPUs): the backend registered for CUDA tensors
    in place of NCCL."""
    return os.environ.get("DDC_NCCL_STANDIN", "nccl")
