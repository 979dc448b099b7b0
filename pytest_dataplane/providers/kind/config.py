"""What a kind cluster for one dataplane looks like: kind config, Cilium Helm values, images,
and the cluster name that hashes all of it. Pure: nothing here runs a tool."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ...config import DATAPLANES
from ..k8s.resources import AGNHOST_IMAGE
from ..k8s.versions import Version
from .versions import (
    CILIUM_CHART_REPO,
    DEFAULT_CILIUM_VERSION,
    kube_proxy_replacement_value,
)

__all__ = [
    "KUBE_PROXY_MODES",
    "KindSettings",
    "cilium_images",
    "cilium_values",
    "cluster_name",
    "helm_install_argv",
    "kind_config",
    "preload_images",
]

# Dataplane -> kind's networking.kubeProxyMode ("none": Cilium replaces kube-proxy).
KUBE_PROXY_MODES: Final = {
    "iptables": "iptables",
    "ipvs": "ipvs",
    "nftables": "nftables",
    "ebpf": "none",
}
CLUSTER_PREFIX: Final = "dpt"
KIND_API_VERSION: Final = "kind.x-k8s.io/v1alpha4"
API_SERVER_PORT: Final = 6443
DEFAULT_WORKERS: Final = 1
DEFAULT_CILIUM_CHART: Final = "cilium"  # the chart of that name in CILIUM_CHART_REPO


@dataclass(frozen=True)
class KindSettings:
    """Everything (besides the dataplane) that decides what a kind cluster is.

    ``node_image`` None lets kind use its default node image. ``cilium_chart`` is a chart
    reference Helm understands (a local directory or ``.tgz`` for offline runs); the default
    ``cilium`` is fetched from Cilium's chart repository at cluster creation.
    """

    cilium_version: Version = field(default_factory=lambda: Version.parse(DEFAULT_CILIUM_VERSION))
    node_image: str | None = None
    workers: int = DEFAULT_WORKERS
    hubble: bool = False
    cilium_chart: str = DEFAULT_CILIUM_CHART
    backend_image: str = AGNHOST_IMAGE
    keep: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not 0 <= self.workers <= 10:
            raise ValueError(
                f"workers: {self.workers!r} is not accepted; accepted: 0 to 10 worker nodes"
            )

    @property
    def chart_source(self) -> str:
        """``local`` (a directory or ``.tgz``: no version asked), ``named`` (``repo/chart`` or
        ``oci://…``: Helm resolves it, we pin the version) or ``default`` (Cilium's repository)."""
        chart = self.cilium_chart
        if chart.endswith(".tgz") or chart.startswith(("/", "./", "../", "~")):
            return "local"
        if "/" in chart:
            return "named"
        return "default"


def _check_dataplane(dataplane: str) -> None:
    if dataplane not in KUBE_PROXY_MODES:
        raise ValueError(f"dataplane: unknown {dataplane!r}; accepted: {', '.join(DATAPLANES)}")


def kind_config(dataplane: str, settings: KindSettings) -> dict[str, Any]:
    """The kind ``Cluster`` config for ``dataplane``: its kube-proxy mode, and for ebpf no
    default CNI (Cilium is installed instead) and no kube-proxy."""
    _check_dataplane(dataplane)
    networking: dict[str, Any] = {"kubeProxyMode": KUBE_PROXY_MODES[dataplane]}
    if dataplane == "ebpf":
        networking["disableDefaultCNI"] = True
    nodes: list[dict[str, Any]] = [{"role": "control-plane"}]
    nodes += [{"role": "worker"} for _ in range(settings.workers)]
    return {
        "kind": "Cluster",
        "apiVersion": KIND_API_VERSION,
        "networking": networking,
        "nodes": nodes,
    }


def cilium_values(settings: KindSettings, name: str) -> list[tuple[str, str]]:
    """Helm ``--set`` values for Cilium in cluster ``name``, in a stable order.

    Version-aware: ``kubeProxyReplacement`` is ``strict`` before 1.14 and ``true`` from 1.14.
    Images are referenced by tag (no digest) and never pulled by the nodes, so the ones
    preloaded with ``kind load docker-image`` are used; one operator replica fits small
    clusters; the L7 proxy is off (no Envoy image to fetch; these tests are L4).
    """
    values = [
        ("kubeProxyReplacement", kube_proxy_replacement_value(settings.cilium_version)),
        ("k8sServiceHost", f"{name}-control-plane"),
        ("k8sServicePort", str(API_SERVER_PORT)),
        ("ipam.mode", "kubernetes"),
        ("image.pullPolicy", "IfNotPresent"),
        ("image.useDigest", "false"),
        ("operator.image.pullPolicy", "IfNotPresent"),
        ("operator.image.useDigest", "false"),
        ("operator.replicas", "1"),
        ("l7Proxy", "false"),
    ]
    if settings.hubble:
        values += [
            ("hubble.enabled", "true"),
            ("hubble.relay.enabled", "true"),
            ("hubble.relay.image.pullPolicy", "IfNotPresent"),
            ("hubble.relay.image.useDigest", "false"),
        ]
    else:
        values.append(("hubble.enabled", "false"))
    return values


def helm_install_argv(
    settings: KindSettings, name: str, *, kubeconfig: str, helm: str = "helm"
) -> list[str]:
    """The complete ``helm install`` command for Cilium in cluster ``name``."""
    argv = [helm, "install", "cilium", settings.cilium_chart]
    if settings.chart_source == "default":
        argv += ["--repo", CILIUM_CHART_REPO]
    if settings.chart_source != "local":
        argv += ["--version", str(settings.cilium_version)]
    argv += [
        "--namespace",
        "kube-system",
        "--kubeconfig",
        kubeconfig,
        "--wait",
        "--timeout",
        "10m",
    ]
    for key, value in cilium_values(settings, name):
        argv += ["--set", f"{key}={value}"]
    return argv


def cilium_images(settings: KindSettings) -> list[str]:
    """Cilium images the chart deploys with :func:`cilium_values`."""
    tag = f"v{settings.cilium_version}"
    images = [f"quay.io/cilium/cilium:{tag}", f"quay.io/cilium/operator-generic:{tag}"]
    if settings.hubble:
        images.append(f"quay.io/cilium/hubble-relay:{tag}")
    return images


def preload_images(dataplane: str, settings: KindSettings) -> list[str]:
    """Images loaded into the nodes with ``kind load docker-image`` before tests run."""
    _check_dataplane(dataplane)
    images = [settings.backend_image]
    if dataplane == "ebpf":
        images += cilium_images(settings)
    return images


def _identity(
    dataplane: str, settings: KindSettings, kind_version: Version | None
) -> Mapping[str, Any]:
    identity: dict[str, Any] = {
        "dataplane": dataplane,
        "kind_config": kind_config(dataplane, settings),
        # Without an explicit image the node image is whatever this kind release defaults to.
        "node_image": settings.node_image or f"kind-default:{kind_version or '?'}",
        "images": preload_images(dataplane, settings),
    }
    if dataplane == "ebpf":
        identity["cilium"] = {
            "version": str(settings.cilium_version),
            "chart": settings.cilium_chart,
            "values": cilium_values(settings, "<name>"),
        }
    return identity


def cluster_name(dataplane: str, settings: KindSettings, kind_version: Version | None) -> str:
    """``dpt-<dataplane>-<hash>``: the hash covers everything that decides the cluster, so a
    kept cluster is reused only by a run that asks for the same one."""
    canonical = json.dumps(
        _identity(dataplane, settings, kind_version), sort_keys=True, separators=(",", ":")
    )
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:10]
    return f"{CLUSTER_PREFIX}-{dataplane}-{digest}"
