"""The lab cluster's network on its own (no Kubernetes binaries needed): namespaces, links,
routes between control plane, nodes and client, and the loopback forwarder — all without a
change to the root namespace."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from kubekit import in_netns, root_state, session_objects, state_diff

from pytest_dataplane.providers.lab._session import Session
from pytest_dataplane.providers.lab.cleanup import remove_session
from pytest_dataplane.providers.lab.kube.forward import Forwarder
from pytest_dataplane.providers.lab.kube.plan import KubePlan
from pytest_dataplane.providers.lab.kube.topology import KubeTopology
from pytest_dataplane.providers.lab.netns import bridge_mac

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

ECHO = (
    "import socket,sys\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8); print('up', flush=True)\n"
    "while True:\n"
    "    c,a=s.accept(); c.sendall(('from %s\\n' % a[0]).encode()); c.close()\n"
)


@pytest.fixture
def network() -> Iterator[tuple[KubePlan, Session]]:
    session = Session.new()
    plan = KubePlan(f"{session.prefix}-net", block=3, nodes=2)
    topology = KubeTopology(plan)
    try:
        topology.create()
        yield plan, session
    finally:
        topology.destroy()
        remove_session(session.prefix)


def _echo_server(netns: str, address: str, port: int) -> subprocess.Popen[str]:
    server = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", ECHO, address, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "up"  # listening before anyone connects
    return server


def _stop(server: subprocess.Popen[str]) -> None:
    server.kill()
    server.wait()
    if server.stdout is not None:
        server.stdout.close()


def _connect(netns: str, address: str, port: int) -> str:
    code = (
        "import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), 5);"
        "print(s.recv(100).decode().strip())"
    )
    return in_netns(netns, sys.executable, "-c", code, address, str(port)).strip()


def test_every_namespace_reaches_the_control_plane_and_nodes(network) -> None:
    plan, _ = network
    server = _echo_server(plan.cp_netns, "0.0.0.0", 6443)
    try:
        # The nodes and the client reach the API server's address; the client's traffic
        # keeps its own source address (routed through node 0, not masqueraded).
        assert _connect(plan.node_netns(0), plan.cp_ip, 6443) == f"from {plan.node_ip(0)}"
        assert _connect(plan.node_netns(1), plan.cp_ip, 6443) == f"from {plan.node_ip(1)}"
        assert _connect(plan.client_netns, plan.cp_ip, 6443) == f"from {plan.client_ip}"
    finally:
        _stop(server)
    # A "pod" address on node 1's bridge is reachable from the client and the cp namespace.
    pod = _echo_server(plan.node_netns(1), plan.pod_gateway(1), 8080)
    try:
        assert _connect(plan.client_netns, plan.pod_gateway(1), 8080) == f"from {plan.client_ip}"
        assert _connect(plan.cp_netns, plan.pod_gateway(1), 8080) == f"from {plan.cp_ip}"
        assert _connect(plan.node_netns(0), plan.pod_gateway(1), 8080) == f"from {plan.node_ip(0)}"
    finally:
        _stop(pod)


def test_forwarder_reaches_the_cp_loopback_from_the_root_namespace(network) -> None:
    plan, _ = network
    server = _echo_server(plan.cp_netns, "127.0.0.1", 6443)
    forwarder = Forwarder(plan.cp_netns, ("127.0.0.1", 6443)).start()
    try:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", forwarder.port), timeout=5) as conn:
                assert conn.recv(100).decode().strip() == "from 127.0.0.1"
        # Nothing listens on that port in the root namespace but the forwarder itself: a
        # direct connection to the cp loopback port from here fails.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", 6443), timeout=2).close()
    finally:
        forwarder.close()
        _stop(server)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", forwarder.port), timeout=2).close()


def test_the_network_leaves_the_root_namespace_alone() -> None:
    before = root_state()
    session = Session.new()
    plan = KubePlan(f"{session.prefix}-net", block=4, nodes=3)
    topology = KubeTopology(plan)
    try:
        topology.create()
        during = root_state()
        assert state_diff(before, during) == {}
        assert {n for n in session_objects(session.prefix) if n.startswith("netns:")} == {
            f"netns:{plan.cp_netns}",
            f"netns:{plan.client_netns}",
            *(f"netns:{plan.node_netns(i)}" for i in range(3)),
        }
    finally:
        assert topology.destroy() == []
        remove_session(session.prefix)
    assert session_objects(session.prefix) == set()
    assert state_diff(before, root_state()) == {}


def test_bridges_keep_their_own_mac(network) -> None:
    """A bridge without a MAC of its own takes its lowest port's and changes it when that port
    leaves, which strands pods holding the old one as their gateway's: every bridge of the
    cluster gets a fixed MAC at creation, and keeps it when a port comes and goes."""
    plan, _ = network
    bridges = [(plan.cp_netns, "kbr0", plan.cp_ip)] + [
        (plan.node_netns(i), "cbr0", plan.pod_gateway(i)) for i in range(plan.nodes)
    ]
    for netns_name, bridge, address in bridges:
        mac = bridge_mac(address)
        show = ["ip", "-n", netns_name, "-br", "link", "show", bridge]
        assert mac in subprocess.run(show, check=True, capture_output=True, text=True).stdout
        # a port whose MAC sorts below the bridge's comes and goes
        add = ["ip", "-n", netns_name, "link", "add", "dptlow0", "address", "02:00:00:00:00:01"]
        subprocess.run([*add, "type", "veth", "peer", "name", "dptlow1"], check=True)
        subprocess.run(
            ["ip", "-n", netns_name, "link", "set", "dptlow0", "master", bridge], check=True
        )
        subprocess.run(["ip", "-n", netns_name, "link", "del", "dptlow0"], check=True)
        assert mac in subprocess.run(show, check=True, capture_output=True, text=True).stdout
