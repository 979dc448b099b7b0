"""Types shared inside the lab's eBPF load balancer: desired service state, a sync's cost."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoint:
    """A ready backend of a service: a pod's address and target port."""

    ip: str
    port: int

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class ServiceSpec:
    """What the load balancer must program for one service port (TCP).

    ``name`` is ``"namespace/service:port-name"`` as kube-proxy names service ports;
    ``endpoints`` are the *ready* endpoints in a stable order.
    """

    name: str
    vip: str
    port: int
    endpoints: tuple[Endpoint, ...]
    protocol: str = "tcp"
    node_port: int | None = None


@dataclass(frozen=True)
class SyncResult:
    """What one sync cost.

    ``wall``: seconds from the start of the sync to the kernel reflecting it; ``cpu``: CPU
    seconds the syncing thread spent (planning and the map-update syscalls); ``written``: map
    entries written or deleted; ``full``: whether everything was rewritten.
    """

    wall: float
    cpu: float
    written: int
    full: bool
    detail: str = ""
