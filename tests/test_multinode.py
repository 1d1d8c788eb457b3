"""Two hosts on one machine (issue 12, item 8): the 4-rank pipeline over 2 Linux network namespaces.

Each "node" is a network namespace with its own address on a private /24 (joined by one veth pair,
so traffic only flows between those two addresses), its own host name (a UTS namespace per
process) and its own /etc/hosts (`ip netns exec` bind-mounts /etc/netns/<ns>/hosts), written the
way Debian does: the node's own name is 127.0.1.1, the other node's name is its veth address.
MPICH's hydra starts the ranks as on a cluster: mpiexec on the first node, a hydra proxy per node
through an ssh-style launcher (`-launcher ssh -launcher-exec`) that runs `ip netns exec`.

This catches what breaks across hosts and never on one: a rendezvous or gloo address that is a host
name resolving to 127.0.1.1, the interface choice, local ranks per node. Needs root and iproute2;
elsewhere the tests skip, unless DDC_REQUIRE_MULTINODE=1 (CI), where that is a failure. Everything
made is removed afterwards, also after a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY, job, results, sets, unavailable
from ddc_hpc import comm

HOSTS = ("ddc-node0", "ddc-node1")
RANKS_PER_HOST = 2
SUBNET = "10.213.0"  # only inside the two namespaces: the veth pair is their only link

CHECK = """
import json, os, socket, torch
from ddc_hpc import comm
world = comm.configure_world(comm.init_world(), "auto", 120)
comm.init_distributed(world, "gloo")
total = comm.all_reduce_sum(torch.tensor([float(world.rank)]))
row = {"rank": world.rank, "host": socket.gethostname(), "local_rank": world.local_rank,
       "local_size": world.local_size, "device": str(world.device), "sum": total.item(),
       "gloo_interface": os.environ.get("GLOO_SOCKET_IFNAME")}
rows = comm.allgather(world, row, "collecting the rows")  # one printer: ranks' lines would interleave
if world.is_root:
    print("\\n".join("CHECK " + json.dumps(r) for r in rows), flush=True)
comm.shutdown_distributed()
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


