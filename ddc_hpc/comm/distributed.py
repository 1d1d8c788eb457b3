"""The torch.distributed bootstrap from MPI: backend, rendezvous address, process groups and their reductions."""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import os
import socket
import struct

import torch
import torch.distributed as dist

from ..errors import BadInput
from . import faults, state
from .collectives import allgather, bcast, data_parallel_world, free_world
from .world import World


def resolve_backend(backend: str, device: str) -> str:
    """The data-parallel backend for run.backend on a 'cuda' or 'cpu' device.

    'auto' is NCCL on CUDA devices even when torch has an MPI backend: that one would reduce CUDA
    gradients only through a CUDA-aware MPI, which few sites build torch against; 'mpi' only when
    asked. On CPUs 'auto' is torch's MPI backend where it exists, else gloo.
    'mpi4py' is the toolkit's own MPI engine for gradients (ddc_hpc.engine); torch.distributed
    then runs over gloo for the small bookkeeping reductions (metrics, stop flags).
    """
    if backend == "auto":
        if device == "cuda":
            return "nccl"
        return "mpi" if dist.is_mpi_available() else "gloo"
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


def named_interfaces(interfaces: dict[str, str], gloo_ifname: str | None, nccl_ifname: str | None) -> list[str] | None:
    """The addresses of the interfaces the user named for the job's traffic, or None when none is named.

    GLOO_SOCKET_IFNAME first (comma-separated exact names, as gloo reads it), else NCCL_SOCKET_IFNAME
    as NCCL reads it: comma-separated name prefixes, `=` before the list for exact names, `^` for
    prefixes to exclude. An empty list: names given, but none of them is an IPv4 interface here.
    """
    if gloo_ifname:
        wanted = [n.strip() for n in gloo_ifname.split(",") if n.strip()]
        return [interfaces[n] for n in wanted if n in interfaces]
    if not nccl_ifname:
        return None
    spec = nccl_ifname.strip()
    exclude, exact = spec.startswith("^"), spec.lstrip("^").startswith("=")
    names = [n.strip() for n in spec.lstrip("^").lstrip("=").split(",") if n.strip()]

    def matches(name: str) -> bool:
        return any(name == n if exact else name.startswith(n) for n in names)

    return [address for name, address in sorted(interfaces.items()) if matches(name) != exclude]


def choose_rendezvous(mine: list[str], peers: list[list[str]], route, master_addr: str | None = None,
                      named: list[str] | None = None, hostname: str = "localhost") -> str:
    """The address rank 0 offers for the rendezvous (pure: every input explicit).

    `mine`: rank 0's IPv4 addresses; `peers`: every other rank's; `route(address)`: the local
    address the routing table picks to reach `address` (None: no route); `master_addr`: MASTER_ADDR;
    `named`: the addresses of the interfaces the user named (named_interfaces), None if none.

    MASTER_ADDR wins, then a named interface. On one host 127.0.0.1. Across nodes, rank 0's own
    address on its route to a peer of another node, never an address that rank 0 shares with such a
    peer: a bridge that every node has (docker0 172.17.0.1, virbr0 192.168.122.1) routes back to
    the node itself, so a peer would connect to its own bridge.
    """
    if master_addr:
        return master_addr
    others = [set(addresses) for addresses in peers if set(addresses) != set(mine)]
    if named is not None:
        if not named:
            raise RuntimeError("GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME name no interface with an IPv4 address on rank "
                               f"0's node (its addresses: {sorted(mine)}); name one of its interfaces, or set MASTER_ADDR")
        if len(named) == 1 or not others:
            return named[0]
    if not mine:  # no IPv4 address here (IPv6-only): the host name is all there is
        return hostname
    if not others:  # one host
        return "127.0.0.1"
    shared = set(mine) & set().union(*others)
    usable = set(named or mine) - shared
    for addresses in others:
        for peer in sorted(addresses - set(mine)):
            if (source := route(peer)) in usable:
                return source
    raise RuntimeError(f"rank 0 finds no route from its addresses {sorted(usable)} to the ranks on other nodes "
                       f"({sorted(set().union(*others) - set(mine))})" + (f"; {sorted(shared)} are on every node "
                       "(bridges) and are not used" if shared else "") + "; set MASTER_ADDR to an address of rank "
                       "0's node that every node reaches, and GLOO_SOCKET_IFNAME to the interface that carries it")


def rendezvous_host(world: World, master_addr: str | None) -> str | None:
    """Collective over `world`: the address its rank 0 offers for torch.distributed's rendezvous
    (None on the other ranks), chosen by choose_rendezvous from every rank's addresses.

    Never rank 0's host name when it can be avoided: Debian-style /etc/hosts map it to 127.0.1.1
    on that host, an address other hosts cannot reach.
    """
    seen = allgather(world, sorted(ipv4_interfaces().values()), "exchanging network addresses")
    if not world.is_root:
        return None
    named = None
    if os.environ.get("GLOO_SOCKET_IFNAME") or os.environ.get("NCCL_SOCKET_IFNAME"):
        named = named_interfaces(ipv4_interfaces(), os.environ.get("GLOO_SOCKET_IFNAME"),
                                 os.environ.get("NCCL_SOCKET_IFNAME"))
    return choose_rendezvous(seen[0], seen[1:], route_source, master_addr, named, socket.gethostname())


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
    A test's stand-in for NCCL (faults.nccl_standin: gloo registered for CUDA tensors only) refuses
    CPU tensors exactly as NCCL does."""
    if backend == "nccl":
        return f"cpu:gloo,cuda:{faults.nccl_standin()}"
    return backend


def init_distributed(world: World, backend: str) -> str:
    """torch.distributed over `world` (the MPI world, or a sub-network's group from enter_sub_group);
    its rank 0 chooses the rendezvous and broadcasts it.

    Across nodes every rank binds gloo to the interface that reaches rank 0's address, unless
    GLOO_SOCKET_IFNAME says otherwise (NCCL chooses its interfaces itself: NCCL_SOCKET_IFNAME).
    """
    if dist.is_initialized():
        return dist.get_backend()
    whole = world.comm == state.MPI.COMM_WORLD
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
        return dataclasses.replace(world, comm=state.MPI.COMM_SELF, rank=0, size=1)
    group = dataclasses.replace(data_parallel_world(world, ranks), subnet_group=True)
    init_distributed(group, backend)
    return group


def leave_sub_group(group: World) -> None:
    """End the sub phase's torch.distributed and communicator (the global phases make the world's)."""
    shutdown_distributed()
    free_world(group)


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


def wait_for_peers(group=None) -> None:
    """Return once every peer of the group has come here (one tiny all_reduce; nothing alone)."""
    all_reduce_sum(torch.zeros(1), group)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

