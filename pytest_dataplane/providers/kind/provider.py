"""The kind provider: one kind cluster per dataplane, created on demand (or reused when
kept), with the same Cluster protocol as the lab."""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import DataplaneError, DataplaneUnavailable
from ..k8s import resources
from ..k8s.api import KubeApi
from ..k8s.cilium import cilium_cli
from ..k8s.cluster import KubeCluster
from ..k8s.dataplane import DataplanePods
from ..k8s.hooks import ClusterHooks
from ..k8s.traffic import NodePortPath
from ..k8s.versions import Version
from .cluster import KindClusterSetup
from .config import KindSettings
from .docker import DockerNodes
from .tools import Tools, docker_engine_problem, find_tools, kind_version, missing_tools_reason
from .versions import nftables_problem, parse_cilium_version

__all__ = ["KindProvider", "settings_from_options"]

log = logging.getLogger(__name__)

_UNSET: Any = object()


def _workers(value: object) -> int:
    text = str(value).strip()
    if not text.isdigit() or not 0 <= int(text) <= 10:
        raise ValueError(
            f"--dataplane-kind-workers: {value!r} is not accepted; accepted: 0 to 10 worker nodes"
        )
    return int(text)


def settings_from_options(option: Callable[[str], Any]) -> KindSettings:
    """:class:`KindSettings` from the plugin's resolved options (ValueError naming the
    option on a bad value)."""
    return KindSettings(
        cilium_version=parse_cilium_version(str(option("cilium_version"))),
        node_image=option("kind_image") or None,
        workers=_workers(option("dataplane_kind_workers")),
        hubble=bool(option("dataplane_hubble")),
        cilium_chart=option("dataplane_cilium_chart"),
        backend_image=option("dataplane_backend_image"),
        keep=bool(option("dataplane_keep")),
    )


class KindProvider:
    """Creates kind clusters for dataplanes (iptables, ipvs, nftables; ebpf = Cilium)."""

    name = "kind"

    def __init__(
        self,
        settings: KindSettings | None = None,
        *,
        tools: Tools | None = None,
        root: Path | None = None,
        kind_version: Version | None = _UNSET,
        api_factory: Callable[[Path], KubeApi] | None = None,
    ) -> None:
        self.settings = settings or KindSettings()
        self.tools = tools or find_tools()
        self.root = root
        self._kind_version = kind_version
        self._api_factory = api_factory
        self._engine_problem: Any = _UNSET
        self._lock = threading.Lock()
        self._clusters: list[KubeCluster] = []
        self.session = secrets.token_hex(3)

    @classmethod
    def from_options(cls, option: Callable[[str], Any]) -> KindProvider:
        """Build from the plugin's resolved options (pytest-kind's ``--kind-bin`` and
        ``--kind-kubectl-bin`` name the binaries when given)."""
        tools = find_tools(kind_bin=option("kind_bin"), kubectl_bin=option("kind_kubectl_bin"))
        return cls(settings_from_options(option), tools=tools)

    @property
    def kind_version(self) -> Version | None:
        """The kind binary's version (None when kind is missing or does not say)."""
        if self._kind_version is _UNSET:
            self._kind_version = kind_version(self.tools.kind) if self.tools.kind else None
        return self._kind_version

    def availability(self, dataplane: str) -> str | None:
        missing = missing_tools_reason(self.tools, dataplane)
        if missing:
            return missing
        with self._lock:
            if self._engine_problem is _UNSET:
                if self.tools.docker is None:
                    raise self.tools.missing("docker")
                self._engine_problem = docker_engine_problem(self.tools.docker)
            if self._engine_problem:
                return str(self._engine_problem)
        if dataplane == "nftables":
            return nftables_problem(self.kind_version, self.settings.node_image)
        return None

    def create(self, dataplane: str) -> KubeCluster:
        reason = self.availability(dataplane)
        if reason is not None:
            raise DataplaneUnavailable(f"{dataplane} on kind: {reason}")
        setup = KindClusterSetup(
            dataplane=dataplane,
            settings=self.settings,
            tools=self.tools,
            kind_version=self.kind_version,
            root=self.root,
            api_factory=self._api_factory,
        )
        api = setup.ensure()
        try:
            cluster = self._cluster(dataplane, setup, api)
        except BaseException:
            api.close()
            if not self.settings.keep and not setup.reused:
                setup.delete()
            raise
        with self._lock:
            self._clusters.append(cluster)
        return cluster

    def _cluster(self, dataplane: str, setup: KindClusterSetup, api: KubeApi) -> KubeCluster:
        # This cluster is ours: namespaces a killed run left behind can go.
        stale, _ = api.list_items("v1", "Namespace", label_selector="=".join(resources.MANAGED_BY))
        for namespace in stale:
            api.delete("v1", "Namespace", namespace["metadata"]["name"])
        name = f"dpt-{self.session}"
        api.create(resources.namespace(name, self.session))
        nodes, _ = api.list_items("v1", "Node")
        names = sorted(n["metadata"]["name"] for n in nodes)
        workers = [n for n in nodes if not n["metadata"]["name"].endswith("-control-plane")]
        target = sorted(workers or nodes, key=lambda n: n["metadata"]["name"])[0]
        host = resources.node_address(target)
        if self.tools.docker is None:
            raise self.tools.missing("docker")
        keep = self.settings.keep

        def close() -> None:
            # Each step runs whatever the one before did: a namespace that cannot be deleted
            # must not keep the cluster itself alive.
            problems: list[str] = []
            steps: list[tuple[str, Callable[[], object]]] = [
                (f"delete namespace {name}", lambda: api.delete("v1", "Namespace", name)),
                ("close the API client", api.close),
            ]
            if not keep:
                steps.append((f"kind delete cluster {setup.name}", setup.delete))
            for what, step in steps:
                try:
                    step()
                except Exception as exc:
                    problems.append(f"{what}: {exc}")
            if problems:
                raise DataplaneError("; ".join(problems))

        facts = {
            "cluster": setup.name,
            "kind": str(self.kind_version) if self.kind_version else "unknown",
            "node_image": self.settings.node_image or "kind default",
            "nodes": len(names),
        }
        if dataplane == "ebpf":
            facts["cilium"] = str(self.settings.cilium_version)
        else:
            facts["kube_proxy_mode"] = dataplane
        return KubeCluster(
            api=api,
            provider="kind",
            dataplane=dataplane,
            namespace=name,
            session=self.session,
            backend_image=self.settings.backend_image,
            traffic=NodePortPath(
                host,
                missing_reason=(
                    f"the kind node {target['metadata']['name']} has no InternalIP"
                    if host is None
                    else f"kind nodes are reached at their container address ({host}); on "
                    "Docker Desktop (macOS, Windows) that address is not routable from the host"
                ),
            ),
            dataplane_pods=DataplanePods.for_dataplane(
                dataplane, cilium_cli(self.settings.cilium_version)
            ),
            node_access=DockerNodes(self.tools.docker, names),
            facts=facts,
            on_close=close,
            hooks=ClusterHooks(hubble=self.settings.hubble),
        )

    def close(self) -> None:
        """Close every cluster, even after one fails; then raise one DataplaneError naming
        every failure."""
        with self._lock:
            clusters, self._clusters = self._clusters, []
        errors: list[str] = []
        for cluster in clusters:
            try:
                cluster.close()
            except Exception as exc:  # keep closing the others
                errors.append(str(exc))
        if errors:
            raise DataplaneError(
                f"kind cleanup incomplete ({len(errors)} of {len(clusters)} clusters): "
                + "; ".join(errors)
            )
