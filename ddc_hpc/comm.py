"""The only module that reads the environment or touches MPI / torch.distributed.

MPI is the source of truth for rank, size and local rank; torch.distributed is bootstrapped from
it (rank 0 picks host and port and broadcasts them). Every collective here has a deadline, and an
exception on any rank ends the whole job (MPI Abort, as `python -m mpi4py` does): a hung job
burns a cluster allocation, a dead one costs a minute.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import fcntl
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from .errors import BadInput


class _MPIOnFirstUse:
    """Stands for mpi4py.MPI until first used, then imports it (MPI_Init) and takes its place:
    the serial tools import this module through train.py and never start MPI."""

    def __getattr__(self, name):
        global MPI
        from mpi4py import MPI

        return getattr(MPI, name)


MPI = _MPIOnFirstUse()

PHASES = ("sub", "compose", "global", "random")
EXIT_PREEMPTED = 75  # sysexits EX_TEMPFAIL: checkpoint written, run again (or requeued) to resume


class Preempted(Exception):
    """A stop signal arrived; the state is checkpointed and the job should be resumed later."""


class CollectiveTimeout(RuntimeError):
    """A collective waited past run.collective_timeout: some other rank is stuck or gone."""


class StrayCollective(RuntimeError):
    """A collective in the sub phase outside a sub-network's own group: that phase has no communication."""


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int
    local_size: int
    device: torch.device
    timeout: float = 300.0
    comm: MPI.Comm = field(default_factory=lambda: MPI.COMM_WORLD, repr=False, compare=False)
    # Collectives this rank took part in, by phase: the evidence that the sub phase talks to no one.
    collectives: collections.Counter = field(default_factory=collections.Counter, repr=False, compare=False)
    # A sub-network's data-parallel group (R > K, enter_sub_group): the only world the sub phase may use.
    subnet_group: bool = False

    @property
    def is_root(self) -> bool:
        return self.rank == 0


_phase = "startup"


def set_phase(name: str) -> None:
    """Name the phase for error messages and collective counts; fire an injected fault if asked.

    DDC_FAULT=<phase>:<rank>[:<kind>] ('*' for every rank) at the start of that phase: kind
    `error` (default) raises, `hang` never returns, `kill` SIGKILLs this rank.
    """
    global _phase
    _phase = name
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
    return spec.strip() in ("", "*", str(MPI.COMM_WORLD.Get_rank()))


def current_phase() -> str:
    return _phase


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
    comm = MPI.COMM_WORLD
    check_launcher(comm.Get_size())
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
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


def _wait(world: World, request: MPI.Request, what: str) -> None:
    """Complete one non-blocking collective, or raise once run.collective_timeout has passed."""
    wait_all(world, [request], what)


def allgather(world: World, value, what: str = "allgather") -> list:
    """Every rank's (picklable) value, in rank order."""
    from .partition import gatherv_layout

    data = np.frombuffer(pickle.dumps(value), dtype=np.uint8)
    sizes = np.zeros(world.size, dtype=np.int64)
    _wait(world, world.comm.Iallgather(np.array([data.size], dtype=np.int64), sizes), what)
    counts, displs = gatherv_layout(sizes.tolist())
    buffer = np.empty(sum(counts), dtype=np.uint8)
    _wait(world, world.comm.Iallgatherv(data, [buffer, counts, displs, MPI.BYTE]), what)
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
    from .partition import gatherv_layout

    flat = np.ascontiguousarray(flat, dtype=np.float32)
    counts, displs = gatherv_layout(allgather(world, flat.size, "exchanging Gatherv counts"))
    recv = np.empty(sum(counts), dtype=np.float32) if world.rank == root else None
    spec = [recv, counts, displs, MPI.FLOAT] if world.rank == root else None
    _wait(world, world.comm.Igatherv(flat, spec, root=root), "Gatherv of sub-network weights")
    return recv


# ---- torch.distributed ----------------------------------------------------------------------

def resolve_backend(backend: str, device: str) -> str:
    """The data-parallel backend for run.backend on a 'cuda' or 'cpu' device.

    'mpi4py' is the toolkit's own MPI engine for gradients (ddc_hpc.engine); torch.distributed
    then runs over gloo for the small bookkeeping reductions (metrics, stop flags).
    """
    if backend == "auto":
        if dist.is_mpi_available():
            return "mpi"
        return "nccl" if device == "cuda" else "gloo"
    if backend == "mpi" and not dist.is_mpi_available():
        raise BadInput(
            "run.backend = 'mpi' but this torch has no MPI backend (PyPI wheels never do); use "
            "'auto', 'gloo', 'nccl', or 'mpi4py' (the toolkit's own MPI allreduce engine)"
        )
    if backend == "nccl" and device != "cuda":
        raise BadInput("run.backend = 'nccl' needs GPUs; on CPUs use 'gloo', 'mpi4py' or 'auto'")
    return backend


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address


