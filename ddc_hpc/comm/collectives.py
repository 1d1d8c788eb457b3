"""Deadline collectives on MPI: pickled and Gatherv exchanges, the arrival wait, the MPI engine's primitives."""

from __future__ import annotations

import dataclasses
import os
import pickle
import time

import numpy as np

from ..errors import BadInput
from ..partition import gatherv_layout
from . import state
from .world import World


class CollectiveTimeout(RuntimeError):
    """A collective waited past run.collective_timeout: some other rank is stuck or gone."""


class StrayCollective(RuntimeError):
    """A collective in the sub phase outside a sub-network's own group: that phase has no communication."""


def _wait(world: World, request: state.MPI.Request, what: str) -> None:
    """Complete one non-blocking collective, or raise once run.collective_timeout has passed."""
    wait_all(world, [request], what)


def allgather(world: World, value, what: str = "allgather") -> list:
    """Every rank's (picklable) value, in rank order."""
    data = np.frombuffer(pickle.dumps(value), dtype=np.uint8)
    sizes = np.zeros(world.size, dtype=np.int64)
    _wait(world, world.comm.Iallgather(np.array([data.size], dtype=np.int64), sizes), what)
    counts, displs = gatherv_layout(sizes.tolist())
    buffer = np.empty(sum(counts), dtype=np.uint8)
    _wait(world, world.comm.Iallgatherv(data, [buffer, counts, displs, state.MPI.BYTE]), what)
    return [pickle.loads(buffer[d : d + c].tobytes()) for c, d in zip(counts, displs)]


def bcast(world: World, value, what: str = "broadcast"):
    """Rank 0's (picklable) value on every rank."""
    data = np.frombuffer(pickle.dumps(value), dtype=np.uint8) if world.is_root else None
    size = np.array([0 if data is None else data.size], dtype=np.int64)
    _wait(world, world.comm.Ibcast(size, root=0), what)
    buffer = data.copy() if world.is_root else np.empty(int(size[0]), dtype=np.uint8)
    _wait(world, world.comm.Ibcast(buffer, root=0), what)
    return pickle.loads(buffer.tobytes())


def barrier(world: World, what: str = "barrier") -> None:
    _wait(world, world.comm.Ibarrier(), what)


def agree(world: World, value, what: str) -> None:
    """Stop every rank with exit 2 when ranks hold different values (configs, code versions)."""
    values = allgather(world, value, f"comparing {what}")
    odd = [r for r, v in enumerate(values) if v != values[0]]
    if odd:
        err = BadInput(
            f"ranks disagree on {what}: rank 0 has {values[0]!r} but rank(s) {odd} have "
            f"{[values[r] for r in odd]!r}; every rank must see the same files and code"
        )
        err.collective = True
        raise err


def collective_error(message: str) -> BadInput:
    """A BadInput that every rank raises together: reported once, by rank 0, without MPI Abort."""
    err = BadInput(message)
    err.collective = True
    return err


def raise_first_bad_input(world: World, error: BadInput | None) -> None:
    """Collective verdict on per-rank validation: all ranks raise the first rank's error, together."""
    errors = allgather(world, None if error is None else str(error), "validating the input")
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if failed:
        rank, message = failed[0]
        raise collective_error(message if len(failed) == world.size else f"rank {rank}: {message}")


def gatherv(world: World, flat: np.ndarray, root: int = 0) -> np.ndarray | None:
    """One Gatherv of a float32 vector per rank, uneven lengths; the concatenation on `root`."""
    flat = np.ascontiguousarray(flat, dtype=np.float32)
    counts, displs = gatherv_layout(allgather(world, flat.size, "exchanging Gatherv counts"))
    recv = np.empty(sum(counts), dtype=np.float32) if world.rank == root else None
    spec = [recv, counts, displs, state.MPI.FLOAT] if world.rank == root else None
    _wait(world, world.comm.Igatherv(flat, spec, root=root), "Gatherv of sub-network weights")
    return recv


# ---- MPI-native data parallel (run.backend = "mpi4py") ----------------------------------------
# engine.MPIDataParallel keeps the hooks and buckets and makes no MPI call of its own: these are
# its only ones. Gradients travel in one Iallreduce per bucket, on a communicator of their own;
# every wait has the same deadline as the collectives above (run.collective_timeout), and polls
# with short sleeps, so a rank that is early yields its core to oversubscribed peers and still
# drives MPI's progress engine (MPICH has no progress thread by default).

