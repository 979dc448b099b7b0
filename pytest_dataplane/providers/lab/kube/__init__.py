"""Real Kubernetes in the lab: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
kube-proxy (or, for ``ebpf``, the lab's eBPF service controller, :mod:`.ebpfctl`) and a node
agent per node, as processes in network namespaces (no Docker).

:class:`~.lab.KubeLab` boots and removes one cluster; ``python -m pytest_dataplane lab up``
(:mod:`.updown`) keeps one running for a person with kubectl.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .lab import KubeLab

__all__ = ["KubeLab"]


def __getattr__(name: str) -> Any:
    # The agent runs as ``python -m ...kube.agent``: importing this package must stay cheap.
    if name == "KubeLab":
        from .lab import KubeLab

        return KubeLab
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
