"""Issue 21 item 2: the address rank 0 offers for torch.distributed's rendezvous, a pure choice over
made-up address sets (tests/test_multinode.py runs the real thing over two network namespaces).

A bridge that every node has (docker0 172.17.0.1, libvirt's virbr0 192.168.122.1) routes back to
the node itself: offered, it makes every peer connect to its own bridge."""

from __future__ import annotations

import pytest
import torch

from ddc_hpc import comm
from ddc_hpc.comm import choose_rendezvous, named_interfaces

DOCKER, VIRBR = "172.17.0.1", "192.168.122.1"
NODE0 = {"docker0": DOCKER, "eth0": "192.168.5.10", "ib0": "10.1.0.10"}


def _route(table: dict):
    """A routing table: destination -> the local source address (None: no route)."""
    return table.get


def test_a_bridge_every_node_has_is_never_offered(monkeypatch):
    """The issue's case, through rendezvous_host as the pipeline calls it."""
    node0, node1 = [DOCKER, "192.168.5.10"], [DOCKER, "192.168.5.11"]
    monkeypatch.setattr(comm.distributed, "allgather", lambda world, value, what: [node0, node0, node1, node1])
    monkeypatch.setattr(comm.distributed, "route_source", _route({DOCKER: DOCKER, "192.168.5.11": "192.168.5.10"}))
    for name in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        monkeypatch.delenv(name, raising=False)
    world = comm.World(rank=0, size=4, local_rank=0, local_size=2, device=torch.device("cpu"))
    assert comm.rendezvous_host(world, None) == "192.168.5.10"


def test_shared_bridges_are_skipped_on_every_peer_and_a_missing_route_is_named():
    mine = [DOCKER, VIRBR, "10.0.0.5"]
    peers = [mine, [DOCKER, VIRBR, "10.0.0.6"], [VIRBR, "10.0.0.7"]]
    route = _route({DOCKER: DOCKER, VIRBR: VIRBR, "10.0.0.6": "10.0.0.5", "10.0.0.7": "10.0.0.5"})
    assert choose_rendezvous(mine, peers, route) == "10.0.0.5"
    with pytest.raises(RuntimeError, match=r"no route .*'172.17.0.1', '192.168.122.1'\] are on every node .*MASTER_ADDR"):
        choose_rendezvous(mine, peers, _route({DOCKER: DOCKER, VIRBR: VIRBR}))


def test_one_host_master_addr_and_no_ipv4():
    assert choose_rendezvous([DOCKER, "10.0.0.5"], [[DOCKER, "10.0.0.5"]] * 3, _route({})) == "127.0.0.1"
    assert choose_rendezvous([DOCKER], [[DOCKER, "10.0.0.6"]], _route({}), master_addr="head") == "head"
    assert choose_rendezvous([], [[]], _route({}), hostname="this-host") == "this-host"


def test_the_interface_the_user_names_is_the_one_offered():
    peers = [[DOCKER, "192.168.5.11", "10.1.0.11"]]
    route = _route({"192.168.5.11": "192.168.5.10", "10.1.0.11": "10.1.0.10"})
    mine = sorted(NODE0.values())
    ib = named_interfaces(NODE0, "ib0", None)
    assert ib == ["10.1.0.10"] and choose_rendezvous(mine, peers, route, named=ib) == "10.1.0.10"
    assert choose_rendezvous(mine, peers, route, master_addr="head", named=ib) == "head"  # MASTER_ADDR first
    assert named_interfaces(NODE0, "eth1,ib0", "eth0") == ["10.1.0.10"]  # gloo's exact names win over NCCL's
    assert named_interfaces(NODE0, None, "=eth0") == ["192.168.5.10"]  # NCCL: exact
    assert named_interfaces(NODE0, None, "e,i") == ["192.168.5.10", "10.1.0.10"]  # NCCL: prefixes
    everything_but_docker = named_interfaces(NODE0, None, "^docker,lo")  # NCCL: excluded prefixes
    assert everything_but_docker == ["192.168.5.10", "10.1.0.10"]
    assert choose_rendezvous(mine, peers, route, named=everything_but_docker) == "10.1.0.10"  # by route
    assert named_interfaces(NODE0, None, None) is None
    with pytest.raises(RuntimeError, match="name no interface with an IPv4 address on rank 0's node"):
        choose_rendezvous(mine, peers, route, named=named_interfaces(NODE0, "wlan0", None))


def test_rendezvous_host_reads_the_interface_settings(monkeypatch):
    node1 = [DOCKER, "192.168.5.11", "10.1.0.11"]
    monkeypatch.setattr(comm.distributed, "allgather", lambda world, value, what: [sorted(NODE0.values()), node1])
    monkeypatch.setattr(comm.distributed, "ipv4_interfaces", lambda: dict(NODE0))
    monkeypatch.setattr(comm.distributed, "route_source", _route({"192.168.5.11": "192.168.5.10",
                                                                  "10.1.0.11": "10.1.0.10"}))
    world = comm.World(rank=0, size=2, local_rank=0, local_size=1, device=torch.device("cpu"))
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "ib")
    assert comm.rendezvous_host(world, None) == "10.1.0.10"
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth0")
    assert comm.rendezvous_host(world, None) == "192.168.5.10"