def data_parallel_world(world: World, ranks: list[int] | None = None) -> World:
    """This world on a private communicator over `ranks` (default all): only members call this.

    The engine's nonblocking collectives then never interleave with the pipeline's own.
    """
    if ranks is None or list(ranks) == list(range(world.size)):
        private, request = world.comm.Idup()
        _wait(world, request, "duplicating the communicator for data parallel")
    else:
        members = world.comm.Get_group()
        subset = members.Incl(list(ranks))
        private = world.comm.Create_group(subset, tag=7)  # collective over the members only
        subset.Free()
        members.Free()
    return dataclasses.replace(world, comm=private, rank=private.Get_rank(), size=private.Get_size())


def start_allreduce(world: World, buffer: np.ndarray) -> state.MPI.Request:
    """Sum `buffer` over the world in place (nonblocking); complete it with wait_all."""
    return world.comm.Iallreduce(state.MPI.IN_PLACE, buffer, op=state.MPI.SUM)


def start_bcast(world: World, buffer: np.ndarray, root: int = 0) -> state.MPI.Request:
    """Root's `buffer` into every rank's `buffer` (nonblocking); complete it with wait_all."""
    return world.comm.Ibcast(buffer, root=root)


def progress(requests: list) -> bool:
    """Poke MPI's progress engine for pending requests; True when all are complete."""
    return bool(state.MPI.Request.Testall(requests)) if requests else True


SPIN_SECONDS = 0.005  # poll back to back (yielding the core) this long, then sleep between polls
MAX_PAUSE = 1e-3  # the longest sleep between polls


def wait_all(world: World, requests: list, what: str, timeout: float | None = None) -> None:
    """Complete nonblocking collectives, or raise CollectiveTimeout after `timeout` seconds
    (default run.collective_timeout).

    MPI moves a message along only while some rank polls it (MPICH has no progress thread), so
    the pause between polls bounds a collective's speed: every exchange of an algorithm's rounds
    waits for the partner's next poll. Back-to-back polls with sched_yield for the first 5 ms (a
    peer that is runnable gets the core), then sleeps doubling from 10 us to at most 1 ms: the
    compose phase's 25 MB Gatherv at 4 ranks on 2 cores takes ~8 ms instead of ~0.5 s with sleeps
    doubling to 50 ms (benchmarks/RESULTS.md, 7c).
    """
    phase = state.current_phase()
    if phase == "sub" and not world.subnet_group:
        raise StrayCollective(f"{what}: a collective in the sub phase, on a communicator of {world.size} rank(s) "
                              "that is not a sub-network's group (the sub phase has no communication between "
                              "sub-networks)")
    timeout = world.timeout if timeout is None else timeout
    start = time.monotonic()
    deadline = start + timeout
    pause = 1e-5
    while not state.MPI.Request.Testall(requests):
        now = time.monotonic()
        if now > deadline:
            err = CollectiveTimeout(
                f"{what} in phase {phase!r} did not complete within {timeout:g} s: another rank "
                "is stuck or dead (raise run.collective_timeout if a phase is legitimately slower)"
            )
            err.requests = requests  # still pending: freeing them would be erroneous MPI
            if len(requests) == 1:
                err.request = requests[0]
            raise err
        if now - start < SPIN_SECONDS:
            os.sched_yield()
        else:
            time.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE)


ARRIVAL_TAG = 7401


def arrive(world: World, what: str, allowed: float, since: float, why: str) -> None:
    """Wait until every rank is here, at most until `since + allowed` (time.monotonic()); then
    CollectiveTimeout naming the ranks that did not `what` and `why` that long was allowed.

    For the end of independent work, whose length differs between ranks: one empty message to and
    from every other rank (not a collective), so the missing ranks are known.
    """
    others = [r for r in range(world.size) if r != world.rank]
    token, inbox = np.zeros(1, np.uint8), np.zeros(max(len(others), 1), np.uint8)
    sends = [world.comm.Isend(token, dest=r, tag=ARRIVAL_TAG) for r in others]
    receives = [world.comm.Irecv(inbox[i : i + 1], source=r, tag=ARRIVAL_TAG) for i, r in enumerate(others)]
    try:
        wait_all(world, receives, f"waiting for every rank to {what}", max(since + allowed - time.monotonic(), 0.0))
    except CollectiveTimeout as err:
        missing = [r for r, request in zip(others, receives) if not request.Test()]
        late = CollectiveTimeout(f"rank(s) {missing} did not {what} within {allowed:.0f} s ({why}): they are stuck "
                                 "or dead")
        late.requests = err.requests + sends
        raise late from None
    wait_all(world, sends, f"telling every rank this one is ready to {what}")


def free_world(world: World) -> None:
    """Release a communicator made by data_parallel_world."""
    if world.comm not in (state.MPI.COMM_WORLD, state.MPI.COMM_SELF, state.MPI.COMM_NULL):
        world.comm.Free()
