"""The lab's network: a node namespace with a bridge, pod namespaces on it, a client namespace.

::

    client ns               node ns                                 pod ns (one per pod)
    eth0 10.B.1.1/32  ---  vc0 169.254.1.1     cbr0 10.B.0.1/24 --- vp<n> === eth0 10.B.0.x/24
        default via            ip_forward=1,   (bridge)                  default via 10.B.0.1
        169.254.1.1            proxier rules

The cluster's pod CIDR is 10.B.0.0/16: the node's pods use 10.B.0.0/24, the client is a pod
of "another node" (10.B.1.1), so its traffic is not masqueraded, as between real pods, and
background endpoints use addresses of further "nodes" (10.B.64.0 upwards). The client
reaches a service VIP by routing through the node namespace, where the proxier's rules
(iptables / nftables) translate it, as for a pod on another node; with the eBPF dataplane
the client's connect() is already translated and the node only routes. Pods sit on the
node's bridge like kubenet pods. Everything lives in namespaces named after the
session prefix; nothing is created in the root namespace, not even veth ends.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..._host import NETNS_DIR
from ...errors import DataplaneError
from . import _proc

T = TypeVar("T")
GATEWAY = "169.254.1.1"
MAX_PODS = 253


def bridge_mac(ip: str) -> str:
    """A bridge's own MAC, set once at creation: 0a:58 and its IPv4 address, a locally
    administered unicast address as CNI plugins derive them.

    A bridge created without one takes the lowest MAC among its ports and changes it when that
    port leaves; pods that cached the old one as their gateway's then lose their packets until
    they ask again (the lab's scale-down race).
    """
    octets = (int(part) for part in ip.split("."))
    return "0a:58:" + ":".join(f"{octet:02x}" for octet in octets)


@dataclass(frozen=True)
class AddressPlan:
    """Address blocks of one lab session, derived from its block number (0-63)."""

    block: int

    @property
    def pod_cidr(self) -> str:
        return f"10.{64 + self.block}.0.0/16"

    @property
    def bridge_ip(self) -> str:
        return f"10.{64 + self.block}.0.1"

    @property
    def bridge_mac(self) -> str:
        return bridge_mac(self.bridge_ip)

    @property
    def client_ip(self) -> str:
        return f"10.{64 + self.block}.1.1"

    @property
    def service_cidr(self) -> str:
        return f"10.{128 + self.block}.0.0/16"

    def pod_ip(self, slot: int) -> str:
        """Address of the pod in ``slot`` (0-252) of the node's /24: 10.B.0.2 upwards."""
        if not 0 <= slot < MAX_PODS:
            raise DataplaneError(f"pod slot {slot} out of the node's range (0-{MAX_PODS - 1})")
        return f"10.{64 + self.block}.0.{2 + slot}"

    def phantom_ip(self, index: int) -> str:
        """Address of a background endpoint (no process behind it): 10.B.64.0-10.B.127.255."""
        index %= 64 * 256
        return f"10.{64 + self.block}.{64 + index // 256}.{index % 256}"

    def service_ip(self, index: int) -> str:
        """Cluster IP number ``index``: 10.S.0.10 upwards (65,000 of them)."""
        network = ipaddress.ip_network(self.service_cidr)
        if not 0 <= index < network.num_addresses - 20:
            raise DataplaneError(f"service index {index} out of the lab's service range")
        return str(network.network_address + 10 + index)


_CLONE_NEWNET = 0x40000000


def _netns_path(name: str) -> str:
    return f"{NETNS_DIR}/{name}"


def exists(name: str) -> bool:
    """Whether network namespace ``name`` exists."""
    return os.path.exists(_netns_path(name))


def create(name: str) -> None:
    """Create network namespace ``name`` (``ip netns add``)."""
    _proc.run(["ip", "netns", "add", name])


def delete(name: str) -> None:
    """Delete network namespace ``name`` if it exists (``ip netns delete``)."""
    if exists(name):
        _proc.run(["ip", "netns", "delete", name])


def in_netns(name: str, work: Callable[[], T]) -> T:
    """Run ``work()`` in a thread that has entered network namespace ``name``.

    setns() moves only the calling thread, so netlink sockets opened by ``work`` live in
    ``name`` while the rest of the process stays where it is. This avoids forking a
    multi-threaded Python process, which is what pyroute2's own NetNS helpers do.
    """
    outcome: dict[str, Any] = {}

    def body() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(_netns_path(name), os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    error = ctypes.get_errno()
                    raise OSError(error, f"setns into {name}: {os.strerror(error)}")
            finally:
                os.close(fd)
            outcome["value"] = work()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=body, name=f"netns-{name}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


def set_sysctl(netns: str, key: str, value: str) -> None:
    """Set a per-namespace sysctl inside ``netns`` (never the root namespace's)."""
    path = "/proc/sys/" + key.replace(".", "/")
    _proc.run(["sh", "-c", f"echo {value} > {path}"], netns=netns)


class Topology:
    """Creates and removes the session's namespaces and links (pyroute2 / netlink)."""

    def __init__(self, prefix: str, plan: AddressPlan) -> None:
        self.prefix = prefix
        self.plan = plan
        self.node = f"{prefix}-node"
        self.client = f"{prefix}-client"
        self._pods: dict[str, str] = {}

    def create(self) -> None:
        """Create the node (with its bridge) and the client namespace."""
        from pyroute2 import IPRoute

        create(self.node)
        create(self.client)

        def node_side() -> None:
            with IPRoute() as node:
                node.link("set", index=node.link_lookup(ifname="lo")[0], state="up")
                # A bridge whose address was never set takes the lowest of its ports'
                # addresses and changes it when that port goes. Pods hold the bridge's address
                # as their gateway's, so their frames would be dropped until their ARP entry
                # expires whenever a pod leaves: give the bridge an address of its own.
                node.link("add", ifname="cbr0", kind="bridge", address=self.plan.bridge_mac)
                bridge = node.link_lookup(ifname="cbr0")[0]
                node.addr("add", index=bridge, address=self.plan.bridge_ip, prefixlen=24)
                node.link("set", index=bridge, state="up")
                _add_veth(node, "vc0", self.client)
                uplink = node.link_lookup(ifname="vc0")[0]
                node.addr("add", index=uplink, address=GATEWAY, prefixlen=32)
                node.link("set", index=uplink, state="up")
                node.route("add", dst=f"{self.plan.client_ip}/32", oif=uplink)

        def client_side() -> None:
            with IPRoute() as client:
                client.link("set", index=client.link_lookup(ifname="lo")[0], state="up")
                eth0 = client.link_lookup(ifname="eth0")[0]
                client.addr("add", index=eth0, address=self.plan.client_ip, prefixlen=32)
                client.link("set", index=eth0, state="up")
                client.route("add", dst=f"{GATEWAY}/32", oif=eth0, scope=253)
                client.route("add", dst="0.0.0.0/0", gateway=GATEWAY)

        in_netns(self.node, node_side)
        in_netns(self.client, client_side)
        set_sysctl(self.node, "net.ipv4.ip_forward", "1")
        # The gateway answers ARP for the client's /32 peer without a shared subnet.
        set_sysctl(self.node, "net.ipv4.conf.vc0.proxy_arp", "1")

    def add_pod(self, pod: str, slot: int) -> tuple[str, str]:
        """Create pod namespace ``<prefix>-<pod>`` on the bridge in address ``slot``;
        returns (netns, ip)."""
        name = f"{self.prefix}-{pod}"
        ip = self.plan.pod_ip(slot)
        self._pods[pod] = name
        add_pod_netns(
            name,
            node_netns=self.node,
            bridge="cbr0",
            veth=f"vp{slot}",
            ip=ip,
            prefixlen=24,
            gateway=self.plan.bridge_ip,
        )
        return name, ip

    def remove_pod(self, pod: str) -> None:
        """Remove a pod's namespace (its veth goes with it)."""
        delete(self._pods.pop(pod, f"{self.prefix}-{pod}"))

    def destroy(self) -> list[str]:
        """Remove every namespace of the session; returns the errors met (best effort)."""
        errors = []
        for name in [*self._pods.values(), self.client, self.node]:
            try:
                delete(name)
            except (
                OSError,
                DataplaneError,
            ) as exc:  # keep going: leave as little as possible behind
                errors.append(f"{name}: {exc}")
        self._pods.clear()
        return errors


def add_pod_netns(
    name: str,
    *,
    node_netns: str,
    bridge: str,
    veth: str,
    ip: str,
    prefixlen: int,
    gateway: str,
) -> None:
    """Create pod namespace ``name`` wired to ``bridge`` in ``node_netns``.

    The pod gets ``eth0`` with ``ip/prefixlen`` and a default route via ``gateway``; its
    peer, ``veth``, is enslaved to the bridge in the node namespace. Removing the pod
    namespace (:func:`delete`) removes both ends.
    """
    from pyroute2 import IPRoute

    create(name)

    def node_side() -> None:
        with IPRoute() as node:
            _add_veth(node, veth, name)
            host = node.link_lookup(ifname=veth)[0]
            node.link("set", index=host, master=node.link_lookup(ifname=bridge)[0])
            node.link("set", index=host, state="up")

    def pod_side() -> None:
        with IPRoute() as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
            eth0 = ns.link_lookup(ifname="eth0")[0]
            ns.addr("add", index=eth0, address=ip, prefixlen=prefixlen)
            ns.link("set", index=eth0, state="up")
            ns.route("add", dst="0.0.0.0/0", gateway=gateway)

    in_netns(node_netns, node_side)
    in_netns(name, pod_side)


def _add_veth(ipr: Any, ifname: str, peer_netns: str) -> None:
    """Add veth ``ifname`` here with its ``eth0`` end in ``peer_netns``."""
    fd = os.open(_netns_path(peer_netns), os.O_RDONLY)
    try:
        ipr.link("add", ifname=ifname, kind="veth", peer={"ifname": "eth0", "net_ns_fd": fd})
    finally:
        os.close(fd)
