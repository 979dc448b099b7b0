"""The kind provider: real Kubernetes clusters in Docker, one per dataplane.

kube-proxy runs in ``iptables``, ``ipvs`` or ``nftables`` mode; ``ebpf`` is Cilium with its
kube-proxy replacement at ``--cilium-version``, installed with Helm. Clusters are created
through pytest-kind's ``KindCluster`` with the tools found on PATH (nothing is downloaded at
test time), named after a hash of their configuration so that a cluster kept with
``--dataplane-keep`` is reused only by a run that asks for the same one.

Modules: :mod:`.versions` and :mod:`.config` (pure: version rules, kind config, Helm values),
:mod:`.plan` (``--dataplane-plan``), :mod:`.tools` (finding binaries), :mod:`.cluster` (one
kind cluster's lifecycle), :mod:`.docker` (node access through ``docker exec``),
:mod:`.provider`. Everything on the Kubernetes side (workloads, the EndpointSlice watch,
metrics, rule counting) is the shared layer :mod:`pytest_dataplane.providers.k8s`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .provider import KindProvider

__all__ = ["KindProvider"]


def __getattr__(name: str) -> Any:
    # The plugin's option table reads this package's defaults at start-up (pytest --help
    # included): importing a module of it must not import the provider and its clients.
    if name == "KindProvider":
        from .provider import KindProvider

        return KindProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
