"""A rank's lifecycle: the phase it is in, stop signals and requeue, and run_guarded's exit on any failure
(run_contained: the same outcome for a job run inside a process that goes on)."""

from __future__ import annotations

import array
import fcntl
import os
import signal
import stat
import subprocess
import sys
import termios
import time
import traceback

import torch

from ..errors import BadInput
from . import faults, state
from .distributed import all_reduce_sum, shutdown_distributed

EXIT_PREEMPTED = 75  # sysexits EX_TEMPFAIL: checkpoint written, run again (or requeued) to resume
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C: checkpoint written, run again to resume


class Preempted(Exception):
    """A stop signal arrived; the state is checkpointed and the job should be resumed later."""


def set_phase(name: str) -> None:
    """Name the phase for error messages and collective counts; fire an injected fault if asked
    (faults.phase_fault)."""
    state.enter_phase(name)
    faults.phase_fault(name)


# ---- preemption ------------------------------------------------------------------------------

_stop_signal: int | None = None
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


def install_stop_handlers() -> None:
    """SIGUSR1 (SLURM's warning before the time limit), SIGTERM and SIGINT (Ctrl-C; the terminal
    sends it to every rank of an interactive mpiexec) only raise a flag; the training loop
    checkpoints at the next step boundary. A second Ctrl-C interrupts at once."""

    def handler(signum, _frame):
        global _stop_signal
        _stop_signal = signum
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)


def stop_requested() -> bool:
    return _stop_signal is not None


def any_stop_requested(group=None) -> bool:
    """True on every rank of the group if any rank got a stop signal (one tiny allreduce)."""
    flag = torch.tensor([1.0 if stop_requested() else 0.0])
    return bool(all_reduce_sum(flag, group).item() > 0)


