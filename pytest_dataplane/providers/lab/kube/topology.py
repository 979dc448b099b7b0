"""Creates and removes the cluster's namespaces and links (see :mod:`.plan` for the layout).

Everything is made with netlink (pyroute2) from threads that entered the namespace at hand;
every link has both ends in the session's namespaces, so the root namespace gains nothing,
not even a veth end.
"""

from __future__ import annotations

import os
from typing import Any

from ....errors import DataplaneError
from .. import netns
from .._proc import NETNS_DIR
from .plan import CLIENT_GATEWAY, KubePlan

NODE_BRIDGE = "kbr0"  # the node network's bridge, in the cp namespace
POD_BRIDGE = "cbr0"  # each node's pod bridge


def _add_veth(ipr: Any, ifname: str, peer_netns: str, peer_ifname: str) -> None:
    fd = os.open(f"{NETNS_DIR}/{peer_netns}", os.O_RDONLY)
    try:
        ipr.link("add", ifname=ifname, kind="veth", peer={"ifname": peer_ifname, "net_ns_fd": fd})
    finally:
        os.close(fd)


def _lo_up(ipr: Any) -> None:
    ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


class KubeTopology:
    """The control-plane, node and client namespaces of one cluster and the links between."""

    def __init__(self, plan: KubePlan) -> None:
        self.plan = plan
        self.created: list[str] = []

    def _create(self, name: str) -> None:
        if netns.exists(name):
            raise DataplaneError(f"network namespace {name} exists already")
        netns.create(name)
        self.created.append(name)

    def create(self) -> None:
        """Create every namespace, bridge, veth, address and route of the plan."""
        from pyroute2 import IPRoute

        plan = self.plan
        self._create(plan.cp_netns)
        for index in range(plan.nodes):
            self._create(plan.node_netns(index))
        self._create(plan.client_netns)

        def cp_side() -> None:
            with IPRoute() as ipr:
                _lo_up(ipr)
                ipr.link(
                    "add", ifname=NODE_BRIDGE, kind="bridge", address=netns.bridge_mac(plan.cp_ip)
                )
                bridge = ipr.link_lookup(ifname=NODE_BRIDGE)[0]
                ipr.addr("add", index=bridge, address=plan.cp_ip, prefixlen=24)
                ipr.link("set", index=bridge, state="up")
                for index in range(plan.nodes):
                    port = f"vn{index}"
                    _add_veth(ipr, port, plan.node_netns(index), "eth0")
                    link = ipr.link_lookup(ifname=port)[0]
                    ipr.link("set", index=link, master=bridge)
                    ipr.link("set", index=link, state="up")
                    ipr.route("add", dst=plan.pod_cidr(index), gateway=plan.node_ip(index))
                ipr.route("add", dst=plan.client_cidr, gateway=plan.node_ip(0))

        netns.in_netns(plan.cp_netns, cp_side)
        for index in range(plan.nodes):
            netns.in_netns(plan.node_netns(index), lambda i=index: self._node_side(i))  # type: ignore[misc]

        def client_side() -> None:
            with IPRoute() as ipr:
                _lo_up(ipr)
                eth0 = ipr.link_lookup(ifname="eth0")[0]
                ipr.addr("add", index=eth0, address=plan.client_ip, prefixlen=32)
                ipr.link("set", index=eth0, state="up")
                ipr.route("add", dst=f"{CLIENT_GATEWAY}/32", oif=eth0, scope=253)
                ipr.route("add", dst="0.0.0.0/0", gateway=CLIENT_GATEWAY)

        netns.in_netns(plan.client_netns, client_side)
        for index in range(plan.nodes):
            netns.set_sysctl(plan.node_netns(index), "net.ipv4.ip_forward", "1")
        # Node 0 answers ARP for the client's /32 peer without a shared subnet.
        netns.set_sysctl(plan.node_netns(0), "net.ipv4.conf.vc0.proxy_arp", "1")

    def _node_side(self, index: int) -> None:
        from pyroute2 import IPRoute

        plan = self.plan
        with IPRoute() as ipr:
            _lo_up(ipr)
            eth0 = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=eth0, address=plan.node_ip(index), prefixlen=24)
            ipr.link("set", index=eth0, state="up")
            ipr.link(
                "add",
                ifname=POD_BRIDGE,
                kind="bridge",
                address=netns.bridge_mac(plan.pod_gateway(index)),
            )
            bridge = ipr.link_lookup(ifname=POD_BRIDGE)[0]
            ipr.addr("add", index=bridge, address=plan.pod_gateway(index), prefixlen=24)
            ipr.link("set", index=bridge, state="up")
            for other in range(plan.nodes):
                if other != index:
                    ipr.route("add", dst=plan.pod_cidr(other), gateway=plan.node_ip(other))
            if index == 0:
                _add_veth(ipr, "vc0", plan.client_netns, "eth0")
                uplink = ipr.link_lookup(ifname="vc0")[0]
                ipr.addr("add", index=uplink, address=CLIENT_GATEWAY, prefixlen=32)
                ipr.link("set", index=uplink, state="up")
                ipr.route("add", dst=f"{plan.client_ip}/32", oif=uplink)
            else:
                ipr.route("add", dst=plan.client_cidr, gateway=plan.node_ip(0))

    def destroy(self, extra_prefixes: tuple[str, ...] = ()) -> list[str]:
        """Remove every namespace whose name starts with the cluster's prefix or one of
        ``extra_prefixes`` (the agents' pod namespaces); returns the errors met."""
        errors = []
        prefixes = (f"{self.plan.prefix}-", *extra_prefixes)
        try:
            names = sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefixes))
        except FileNotFoundError:
            names = []
        # Pods first, then clients and nodes, the control plane last.
        names.sort(key=lambda n: (n == self.plan.cp_netns, n in self.created))
        for name in names:
            try:
                netns.delete(name)
            except (OSError, DataplaneError) as exc:
                errors.append(f"{name}: {exc}")
        self.created.clear()
        return errors
