"""What every provider offers: the Cluster and Service protocols, rule counts, CPU usage.

A *provider* (lab, kind, kubeconfig) creates clusters; a *cluster* runs one dataplane
(``iptables``, ``nftables``, ``ipvs`` or ``ebpf``) and hosts services. Tests talk to these
protocols only, so the same test runs unchanged on every provider.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from ..config import ServiceTime
from ..events import Event

__all__ = [
    "Cluster",
    "CpuUsage",
    "Provider",
    "RuleCount",
    "RuleCountPart",
    "Service",
    "check_background_args",
    "check_deploy_args",
    "check_replicas",
]


_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: {value!r} is not accepted; accepted: an integer >= {minimum}")
    return value


def check_replicas(replicas: object) -> int:
    """Validate a replica count for ``scale()`` (0 allowed)."""
    return _check_int(replicas, "replicas", 0)


def check_deploy_args(name: object, replicas: object, port: object) -> None:
    """Validate ``deploy()``'s arguments the same way on every provider."""
    if not isinstance(name, str) or not _DNS_LABEL.match(name):
        raise ValueError(
            f"name: {name!r} is not accepted; accepted: a DNS label (lower-case letters, digits "
            "and '-', starting with a letter, at most 63 characters) such as 'backend'"
        )
    _check_int(replicas, "replicas", 1)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port: {port!r} is not accepted; accepted: 1-65535")


def check_background_args(count: object, endpoints: object) -> None:
    """Validate ``add_background_services()``'s arguments the same way on every provider."""
    _check_int(count, "count", 0)
    _check_int(endpoints, "endpoints", 1)


@dataclass(frozen=True)
class RuleCountPart:
    """Lines counted in one place: a node, a backend (``iptables-legacy``, ``iptables-nft``,
    ``nftables``) and a table (``nat``, ``filter``, ``kube-proxy``)."""

    node: str
    backend: str
    table: str
    lines: int


@dataclass(frozen=True)
class RuleCount:
    """``KUBE-`` rule lines of a cluster, counted the way the motivating story counts them.

    ``total`` is the number of ``iptables-save`` lines (nat and filter, legacy and nft
    backends) containing ``KUBE-``, plus the lines of the ``kube-proxy`` nftables table, summed
    over nodes: the lines the dataplane wrote. The lines of kubelet's own chains
    (``KUBE-FIREWALL``, ``KUBE-KUBELET-CANARY`` and the jumps to them, which every node carries
    whatever the dataplane) are left out of ``total`` and listed in ``kubelet_parts``.
    ``parts`` breaks the total down; ``largest_chains`` names the longest chains
    (``(chain, rules)``); ``service_map_entries`` is the size of an eBPF service map where the
    dataplane has one (it is not part of ``total``).
    """

    total: int
    parts: tuple[RuleCountPart, ...] = ()
    largest_chains: tuple[tuple[str, int], ...] = ()
    service_map_entries: int | None = None
    kubelet_parts: tuple[RuleCountPart, ...] = ()

    def __int__(self) -> int:
        return self.total

    @property
    def kubelet_lines(self) -> int:
        """Lines of kubelet's own chains, summed over nodes (not part of ``total``)."""
        return sum(p.lines for p in self.kubelet_parts)

    def describe(self) -> str:
        """A multi-line breakdown for failure messages."""
        lines = [f"{self.total:,} KUBE- rule lines in total"]
        for part in self.parts:
            lines.append(f"  {part.node} {part.backend} {part.table}: {part.lines:,}")
        if self.kubelet_parts:
            lines.append(
                f"  kubelet's own chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY; not counted): "
                f"{self.kubelet_lines:,}"
            )
            for part in self.kubelet_parts:
                lines.append(f"    {part.node} {part.backend} {part.table}: {part.lines:,}")
        if self.service_map_entries is not None:
            lines.append(f"  eBPF service map entries (not counted): {self.service_map_entries:,}")
        if self.largest_chains:
            chains = ", ".join(f"{name} ({count:,})" for name, count in self.largest_chains)
            lines.append(f"  largest chains: {chains}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "total": self.total,
            "parts": [vars(p) for p in self.parts],
            "largest_chains": [list(c) for c in self.largest_chains],
            "service_map_entries": self.service_map_entries,
            "kubelet_lines": self.kubelet_lines,
            "kubelet_parts": [vars(p) for p in self.kubelet_parts],
        }