class Cluster:
    """Two namespaces joined by a veth pair; `launch` runs mpiexec on the first as a cluster would."""

    def __init__(self, tmp: Path):
        tag = f"ddc{os.getpid() % 100000}"  # unique per test session; interface names <= 15 chars
        self.namespaces = [f"{tag}n{i}" for i in range(len(HOSTS))]
        self.interfaces = [f"{tag}v{i}" for i in range(len(HOSTS))]
        self.addresses = [f"{SUBNET}.{i + 1}" for i in range(len(HOSTS))]
        self.launcher = tmp / "netns-launcher"

    def up(self) -> None:
        for ns in self.namespaces:
            _ip("netns", "add", ns)
        _ip("link", "add", self.interfaces[0], "type", "veth", "peer", "name", self.interfaces[1])
        for i, (ns, dev, host) in enumerate(zip(self.namespaces, self.interfaces, HOSTS)):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{self.addresses[i]}/24", "dev", dev)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up")
            hosts = ["127.0.0.1 localhost", f"127.0.1.1 {host}"]  # Debian's default for the own name
            hosts += [f"{a} {h}" for a, h in zip(self.addresses, HOSTS) if h != host]
            etc = Path("/etc/netns") / ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text("\n".join(hosts) + "\n")
        cases = "\n".join(f"  {h}) ns={ns} ;;" for h, ns in zip(HOSTS, self.namespaces))
        self.launcher.write_text(f"""#!/bin/sh
# hydra's ssh-style launcher: $0 -x HOST COMMAND... runs COMMAND in HOST's namespace, named HOST
[ "$1" = -x ] && shift
host=$1; shift
case $host in
{cases}
  *) echo "netns-launcher: unknown host $host" >&2; exit 1 ;;
esac
exec ip netns exec "$ns" unshare --uts sh -c "hostname $host && exec $*"
""")
        self.launcher.chmod(0o755)

    def down(self) -> None:
        """Remove everything `up` made, whatever state it got to; end processes left in it."""
        for ns in self.namespaces:
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        subprocess.run(["ip", "link", "del", self.interfaces[0]], capture_output=True)  # if never moved
        try:
            Path("/etc/netns").rmdir()  # only when no other namespace has files there
        except OSError:
            pass

    def launch(self, *command: str, timeout: float = 400) -> subprocess.CompletedProcess:
        """`mpiexec -hosts node0:2,node1:2 -n 4 COMMAND` started on node0, with its name."""
        mpiexec = [shutil.which("mpiexec") or "mpiexec", "-launcher", "ssh", "-launcher-exec", str(self.launcher),
                   "-hosts", ",".join(f"{h}:{RANKS_PER_HOST}" for h in HOSTS),
                   "-n", str(RANKS_PER_HOST * len(HOSTS)), *command]
        wrapped = ["ip", "netns", "exec", self.namespaces[0], "unshare", "--uts", "sh", "-c",
                   f'hostname {HOSTS[0]} && exec "$@"', "sh", *mpiexec]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DDC_", "SLURM_", "PMI_", "MASTER_", "GLOO_", "NCCL_"))}
        env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
        return job(wrapped, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        unavailable("DDC_REQUIRE_MULTINODE", "the two-host harness makes network namespaces (ip netns), which needs root")
    missing = [b for b in ("ip", "unshare") if not shutil.which(b)]
    if missing:
        unavailable("DDC_REQUIRE_MULTINODE", f"{', '.join(missing)} not found (iproute2, util-linux)")
    made = Cluster(tmp_path_factory.mktemp("netns"))
    try:
        try:
            made.up()
        except subprocess.CalledProcessError as err:
            unavailable("DDC_REQUIRE_MULTINODE", f"network namespaces are not available here: `{' '.join(err.cmd)}` failed: {err.stderr.strip()}")
        yield made
    finally:
        made.down()


@pytest.mark.multinode
def test_torch_distributed_across_two_hosts(cluster, tmp_path):
    """MPI world over both hosts; gloo bound to the veth, not to the 127.0.1.1 of the host names."""
    script = tmp_path / "check.py"
    script.write_text(CHECK)
    done = cluster.launch(sys.executable, str(script), timeout=240)
    assert done.returncode == 0, done.stderr[-4000:] + done.stdout[-2000:]
    rows = sorted((json.loads(line[6:]) for line in done.stdout.splitlines() if line.startswith("CHECK ")),
                  key=lambda r: r["rank"])
    assert [r["host"] for r in rows] == [HOSTS[0]] * 2 + [HOSTS[1]] * 2
    assert [(r["local_rank"], r["local_size"]) for r in rows] == [(0, 2), (1, 2)] * 2
    assert {r["device"] for r in rows} == {"cpu"}
    assert [r["gloo_interface"] for r in rows] == [cluster.interfaces[0]] * 2 + [cluster.interfaces[1]] * 2
    assert {r["sum"] for r in rows} == {6.0}


@pytest.mark.multinode
def test_pipeline_across_two_hosts(cluster, tmp_path):
    out = tmp_path / "run"
    done = cluster.launch(sys.executable, "-m", "ddc_hpc.run", "--out", str(out),
                          *sets(*TINY, "run.strategy=ddc", "run.backend=gloo"))
    assert done.returncode == 0, done.stderr[-4000:] + done.stdout[-2000:]
    r = results(out)
    assert r["world_size"] == 4 and r["compose"]["max_rel_error"] <= 1e-4
    assert r["global"]["epochs"] == 1 and r["sub"]["reach_per_rank"] == [1] * len(r["sub"]["reach_per_rank"])
    placement = {}
    for rank in range(4):
        first = (out / "logs" / f"rank{rank}.log").read_text().splitlines()[0]
        host, local = re.search(r"on (\S+), local rank (\d) of 2", first).groups()
        placement[rank] = (host, int(local))
    assert placement == {0: (HOSTS[0], 0), 1: (HOSTS[0], 1), 2: (HOSTS[1], 0), 3: (HOSTS[1], 1)}


# ---- the choices behind it, without namespaces ------------------------------------------------

def _world(rank: int, size: int, local_size: int) -> comm.World:
    return comm.World(rank=rank, size=size, local_rank=rank % local_size, local_size=local_size,
                      device=torch.device("cpu"))


def test_rendezvous_is_loopback_on_one_host_and_master_addr_wins(monkeypatch):
    node0 = ["172.17.0.1", "192.168.5.10"]
    monkeypatch.setattr(comm.distributed, "allgather", lambda world, value, what: [node0] * 4)
    assert comm.rendezvous_host(_world(0, 4, 4), None) == "127.0.0.1"
    assert comm.rendezvous_host(_world(1, 4, 4), None) is None
    assert comm.rendezvous_host(_world(0, 4, 4), "head.cluster") == "head.cluster"
    monkeypatch.setattr(comm.distributed, "allgather", lambda world, value, what: [[]] * 4)  # IPv6 only: as before
    monkeypatch.setattr(comm.distributed.socket, "gethostname", lambda: "this-host")
    assert comm.rendezvous_host(_world(0, 4, 4), None) == "this-host"


def test_rendezvous_across_nodes_is_rank_0s_address_on_the_route_to_another_node(monkeypatch):
    """Not its host name; and not an address on a network the other nodes are not on."""
    node0 = ["172.17.0.1", "192.168.5.10"]  # docker bridge, cluster network
    seen = [node0, node0, ["192.168.5.11"], ["192.168.5.11"]]
    monkeypatch.setattr(comm.distributed, "allgather", lambda world, value, what: seen)
    monkeypatch.setattr(comm.distributed, "route_source", {"192.168.5.11": "192.168.5.10"}.get)
    assert comm.rendezvous_host(_world(0, 4, 2), None) == "192.168.5.10"
    assert comm.rendezvous_host(_world(0, 4, 2), "10.1.1.1") == "10.1.1.1"
    monkeypatch.setattr(comm.distributed, "route_source", lambda destination: None)
    with pytest.raises(RuntimeError, match="set MASTER_ADDR"):
        comm.rendezvous_host(_world(0, 4, 2), None)


def test_each_local_rank_takes_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    devices = [str(comm.world._pick_device("auto", local)) for local in range(4)]
    assert devices == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