def ipv4_interfaces() -> dict[str, str]:
    """This host's non-loopback IPv4 address per network interface."""
    found = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                reply = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address on this interface
                continue
            address = socket.inet_ntoa(reply[20:24])
            if not address.startswith("127."):
                found[name] = address
    return found


def route_source(destination: str) -> str | None:
    """The local address the kernel's routing table picks to reach `destination` (a UDP
    connect sends no packet); None when there is no route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((destination, 9))
        except OSError:
            return None
        return s.getsockname()[0]


def rendezvous_host(world: World, master_addr: str | None) -> str | None:
    """Collective over `world`: the address its rank 0 offers for torch.distributed's rendezvous
    (None on the other ranks).

    `master_addr` (MASTER_ADDR) when given; 127.0.0.1 when every rank has this host's addresses;
    across nodes, rank 0's own address on its route to a rank of another node. Never rank 0's host
    name when it can be avoided: Debian-style /etc/hosts map it to 127.0.1.1 on that host, an
    address other hosts cannot reach.
    """
    seen = allgather(world, sorted(ipv4_interfaces().values()), "exchanging network addresses")
    if not world.is_root:
        return None
    if master_addr:
        return master_addr
    mine = set(seen[0])
    others = [addresses for addresses in seen[1:] if set(addresses) != mine]
    if not mine:  # no IPv4 address here (IPv6-only): the host name is all there is
        return socket.gethostname()
    if not others:  # one host
        return "127.0.0.1"
    for addresses in others:
        for peer in addresses:
            if route_source(peer) in mine:
                return route_source(peer)
    raise RuntimeError(f"rank 0 finds no route from its addresses {sorted(mine)} to the ranks on other nodes "
                       f"({sorted({a for s in seen for a in s} - mine)}); set MASTER_ADDR to an address of rank "
                       "0's node that every node reaches, and GLOO_SOCKET_IFNAME to the interface that carries it")


def gloo_interface(host: str) -> str | None:
    """The interface this rank reaches `host` through (None for a loopback or unknown host). Gloo
    otherwise binds to the address its host name resolves to (127.0.1.1 with Debian's
    /etc/hosts) and tells the peers that."""
    try:
        source = route_source(socket.gethostbyname(host))
    except OSError:
        return None
    return next((name for name, address in ipv4_interfaces().items() if address == source), None)


def _device_backends(backend: str) -> str:
    """torch.distributed's backend for each device type. NCCL carries CUDA tensors only, but the
    bookkeeping (metrics, stop flags, partial losses) reduces CPU tensors: those go over gloo.
    DDC_NCCL_STANDIN=gloo (tests on hosts without GPUs) registers gloo for CUDA tensors only, a
    backend that refuses CPU tensors exactly as NCCL does."""
    if backend == "nccl":
        return f"cpu:gloo,cuda:{os.environ.get('DDC_NCCL_STANDIN', 'nccl')}"
    return backend


def init_distributed(world: World, backend: str) -> str:
    """torch.distributed over `world` (the MPI world, or a sub-network's group from enter_sub_group);
    its rank 0 chooses the rendezvous and broadcasts it.

    Across nodes every rank binds gloo to the interface that reaches rank 0's address, unless
    GLOO_SOCKET_IFNAME says otherwise (NCCL chooses its interfaces itself: NCCL_SOCKET_IFNAME).
    """
    if dist.is_initialized():
        return dist.get_backend()
    whole = world.comm == MPI.COMM_WORLD
    backend = "gloo" if backend == "mpi4py" else backend
    if backend == "mpi" and not whole:  # torch's MPI process group always spans MPI_COMM_WORLD
        backend = "nccl" if world.device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=world.timeout)
    if backend == "mpi":
        dist.init_process_group("mpi", timeout=timeout)
        return backend
    env = os.environ if whole else {}  # MASTER_ADDR/PORT name the world's rendezvous; a group picks its own
    host = rendezvous_host(world, env.get("MASTER_ADDR"))
    address = (host, int(env.get("MASTER_PORT") or _free_port())) if world.is_root else None
    host, port = bcast(world, address, "broadcasting the torch.distributed rendezvous")
    if not os.environ.get("GLOO_SOCKET_IFNAME"):
        interface = gloo_interface(host)
        if interface:
            os.environ["GLOO_SOCKET_IFNAME"] = interface
    dist.init_process_group(
        _device_backends(backend), init_method=f"tcp://{host}:{port}", rank=world.rank, world_size=world.size,
        timeout=timeout,
    )
    return backend


def enter_sub_group(world: World, backend: str, ranks: list[int]) -> World:
    """The only world the sub phase gets: this rank's sub-network group `ranks`, and nothing wider.

    Alone (R <= K, `ranks` = [this rank]): MPI.COMM_SELF and no torch.distributed, so nobody can
    be reached, and any collective fails loudly: the toolkit's raise StrayCollective in phase 'sub'
    (as do those on the MPI world), torch's find no process group.  A data-parallel group (R > K):
    a communicator over `ranks` (made collectively by every rank, before phase 'sub') and
    torch.distributed initialised over the group alone: its default process group is the group,
    and no world-wide one exists until leave_sub_group has ended it.
    """
    if list(ranks) == [world.rank]:
        return dataclasses.replace(world, comm=MPI.COMM_SELF, rank=0, size=1, collectives=collections.Counter())
    group = dataclasses.replace(data_parallel_world(world, ranks), subnet_group=True)
    init_distributed(group, backend)
    return group


def leave_sub_group(group: World) -> None:
    """End the sub phase's torch.distributed and communicator (the global phases make the world's)."""
    shutdown_distributed()
    free_world(group)


def stray_point(world: World) -> None:
    """Test hook: DDC_STRAY=<phase>[:torch] makes that phase run one collective it must not: a
    barrier on `world`, or (`torch`) a torch.distributed all_reduce on the default process group."""
    phase, _, kind = os.environ.get("DDC_STRAY", "").partition(":")
    if phase != _phase:
        return
    if kind == "torch":
        dist.all_reduce(torch.zeros(1))
    else:
        barrier(world, "a stray barrier (DDC_STRAY)")


def group_size(group=None) -> int:
    return dist.get_world_size(group) if dist.is_initialized() else 1


def group_rank(group=None) -> int:
    return dist.get_rank(group) if dist.is_initialized() else 0


def all_reduce_sum(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """Sum over the group in place (a no-op without torch.distributed: a one-rank group)."""
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def all_gather_float(value: float, group=None) -> list[float]:
    """Every peer's scalar, in group-rank order (float64, so counts stay exact)."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return [float(value)]
    parts = [torch.zeros(1, dtype=torch.float64) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, torch.tensor([float(value)], dtype=torch.float64), group=group)
    return [p.item() for p in parts]


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ---- preemption ------------------------------------------------------------------------------

