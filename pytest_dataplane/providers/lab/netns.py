"""Network namespaces for the lab: create, enter, delete, and wire a pod to its node's bridge.

Everything lives in namespaces named after the session prefix; nothing is created in the root
namespace, not even veth ends. The cluster's own layout (control-plane, node and client
namespaces, bridges, routes) is :mod:`.kube.topology`'s; the node agent adds pods with
:func:`add_pod_netns`.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ..._host import NETNS_DIR
from . import _proc

T = TypeVar("T")


def bridge_mac(ip: str) -> str:
    """A bridge's own MAC, set once at creation: 0a:58 and its IPv4 address, a locally
    administered unicast address as CNI plugins derive them.

    A bridge created without one takes the lowest MAC among its ports and changes it when that
    port leaves; pods that cached the old one as their gateway's then lose their packets until
    they ask again (the lab's scale-down race).
    """
    octets = (int(part) for part in ip.split("."))
    return "0a:58:" + ":".join(f"{octet:02x}" for octet in octets)


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