@dataclass(frozen=True)
class CpuUsage:
    """CPU seconds (user + system) the dataplane spent applying changes.

    ``per_change`` holds one figure per endpoint change, ``changes`` describes each (e.g.
    ``"backend: added 10.0.0.7"``) and ``times`` says when each happened (seconds on the
    :func:`pytest_dataplane.events.now` clock); ``total`` also includes syncs not caused by an
    endpoint change (the initial programming, background services, periodic full syncs).
    """

    total: float
    per_change: tuple[float, ...] = ()
    changes: tuple[str, ...] = ()
    detail: Mapping[str, float] = field(default_factory=dict)
    times: tuple[float, ...] = ()


@runtime_checkable
class Service(Protocol):
    """A service with a virtual IP (or NodePort) in front of its endpoints."""

    name: str

    @property
    def url(self) -> str:
        """Where a client sends requests so that they cross the dataplane."""

    @property
    def netns(self) -> str | None:
        """Network namespace a client must run in for :attr:`url` to work (None: anywhere)."""

    @property
    def cgroup(self) -> str | None:
        """cgroup v2 path a client must run in (the lab's eBPF load balancer), or None."""

    @property
    def endpoints(self) -> list[str]:
        """Ready endpoints as ``"ip:port"`` strings, as the dataplane is asked to program them."""

    @property
    def events(self) -> list[Event]:
        """The cluster's events that concern this service."""

    def scale(self, replicas: int) -> None:
        """Change the number of replicas and wait until the endpoints match."""

    def rollout(
        self,
        *,
        max_surge: int | str = "25%",
        max_unavailable: int | str = "25%",
        grace: float | str = "1s",
    ) -> None:
        """Replace every pod with a new one (an image update), with Deployment semantics."""


@runtime_checkable
class Cluster(Protocol):
    """A cluster running one dataplane."""

    name: str
    provider: str

    @property
    def events(self) -> list[Event]:
        """Everything that happened on the cluster, in order."""

    def deploy(
        self,
        name: str,
        replicas: int = 3,
        *,
        service_time: ServiceTime | float | str | None = None,
        port: int = 80,
    ) -> Service:
        """Create a deployment of ``replicas`` backends behind a service and wait until ready."""

    def service(self, name: str) -> Service:
        """The service called ``name`` (KeyError naming the known ones if there is none)."""

    def add_background_services(self, count: int, endpoints: int = 3) -> None:
        """Add ``count`` services of ``endpoints`` endpoints each, to make the dataplane busy."""

    def rule_count(self) -> RuleCount:
        """Count ``KUBE-`` rule lines on every node (see :class:`RuleCount`)."""

    def programming_latencies(self) -> npt.NDArray[np.float64]:
        """Seconds from each endpoint change to the moment the dataplane reflected it."""

    def cpu_seconds(self) -> CpuUsage:
        """CPU the dataplane spent applying changes (see :class:`CpuUsage`)."""

    def apply(self, path_or_objects: str | Sequence[Mapping[str, Any]]) -> Any:
        """Apply Kubernetes manifests (providers without Kubernetes raise DataplaneError)."""

    def fingerprint(self) -> dict[str, Any]:
        """Facts about the environment that make results comparable (versions, backends)."""

    def reset(self) -> None:
        """Remove what tests created, so the next test starts clean."""

    def close(self) -> None:
        """Tear the cluster down (or keep it, where the provider is told to)."""


class Provider(Protocol):
    """Creates clusters for dataplanes."""

    name: str

    def availability(self, dataplane: str) -> str | None:
        """None when ``dataplane`` can run here, else the reason (with the fix) it cannot."""

    def create(self, dataplane: str) -> Cluster:
        """Create (or reuse) a cluster running ``dataplane``."""

    def close(self) -> None:
        """Release everything the provider holds."""