_stop_signal: int | None = None


def install_stop_handlers() -> None:
    """SIGUSR1 (SLURM's warning before the time limit) and SIGTERM only raise a flag; the training
    loop checkpoints at the next step boundary."""

    def handler(signum, _frame):
        global _stop_signal
        _stop_signal = signum

    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, handler)


def signal_point(job: str, epoch: int, step: int) -> None:
    """Test hooks after a training step (1-based epoch and step), as a cluster would do it:
    DDC_STOP_AT=<job>:<epoch>:<step> sends SIGUSR1 (SLURM's pre-timeout warning) to this rank;
    DDC_KILL_AT=<job>:<epoch>:<step>:<rank> SIGKILLs that rank; DDC_HANG_AT (same form) makes it
    hang there, alive and making no progress."""
    here = f"{job}:{epoch}:{step}"
    if os.environ.get("DDC_STOP_AT") == here:
        signal.raise_signal(signal.SIGUSR1)
    kill_at, _, rank = os.environ.get("DDC_KILL_AT", "").rpartition(":")
    if kill_at == here and _is_my_rank(rank):
        os.kill(os.getpid(), signal.SIGKILL)
    hang_at, _, rank = os.environ.get("DDC_HANG_AT", "").rpartition(":")
    while hang_at == here and _is_my_rank(rank):
        time.sleep(3600)


def nan_point(job: str, epoch: int, step: int) -> bool:
    """DDC_NAN_AT=<job>:<epoch>:<step>: make that step's loss NaN (numerical-fault tests)."""
    return os.environ.get("DDC_NAN_AT") == f"{job}:{epoch}:{step}"


def stop_requested() -> bool:
    return _stop_signal is not None


def any_stop_requested(group=None) -> bool:
    """True on every rank of the group if any rank got a stop signal (one tiny allreduce)."""
    flag = torch.tensor([1.0 if stop_requested() else 0.0])
    return bool(all_reduce_sum(flag, group).item() > 0)


