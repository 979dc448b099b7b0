"""ClusterHooks: what a provider plugs into a KubeCluster beyond the Kubernetes API.

A :class:`~.cluster.KubeCluster` is built from how the cluster is reached (API client,
namespace, :class:`~.nodes.NodeAccess`, :class:`~.traffic.TrafficPath`) and one
:class:`ClusterHooks` that says what this provider knows about its dataplane and how it holds
the cluster. The defaults describe a cluster the run borrows and sees through the API and
node access alone; kind sets ``hubble``, an existing cluster its refusals, the lab most of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ...events import Event
from . import resources
from .dataplane import CpuSource

__all__ = ["ClusterHooks", "ProgrammingSource"]


class ProgrammingSource(Protocol):
    """Exact network-programming latencies that a provider reads from its dataplane (the
    lab's eBPF controller records each endpoint change it programs)."""

    @property
    def name(self) -> str:
        """What the figures are, for the fingerprint (``programming_latency_source``)."""

    def latencies(self, changes: Sequence[Event]) -> list[float]:
        """Seconds from each endpoint change (``endpoint-added`` / ``endpoint-removed``
        events, as the EndpointSlice watch saw them) to the dataplane having programmed it."""


@dataclass(frozen=True)
class ClusterHooks:
    """What a provider plugs into a :class:`~.cluster.KubeCluster`, in one object.

    A None hook means: what the Kubernetes API and the node access give.
    """

    # -- the pods --
    backend: str = "netexec"
    """What the deployed pods run (one of ``resources.BACKENDS``): agnhost ``netexec``, or
    ``lab``, the lab's backend, the only one that honours ``service_time``."""

    # -- reading the dataplane --
    cpu_source: CpuSource | None = None
    """Reads the dataplane's CPU time (None: from its pods' cgroups through node access)."""
    programming: ProgrammingSource | None = None
    """Exact per-change programming latencies, used before kube-proxy's histogram or the
    prober."""
    proxy_histogram: bool | None = None
    """Whether kube-proxy's programming-latency histogram is the latency source. None: whether
    the nodes publish it at start; a fresh kube-proxy publishes it only once it has observed a
    change, so a provider that knows it runs kube-proxy says True."""
    service_map: Callable[[], int] | None = None
    """Counts the entries of an eBPF service map, for ``rule_count()`` on ``ebpf`` (None: the
    Cilium agent's ``bpf lb list``)."""
    nodes_run_kubelet: bool = True
    """Whether a kubelet writes rules on the nodes: rule counts leave its chains out only
    where one does (the lab's node agent writes none)."""
    diagnostics: Callable[[float], list[tuple[str, str]]] | None = None
    """``diagnostics(since)``: (title, text) sections added to a failed test's diagnostics,
    ``since`` the wall-clock start of its measurement window."""
    hubble: bool = False
    """Hubble runs beside Cilium: an ``ebpf`` cluster's diagnostics add its recent flows."""
    settle: Callable[[float], None] | None = None
    """``settle(timeout)``: waits until the dataplane has caught up with the API, at reset()
    and after a test's first use removed the background services it found, so the next
    measurement window does not measure that cleanup."""

    # -- how the run holds the cluster --
    disposable: bool = False
    """The run owns the cluster and discards it at close, so reset() may keep a test's
    background services for the next test and stop pods without their drain."""
    background_refusal: str | None = None
    """Why background services are refused on this cluster (a shared one), reported as the
    skip reason; None: allowed."""
    restrict_apply_to_namespace: bool = False
    """``apply()`` accepts only objects in the session's namespace (a shared cluster)."""
    handle: Any = None
    """What the provider runs the cluster with (the lab: its KubeLab), for its own tests and
    tools; the Cluster protocol never needs it."""

    def __post_init__(self) -> None:
        if self.backend not in resources.BACKENDS:
            raise ValueError(
                f"backend: {self.backend!r} is not accepted; accepted: "
                f"{', '.join(resources.BACKENDS)}"
            )
