"""The lab provider: real Kubernetes in network namespaces on this machine.

No Docker and no images: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
kube-proxy (built from ``kube/``) run as processes in network namespaces the session creates;
a node agent starts each pod as a backend process in a namespace of its own, and ``ebpf`` is
the lab's cgroup/connect4 load balancer driven by a controller that watches the API server.
Needs root.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .provider import LabProvider

__all__ = ["LabProvider"]


def __getattr__(name: str) -> Any:
    # Loaded on use: pods and load workers import modules of this package and must start fast.
    if name == "LabProvider":
        from .provider import LabProvider

        return LabProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
