"""Planning a sync of the load balancer's maps: pure, no kernel.

The map layouts mirror the structs in ``bpf/lb4.c``; :func:`plan_sync` turns the services
as programmed and the services wanted into the map writes and deletes that take one to the
other, in an order that a concurrent ``connect()`` can never observe half-done;
:func:`decode_maps` reads map entries back into services.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from .._types import Endpoint, ServiceSpec

__all__ = [
    "BE_KEY",
    "BE_VAL",
    "PROTOCOLS",
    "SVC_KEY",
    "SVC_VAL",
    "Live",
    "SyncPlan",
    "decode_maps",
    "plan_sync",
]

PROTOCOLS: Final = {"tcp": 6, "udp": 17}

# Map layouts, mirroring the structs in lb4.c (native endianness for revision and count,
# network order for addresses and ports, as the socket address carries them).
SVC_KEY: Final = struct.Struct("=4s2sBx")  # vip, port, protocol, pad
SVC_VAL: Final = struct.Struct("=II")  # revision, endpoint count
BE_KEY: Final = struct.Struct("=II")  # revision, slot
BE_VAL: Final = struct.Struct("=4s2sxx")  # ip, port, pad


@dataclass(frozen=True)
class Live:
    """A service as programmed: its service-map key, live revision and endpoints."""

    key: bytes
    rev: int
    endpoints: tuple[Endpoint, ...]


@dataclass
class SyncPlan:
    """Map operations for one sync, to be applied in this order."""

    backend_writes: list[tuple[bytes, bytes]] = field(default_factory=list)
    service_writes: list[tuple[bytes, bytes]] = field(default_factory=list)
    service_deletes: list[bytes] = field(default_factory=list)
    backend_deletes: list[bytes] = field(default_factory=list)
    changes: dict[str, Live | None] = field(default_factory=dict)
    next_rev: int = 1

    @property
    def entries(self) -> int:
        """How many map entries the plan writes or deletes."""
        return (
            len(self.backend_writes)
            + len(self.service_writes)
            + len(self.service_deletes)
            + len(self.backend_deletes)
        )


def _ipv4(value: str, what: str) -> bytes:
    # inet_pton accepts only the dotted quad (unlike inet_aton) and is ~20x faster than
    # ipaddress, which matters when a sync validates 20,000 addresses.
    try:
        return socket.inet_pton(socket.AF_INET, value)
    except (OSError, TypeError):
        raise ValueError(f"{what}: {value!r} is not an IPv4 address (accepted: a.b.c.d)") from None


def _port(value: int, what: str) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{what}: {value!r} is not a port (accepted: an int in 1..65535)")
    return value.to_bytes(2, "big")


def _service_key(spec: ServiceSpec) -> bytes:
    proto = PROTOCOLS.get(spec.protocol.lower())
    if proto is None:
        raise ValueError(
            f"service {spec.name!r}: protocol {spec.protocol!r} is not supported by the eBPF "
            f"load balancer (accepted: {', '.join(PROTOCOLS)})"
        )
    return SVC_KEY.pack(
        _ipv4(spec.vip, f"service {spec.name!r} vip"),
        _port(spec.port, f"service {spec.name!r} port"),
        proto,
    )


def _backend_value(spec: ServiceSpec, endpoint: Endpoint) -> bytes:
    return BE_VAL.pack(
        _ipv4(endpoint.ip, f"service {spec.name!r} endpoint ip"),
        _port(endpoint.port, f"service {spec.name!r} endpoint {endpoint} port"),
    )


def plan_sync(
    live: Mapping[str, Live],
    owners: Mapping[bytes, str],
    services: Mapping[str, ServiceSpec],
    names: Iterable[str] | None,
    next_rev: int,
) -> SyncPlan:
    """Map operations that take the maps from ``live`` to ``services``.

    ``names`` are the services to look at (None: every one, rewritten even if unchanged: a
    full sync); ``owners`` maps each live service-map key to its service name. Changed
    services get a fresh revision: their backends are written first, the service entry is
    switched next, and the old revision's backends are deleted last, so that a connect never
    pairs a count with slots of another revision.
    """
    full = names is None
    touched = set(live) | set(services) if names is None else set(names)
    plan = SyncPlan(next_rev=next_rev)
    claimed: dict[bytes, str] = {}
    for name in sorted(touched):
        spec = services.get(name)
        have = live.get(name)
        if spec is None:
            if have is not None:
                plan.changes[name] = None
            continue
        key = _service_key(spec)
        values = [_backend_value(spec, endpoint) for endpoint in spec.endpoints]
        if key in claimed:
            raise ValueError(
                f"services {claimed[key]!r} and {name!r} both use {spec.vip}:{spec.port}/"
                f"{spec.protocol}; a VIP, port and protocol belong to one service"
            )
        claimed[key] = name
        if not full and have is not None and have.key == key and have.endpoints == spec.endpoints:
            continue
        rev = plan.next_rev
        plan.next_rev = rev % 0xFFFFFFFF + 1
        plan.backend_writes.extend(
            (BE_KEY.pack(rev, slot), value) for slot, value in enumerate(values)
        )
        plan.service_writes.append((key, SVC_VAL.pack(rev, len(values))))
        plan.changes[name] = Live(key, rev, spec.endpoints)
    # A key may only be claimed by a service outside this sync if that service keeps it.
    for key, name in claimed.items():
        owner = owners.get(key)
        if owner is not None and owner != name and owner not in touched:
            spec = services[name]
            raise ValueError(
                f"services {owner!r} and {name!r} both use {spec.vip}:{spec.port}/"
                f"{spec.protocol}; a VIP, port and protocol belong to one service"
            )
    for name, new in plan.changes.items():
        old = live.get(name)
        if old is None:
            continue
        if (new is None or new.key != old.key) and old.key not in claimed:
            plan.service_deletes.append(old.key)
        plan.backend_deletes.extend(BE_KEY.pack(old.rev, s) for s in range(len(old.endpoints)))
    return plan


def decode_maps(
    service_entries: Iterable[tuple[bytes, bytes]], backend_entries: Iterable[tuple[bytes, bytes]]
) -> dict[tuple[str, int, str], list[str]]:
    """The services the map entries program: ``(vip, port, protocol) -> ["ip:port", ...]``.

    A slot whose backend entry is missing reads ``"?"``: a map caught between a sync's
    writes, or damaged.
    """
    protocols = {number: name for name, number in PROTOCOLS.items()}
    backends: dict[tuple[int, int], str] = {}
    for key, value in backend_entries:
        ip, port = BE_VAL.unpack(value)
        backends[BE_KEY.unpack(key)] = f"{ipaddress.IPv4Address(ip)}:{int.from_bytes(port, 'big')}"
    result: dict[tuple[str, int, str], list[str]] = {}
    for key, value in service_entries:
        vip, port, proto = SVC_KEY.unpack(key)
        rev, count = SVC_VAL.unpack(value)
        result[
            (
                str(ipaddress.IPv4Address(vip)),
                int.from_bytes(port, "big"),
                protocols.get(proto, str(proto)),
            )
        ] = [backends.get((rev, slot), "?") for slot in range(count)]
    return result
