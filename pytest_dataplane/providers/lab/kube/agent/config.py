"""The node the agent runs: its configuration (the ``--node-config`` file) and the pod
addresses of its pod CIDR."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Final

from .....errors import DataplaneError

__all__ = ["NodeConfig", "PodAddresses", "veth_name"]

_PREFIX_RE: Final = re.compile(r"^[a-z0-9]{1,10}$")
_IFNAMSIZ: Final = 15


@dataclass(frozen=True)
class NodeConfig:
    """What one agent needs to know about its node (the ``--node-config`` JSON file)."""

    name: str  # the Node object's name
    netns: str  # the node's network namespace (with its bridge)
    bridge: str  # the bridge in the node namespace that pod veths attach to
    gateway: str  # the bridge's address: the pods' default route (inside pod_cidr)
    internal_ip: str  # the node's InternalIP
    pod_cidr: str  # the node's pod CIDR (IPv4): the agent allocates pod addresses in it
    prefix: str  # the session prefix: every namespace and veth the agent makes starts with it
    run_dir: str  # where pod logs go
    max_pods: int | None = None  # the Node's pod capacity; None: every address of pod_cidr

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name != "max_pods" and (not isinstance(value, str) or not value):
                raise ValueError(f"node config: {item.name} must be a non-empty string")
        if not _PREFIX_RE.match(self.prefix):
            raise ValueError(
                f"node config: prefix {self.prefix!r} is not accepted; accepted: 1-10 lower-case "
                "letters or digits (veth names are the prefix, 'v' and 5 hex digits: at most "
                f"{_IFNAMSIZ} characters)"
            )
        try:
            network = ipaddress.IPv4Network(self.pod_cidr)
        except ValueError:
            raise ValueError(
                f"node config: pod_cidr {self.pod_cidr!r} is not accepted; accepted: an IPv4 "
                "network such as 10.64.0.0/24"
            ) from None
        if not 12 <= network.prefixlen <= 30:
            raise ValueError(
                f"node config: pod_cidr {self.pod_cidr!r} is not accepted; accepted: a prefix "
                "length from /12 to /30"
            )
        try:
            gateway = ipaddress.IPv4Address(self.gateway)
            ipaddress.ip_address(self.internal_ip)
        except ValueError as exc:
            raise ValueError(f"node config: {exc}") from None
        if gateway not in network:
            raise ValueError(
                f"node config: gateway {self.gateway} is outside pod_cidr {self.pod_cidr}; the "
                "pods' default route must be on their own subnet"
            )
        if self.max_pods is not None and (
            isinstance(self.max_pods, bool) or not isinstance(self.max_pods, int)
        ):
            raise ValueError(f"node config: max_pods {self.max_pods!r} must be an integer")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NodeConfig:
        """Read a node config JSON file; a clear ValueError for a bad one."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"node config {os.fspath(path)!r}: cannot read it: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> NodeConfig:
        """A config from its JSON form, naming unknown and missing keys."""
        if not isinstance(data, dict):
            raise ValueError("node config: expected a JSON object")
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"node config: unknown keys {unknown}; accepted: {', '.join(sorted(known))}"
            )
        required = {item.name for item in fields(cls) if item.name != "max_pods"}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"node config: missing keys {missing}")
        return cls(**data)

    def to_json(self) -> str:
        """The JSON form :meth:`load` reads."""
        return json.dumps(asdict(self), indent=2)

    def pod_netns(self, pod_name: str, uid: str) -> str:
        """The network namespace of one pod: ``<prefix>-pod-<node>-<pod>-<uid[:8]>``.

        The uid part keeps a re-created pod of the same name (a StatefulSet's) apart from
        the one still terminating.
        """
        return f"{self.prefix}-pod-{self.name}-{pod_name[:100]}-{uid[:8]}"


class PodAddresses:
    """Pod addresses of a node's pod CIDR, handed out round-robin as host-local IPAM does
    (an address just freed is the last to be reused), without the network, broadcast and
    gateway addresses."""

    def __init__(self, cidr: str, gateway: str) -> None:
        self.network = ipaddress.IPv4Network(cidr)
        self._base = int(self.network.network_address)
        self._size = self.network.num_addresses
        self._excluded = {0, self._size - 1, int(ipaddress.IPv4Address(gateway)) - self._base}
        self._used: set[int] = set()
        self._next = 1

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    @property
    def capacity(self) -> int:
        """How many pod addresses the CIDR holds."""
        return self._size - len(self._excluded)

    @property
    def in_use(self) -> int:
        return len(self._used)

    def offset(self, ip: str) -> int:
        """The address's position in the CIDR (for names derived from it)."""
        return int(ipaddress.IPv4Address(ip)) - self._base

    def allocate(self) -> str:
        """The next free address; DataplaneError when the CIDR is full."""
        for step in range(self._size):
            candidate = (self._next + step) % self._size
            if candidate not in self._excluded and candidate not in self._used:
                self._used.add(candidate)
                self._next = (candidate + 1) % self._size
                return str(ipaddress.IPv4Address(self._base + candidate))
        raise DataplaneError(
            f"pod CIDR {self.network} is full: all {self.capacity} pod addresses are in use"
        )

    def reserve(self, ip: str) -> bool:
        """Take ``ip`` if it is a free pod address of the CIDR (a pod keeping its address)."""
        try:
            address = ipaddress.IPv4Address(ip)
        except ValueError:
            return False
        offset = int(address) - self._base
        if address not in self.network or offset in self._excluded or offset in self._used:
            return False
        self._used.add(offset)
        return True

    def release(self, ip: str) -> None:
        """Give ``ip`` back."""
        self._used.discard(self.offset(ip))


def veth_name(prefix: str, offset: int) -> str:
    """The node-side veth of the pod at ``offset`` in the pod CIDR: ``<prefix>v<hex>``."""
    name = f"{prefix}v{offset:x}"
    if len(name) > _IFNAMSIZ:
        raise DataplaneError(f"veth name {name!r} is longer than {_IFNAMSIZ} characters")
    return name
