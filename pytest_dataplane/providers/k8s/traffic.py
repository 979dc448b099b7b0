"""How a test's requests reach a Service: the traffic-path hook of the Kubernetes layer.

A provider hands :class:`~pytest_dataplane.providers.k8s.cluster.KubeCluster` one
:class:`TrafficPath`: which Service type to create, the URL of a created Service, where a
client must run for that URL to work, and how to send one request along it (the readiness
check and the programming-latency probes go the way the load does). :class:`NodePortPath`
(a node's address, as kind and an existing cluster reach NodePorts from the host) and
:class:`LoadBalancerPath` cover the providers we have; the lab will add a path from its
client namespace.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from ...errors import DataplaneError
from . import resources
from .probe import fetch_hostname

__all__ = ["LoadBalancerPath", "NodePortPath", "TrafficPath"]


class TrafficPath(Protocol):
    """The way from the test process to a Service, through the dataplane."""

    @property
    def service_type(self) -> str:
        """The Service type to create (``NodePort`` or ``LoadBalancer``)."""

    @property
    def missing_reason(self) -> str:
        """Advice for when a Service gets no address or does not answer along this path."""

    @property
    def netns(self) -> str | None:
        """Network namespace a client must run in (None: anywhere)."""

    @property
    def cgroup(self) -> str | None:
        """cgroup v2 path a client must run in, or None."""

    def url(self, svc: Mapping[str, Any]) -> str | None:
        """The URL for a created Service object, or None while it has no address yet."""

    def hostname(self, url: str, *, timeout: float = 1.0) -> str | None:
        """Send one request to ``url`` on a new connection; the pod that answered, or None."""


class _HostPath:
    """Requests sent from this process, in its own namespaces."""

    service_type = "NodePort"
    missing_reason = ""

    @property
    def netns(self) -> str | None:
        return None

    @property
    def cgroup(self) -> str | None:
        return None

    def hostname(self, url: str, *, timeout: float = 1.0) -> str | None:
        return fetch_hostname(url, timeout=timeout)


class NodePortPath(_HostPath):
    """NodePort Services reached at ``node_host`` (None: no address is known, and
    ``missing_reason`` says what to do)."""

    def __init__(self, node_host: str | None, *, missing_reason: str = "") -> None:
        self.node_host = node_host
        self.missing_reason = missing_reason

    def __repr__(self) -> str:
        return f"NodePortPath({self.node_host!r})"

    def url(self, svc: Mapping[str, Any]) -> str | None:
        port = resources.node_port(svc)
        if self.node_host is None:
            raise DataplaneError(self.missing_reason or "no node address to reach NodePorts")
        return resources.url_for(self.node_host, port) if port else None


class LoadBalancerPath(_HostPath):
    """LoadBalancer Services reached at their first load-balancer ingress address."""

    service_type = "LoadBalancer"

    def __init__(self, *, missing_reason: str = "") -> None:
        self.missing_reason = missing_reason

    def __repr__(self) -> str:
        return "LoadBalancerPath()"

    def url(self, svc: Mapping[str, Any]) -> str | None:
        address = resources.lb_address(svc)
        ports = svc.get("spec", {}).get("ports") or [{}]
        return resources.url_for(address, int(ports[0].get("port", 80))) if address else None