def slurm_job() -> str | None:
    """This SLURM job as scontrol and squeue name it, None outside SLURM. A job array's task is
    `<array>_<task>`: its bare SLURM_JOB_ID is, for the array's last task, also the array's id, and
    `scontrol requeue` of that requeues every task of the array (a study's points: ddc_hpc.study)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID") or None


def requeue() -> bool:
    """Under SLURM, put the job back in the queue; the requeued job resumes from its out dir."""
    job = slurm_job()
    if not job:
        return False
    faults.slow_requeue_point()
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if result.returncode:
        print(f"rank 0: scontrol requeue {job} failed: {result.stderr.strip()}", file=sys.stderr, flush=True)
    else:
        print(f"rank 0: requeued SLURM job {job}; it will resume from its checkpoints", file=sys.stderr, flush=True)
    return result.returncode == 0


LEAVE_SECONDS = 60  # how long a rank waits for the others (and rank 0's requeue) before it leaves anyway


def _leave_after_stop(comm: state.MPI.Comm, rank: int) -> None:
    """Every rank stopped at the same point, after the stop checkpoints were published (a writer's
    peers wait for it in train.fit): rank 0 requeues first (only for SIGUSR1, the --signal warning
    before the time limit; SIGTERM is a user's scancel), then all leave MPI together. Under
    `srun --kill-on-bad-exit=1` the first rank to exit 75 ends the step, so no rank may exit before
    rank 0's `scontrol requeue` has returned."""
    shutdown_distributed()
    if rank == 0 and _stop_signal == signal.SIGUSR1:
        requeue()
    request, deadline = comm.Ibarrier(), time.monotonic() + faults.leave_seconds(LEAVE_SECONDS)
    while not request.Test() and time.monotonic() < deadline:
        time.sleep(0.01)
    if request.Test():
        state.MPI.Finalize()


def restart_count() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def slurm_time_left() -> str | None:
    """squeue's %L for this SLURM job (the time left before its limit), or None outside SLURM or
    when squeue cannot say (run.budget = "slurm")."""
    job = slurm_job()
    if not job:
        return None
    try:
        result = subprocess.run(["squeue", "-h", "-j", job, "-o", "%L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


# ---- fail fast -------------------------------------------------------------------------------

def wait_for_launcher_to_read(fds=(1, 2), limit: float = 2.0) -> None:
    """Wait (at most `limit` s) until the launcher has read what this rank wrote to its stdout and
    stderr pipes. MPI Abort makes the launcher kill the job at once: Hydra's mpiexec dropped the
    failing rank's last lines (its own name and cause) in 6 of 200 aborts without this wait, 0 of
    200 with it (4 ranks, the last one aborting). A file or terminal keeps what was written; only
    a pipe can lose it."""
    deadline = time.monotonic() + limit
    unread = array.array("i", [0])
    for fd in fds:
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                continue
            while time.monotonic() < deadline:
                fcntl.ioctl(fd, termios.FIONREAD, unread)
                if unread[0] == 0:
                    break
                time.sleep(0.005)
        except OSError:
            continue


def _outcome(main, rank: int, size: int, debug: bool) -> tuple[int, bool]:
    """Run main() and print what ended it, as every entry does: (exit code, whether the job must be
    aborted: a failure on this rank that the other ranks cannot know about)."""
    abort = size > 1
    try:
        main()
        code = 0
    except BadInput as err:
        code = 2
        collective = getattr(err, "collective", False)
        abort = abort and not collective
        if rank == 0 or not collective:
            prefix = "error: " if collective or size == 1 else f"rank {rank}: error: "
            print(f"{prefix}{err}", file=sys.stderr, flush=True)
        if debug:
            traceback.print_exc()
    except Preempted as err:  # raised on every rank at once (they agree to stop): said once
        interrupted = _stop_signal == signal.SIGINT
        code, abort = EXIT_INTERRUPTED if interrupted else EXIT_PREEMPTED, False
        if rank == 0:
            print(f"{'interrupted (Ctrl-C)' if interrupted else 'stopped'}: {err}", file=sys.stderr, flush=True)
    except BaseException as err:  # noqa: BLE001 - the whole point is to catch everything
        code = EXIT_INTERRUPTED if isinstance(err, KeyboardInterrupt) else 1
        detail = traceback.format_exc()
        what = err or ("interrupted before a checkpoint could be written" if isinstance(err, KeyboardInterrupt) else "")
        print(f"rank {rank}: {type(err).__name__} in phase {state.current_phase()!r}: {what}", file=sys.stderr,
              flush=True)
        if debug or size == 1:
            print(detail, file=sys.stderr, flush=True)
    return code, abort and code != 0


def abort(code: int) -> None:
    """End the whole job from this rank (MPI Abort), once the launcher has read what it wrote."""
    sys.stdout.flush()
    sys.stderr.flush()
    wait_for_launcher_to_read()
    state.MPI.COMM_WORLD.Abort(code)


def run_guarded(main, debug: bool = False) -> None:
    """Run main(); any exception on any rank ends the whole job with the rank and cause named.

    Exit 0 done, 2 bad input, 75 preempted (checkpoint written), 130 Ctrl-C (checkpoint written, or
    before the stop handlers were installed), 1 anything else. A failure that
    other ranks cannot know about is turned into MPI Abort, so nobody waits in a collective.
    """
    comm = state.MPI.COMM_WORLD
    rank = comm.Get_rank()
    code, must_abort = _outcome(main, rank, comm.Get_size(), debug)
    if not must_abort and code in (EXIT_PREEMPTED, EXIT_INTERRUPTED):  # every rank stopped at a checkpoint
        _leave_after_stop(comm, rank)
    if must_abort:
        abort(code)
    shutdown_distributed()
    sys.exit(code)


class RankFailed(Exception):
    """run_contained: this rank failed alone in a world of several; the others wait for it in a
    collective, so the caller must end the job (abort(code)) once it has shown the error."""

    def __init__(self, code: int):
        super().__init__(f"this rank failed with exit code {code}; the other ranks cannot know")
        self.code = code


def run_contained(main, debug: bool = False) -> int:
    """run_guarded for a caller that keeps its process and MPI: the test suite's pytest-mpi stages
    run whole jobs in-process, importing torch once per rank instead of once per launched rank.

    Prints what run_guarded prints and returns the exit code it would exit with (raises RankFailed
    where it would abort); afterwards torch.distributed is ended and the environment, stop handlers
    and stop flag, phase, torch threads and determinism settings are as they were. A stop leaves
    MPI as it is: no finalize, no requeue.
    """
    global _stop_signal
    if torch.distributed.is_initialized():
        raise RuntimeError("run_contained: torch.distributed is already initialised; a job makes its own process group")
    comm = state.MPI.COMM_WORLD
    environ, handlers = dict(os.environ), {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    threads, phase = torch.get_num_threads(), state.current_phase()
    determinism = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                   torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    try:
        code, must_abort = _outcome(main, comm.Get_rank(), comm.Get_size(), debug)
    finally:
        shutdown_distributed()
        os.environ.clear()
        os.environ.update(environ)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        _stop_signal = None
        state.enter_phase(phase)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(determinism[0], warn_only=determinism[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = determinism[2:]
    if must_abort:
        raise RankFailed(code)
    return code