def requeue() -> bool:
    """Under SLURM, put the job back in the queue; the requeued job resumes from its out dir."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if result.returncode:
        print(f"rank 0: scontrol requeue {job} failed: {result.stderr.strip()}", file=sys.stderr, flush=True)
    else:
        print(f"rank 0: requeued SLURM job {job}; it will resume from its checkpoints", file=sys.stderr, flush=True)
    return result.returncode == 0


def _leave_after_stop(comm: MPI.Comm, rank: int) -> None:
    """Every rank stopped at the same point: leave MPI cleanly, then rank 0 requeues — but only
    for SIGUSR1 (the --signal warning before the time limit); SIGTERM is a user's scancel."""
    shutdown_distributed()
    request, deadline = comm.Ibarrier(), time.monotonic() + 60
    while not request.Test() and time.monotonic() < deadline:
        time.sleep(0.01)
    if request.Test():
        MPI.Finalize()
    if rank == 0 and _stop_signal == signal.SIGUSR1:
        requeue()


def restart_count() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


# ---- fail fast -------------------------------------------------------------------------------

def run_guarded(main, debug: bool = False, log=None) -> None:
    """Run main(); any exception on any rank ends the whole job with the rank and cause named.

    Exit 0 done, 2 bad input, 75 preempted (checkpoint written), 1 anything else. A failure that
    other ranks cannot know about is turned into MPI Abort, so nobody waits in a collective.
    """
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
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
    except Preempted as err:
        code, abort = EXIT_PREEMPTED, False
        print(f"rank {rank}: {err}", file=sys.stderr, flush=True)
        _leave_after_stop(comm, rank)
    except BaseException as err:  # noqa: BLE001 - the whole point is to catch everything
        code = 130 if isinstance(err, KeyboardInterrupt) else 1
        detail = traceback.format_exc()
        if log is not None:
            log(detail)
        print(f"rank {rank}: {type(err).__name__} in phase {_phase!r}: {err}", file=sys.stderr, flush=True)
        if debug or size == 1:
            print(detail, file=sys.stderr, flush=True)
    if abort and code != 0:
        sys.stderr.flush()
        comm.Abort(code)
    shutdown_distributed()
    sys.exit(code)


# ---- MPI-native data parallel (run.backend = "mpi4py") ----------------------------------------
# engine.MPIDataParallel keeps the hooks and buckets and makes no MPI call of its own: these are
# its only ones. Gradients travel in one Iallreduce per bucket, on a communicator of their own;
# every wait has the same deadline as the collectives above (run.collective_timeout), and polls
# with short sleeps, so a rank that is early yields its core to oversubscribed peers and still
# drives MPI's progress engine (MPICH has no progress thread by default).

def group_ranks(group=None, world: World | None = None) -> list[int]:
    """World ranks of a torch.distributed group (None: the whole world)."""
    if group is not None:
        return list(dist.get_process_group_ranks(group))
    return list(range(world.size if world is not None else MPI.COMM_WORLD.Get_size()))


def data_parallel_world(world: World, ranks: list[int] | None = None) -> World:
    """This world on a private communicator over `ranks` (default all): only members call this.

    The engine's nonblocking collectives then never interleave with the pipeline's own; they are
    counted in the new world's own `collectives` (as DDP's traffic is not counted in the world's:
    a sub phase trained data parallel inside groups still shows no world collective).
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
    return dataclasses.replace(world, comm=private, rank=private.Get_rank(), size=private.Get_size(),
                               collectives=collections.Counter())


def start_allreduce(world: World, buffer: np.ndarray) -> MPI.Request:
    """Sum `buffer` over the world in place (nonblocking); complete it with wait_all."""
    return world.comm.Iallreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)


def start_bcast(world: World, buffer: np.ndarray, root: int = 0) -> MPI.Request:
    """Root's `buffer` into every rank's `buffer` (nonblocking); complete it with wait_all."""
    return world.comm.Ibcast(buffer, root=root)


def progress(requests: list) -> bool:
    """Poke MPI's progress engine for pending requests; True when all are complete."""
    return bool(MPI.Request.Testall(requests)) if requests else True


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
    if _phase == "sub" and not world.subnet_group:
        raise StrayCollective(f"{what}: a collective in the sub phase, on a communicator of {world.size} rank(s) "
                              "that is not a sub-network's group (the sub phase has no communication between "
                              "sub-networks)")
    world.collectives[_phase] += len(requests)
    timeout = world.timeout if timeout is None else timeout
    start = time.monotonic()
    deadline = start + timeout
    pause = 1e-5
    while not MPI.Request.Testall(requests):
        now = time.monotonic()
        if now > deadline:
            err = CollectiveTimeout(
                f"{what} in phase {_phase!r} did not complete within {timeout:g} s: another rank "
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
    if world.comm not in (MPI.COMM_WORLD, MPI.COMM_SELF, MPI.COMM_NULL):
        world.comm.Free()
