"""The kubeconfig provider: the same tests against a cluster that already exists.

Nothing outside the session namespace is changed and no cluster is created or deleted. The
dataplane is detected; ``--dataplane`` only states what the test expects, and a mismatch
skips with what was found.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ...errors import DataplaneError, DataplaneUnavailable
from ..k8s import resources
from ..k8s.api import KubeApi, NotFound
from ..k8s.cilium import cilium_cli
from ..k8s.cluster import KubeCluster
from ..k8s.dataplane import DataplanePods
from ..k8s.hooks import ClusterHooks
from ..k8s.resources import AGNHOST_IMAGE
from ..k8s.traffic import LoadBalancerPath, NodePortPath, TrafficPath
from ..k8s.versions import Version
from .agent import AGENT_IMAGE, AgentNodes, NodeAccessUnavailable, start_agent
from .detect import Detection, detect
from .session import new_session, session_namespace

__all__ = ["KubeconfigProvider", "plan_text"]

log = logging.getLogger(__name__)

NODE_ACCESS_HINT = (
    "pass --dataplane-node-access to run a privileged DaemonSet in the session namespace "
    "that reads rules and CPU on each node"
)
BACKGROUND_REFUSAL = (
    "add_background_services() is refused on an existing cluster: thousands of services "
    "would load every tenant's dataplane; pass --dataplane-allow-background to allow it"
)
TRAFFIC_HINT = (
    "give --dataplane-node-address=<a node address reachable from here> for NodePorts, or "
    "--dataplane-service-type=LoadBalancer where the cluster provisions load balancers"
)


class KubeconfigProvider:
    """Runs tests in one namespace of an existing cluster reached through a kubeconfig."""

    name = "kubeconfig"

    def __init__(
        self,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        node_access: bool = False,
        allow_background: bool = False,
        node_address: str | None = None,
        service_type: str = "NodePort",
        node_image: str = AGENT_IMAGE,
        backend_image: str = AGNHOST_IMAGE,
        api_factory: Callable[[], KubeApi] | None = None,
    ) -> None:
        if service_type not in ("NodePort", "LoadBalancer"):
            raise ValueError(
                f"service_type: {service_type!r} is not accepted; accepted: NodePort, LoadBalancer"
            )
        self.kubeconfig = kubeconfig
        self.context = context
        self.node_access = node_access
        self.allow_background = allow_background
        self.node_address = node_address
        self.service_type = service_type
        self.node_image = node_image
        self.backend_image = backend_image
        self._api_factory = api_factory
        self._api: KubeApi | None = None
        self._api_error: str | None = None
        self._detection: Detection | None = None
        self._agent: AgentNodes | None = None
        self._node_access_problem: str | None = None
        self._namespace: str | None = None
        self._clusters: list[KubeCluster] = []
        self._lock = threading.RLock()
        self.session = new_session()

    @classmethod
    def from_options(cls, option: Callable[[str], Any]) -> KubeconfigProvider:
        """Build from the plugin's resolved options."""
        return cls(
            kubeconfig=option("dataplane_kubeconfig") or None,
            context=option("dataplane_context") or None,
            node_access=bool(option("dataplane_node_access")),
            allow_background=bool(option("dataplane_allow_background")),
            node_address=option("dataplane_node_address") or None,
            service_type=option("dataplane_service_type"),
            node_image=option("dataplane_node_image"),
            backend_image=option("dataplane_backend_image"),
        )

    @property
    def where(self) -> str:
        """The kubeconfig and context in use, for messages."""
        config = self.kubeconfig or "$KUBECONFIG or ~/.kube/config"
        return f"{config}, context {self.context or '(current)'}"

    def api(self) -> KubeApi:
        """The API client (raises DataplaneUnavailable naming the options when unreachable)."""
        with self._lock:
            if self._api is None and self._api_error is None:
                try:
                    if self._api_factory is not None:
                        self._api = self._api_factory()
                    else:
                        from ..k8s.api import KubernetesApi

                        self._api = KubernetesApi(kubeconfig=self.kubeconfig, context=self.context)
                    self._api.server_version()
                except Exception as exc:
                    self._api = None
                    self._api_error = (
                        f"cannot reach a cluster through {self.where}: {type(exc).__name__}: "
                        f"{str(exc).strip()[:300]}; set --dataplane-kubeconfig and "
                        "--dataplane-context"
                    )
            if self._api is None:
                raise DataplaneUnavailable(str(self._api_error))
            return self._api

    def _get(self, api_version: str, kind: str, name: str) -> dict[str, Any] | None:
        try:
            return self.api().get(api_version, kind, name, "kube-system")
        except NotFound:
            return None

    def _first(
        self, api_version: str, kind: str, names: tuple[str, ...], selector: str
    ) -> dict[str, Any] | None:
        for name in names:
            found = self._get(api_version, kind, name)
            if found is not None:
                return found
        items, _ = self.api().list_items(api_version, kind, "kube-system", label_selector=selector)
        return items[0] if items else None

    def detection(self) -> Detection:
        """What the cluster runs (detected once per session)."""
        with self._lock:
            if self._detection is None:
                kube_proxy_configmap = self._first(
                    "v1", "ConfigMap", ("kube-proxy", "kube-proxy-config"), "k8s-app=kube-proxy"
                )
                kube_proxy_daemonset = self._first(
                    "apps/v1", "DaemonSet", ("kube-proxy",), "k8s-app=kube-proxy"
                )
                cilium_daemonset = self._first(
                    "apps/v1", "DaemonSet", ("cilium",), "k8s-app=cilium"
                )
                cilium_configmap = self._get("v1", "ConfigMap", "cilium-config")

                def decide(endpoint: str | None = None) -> Detection:
                    return detect(
                        kube_proxy_configmap=kube_proxy_configmap,
                        kube_proxy_daemonset=kube_proxy_daemonset,
                        cilium_daemonset=cilium_daemonset,
                        cilium_configmap=cilium_configmap,
                        proxy_mode_endpoint=endpoint,
                    )

                found = decide()
                if found.dataplane is None and kube_proxy_daemonset and self.node_access:
                    # Neither the ConfigMap nor the DaemonSet says: ask kube-proxy itself.
                    found = decide(self._proxy_mode_from_node())
                self._detection = found
            return self._detection

    def _proxy_mode_from_node(self) -> str | None:
        agent = self._ensure_namespace()
        if agent is None or not agent.nodes():
            return None
        script = (
            "(curl -fsS --max-time 5 http://127.0.0.1:10249/proxyMode 2>/dev/null || "
            "wget -qO- -T 5 http://127.0.0.1:10249/proxyMode 2>/dev/null) || true"
        )
        return agent.run(agent.nodes()[0], script).strip() or None

    def availability(self, dataplane: str) -> str | None:
        try:
            found = self.detection()
        except DataplaneUnavailable as exc:
            return str(exc)
        if found.dataplane is None:
            return f"cannot tell which dataplane the cluster runs: {found.source}"
        if found.dataplane != dataplane:
            return f"the cluster runs {found.describe()}, not {dataplane}"
        return None

    def _ensure_namespace(self) -> AgentNodes | None:
        with self._lock:
            api = self.api()
            if self._namespace is None:
                obj = session_namespace(self.session, privileged=self.node_access)
                api.create(obj)
                self._namespace = obj["metadata"]["name"]
                if self.node_access:
                    try:
                        self._agent = start_agent(
                            api, self._namespace, session=self.session, image=self.node_image
                        )
                    except NodeAccessUnavailable as exc:
                        # Not a failure of the run: what needs node access skips, saying why.
                        self._node_access_problem = f"--dataplane-node-access was given, but {exc}"
                        log.warning("kubeconfig: no node access: %s", exc)
            return self._agent

    def _traffic(self) -> TrafficPath:
        if self.service_type == "LoadBalancer":
            return LoadBalancerPath(missing_reason=TRAFFIC_HINT)
        if self.node_address:
            return NodePortPath(self.node_address, missing_reason=TRAFFIC_HINT)
        nodes, _ = self.api().list_items("v1", "Node")
        for kind in ("ExternalIP", "InternalIP"):
            for node in sorted(nodes, key=lambda n: str(n["metadata"]["name"])):
                address = resources.node_address(node, prefer=(kind,))
                if address:
                    return NodePortPath(
                        address,
                        missing_reason=f"discovered node address {address} ({kind}) may not be "
                        f"reachable from here; {TRAFFIC_HINT}",
                    )
        return NodePortPath(None, missing_reason=f"no node has an address; {TRAFFIC_HINT}")

    def create(self, dataplane: str) -> KubeCluster:
        reason = self.availability(dataplane)
        if reason is not None:
            raise DataplaneUnavailable(f"{dataplane} on kubeconfig: {reason}")
        api = self.api()
        agent = self._ensure_namespace()
        if self._namespace is None:
            raise DataplaneError("kubeconfig: the session's namespace was not created")
        found = self.detection()
        facts: dict[str, Any] = {
            "context": self.context or "(current)",
            "detected": found.source,
            "node_access": agent is not None,
        }
        if self._node_access_problem:
            facts["node_access_unavailable"] = self._node_access_problem
        if found.cilium_version:
            facts["cilium"] = found.cilium_version
        if found.kube_proxy_mode:
            facts["kube_proxy_mode"] = found.kube_proxy_mode
        cli = None
        if found.cilium_version:
            try:
                cli = cilium_cli(Version.parse(found.cilium_version))
            except ValueError:
                cli = "cilium-dbg"  # an unusual tag: assume a current release
        cluster = KubeCluster(
            api=api,
            provider="kubeconfig",
            dataplane=dataplane,
            namespace=self._namespace,
            session=self.session,
            backend_image=self.backend_image,
            traffic=self._traffic(),
            dataplane_pods=DataplanePods.for_dataplane(dataplane, cli),
            node_access=agent,
            node_access_reason=self._node_access_problem or NODE_ACCESS_HINT,
            facts=facts,
            hooks=ClusterHooks(
                background_refusal=None if self.allow_background else BACKGROUND_REFUSAL,
                restrict_apply_to_namespace=True,
            ),
        )
        with self._lock:
            self._clusters.append(cluster)
        return cluster

    def close(self) -> None:
        """Close clusters and delete the session namespace (and with it the node agent).

        Every step runs even when an earlier one fails; then one DataplaneError names every
        failure (as the lab's provider does).
        """
        with self._lock:
            clusters, self._clusters = self._clusters, []
            namespace, self._namespace = self._namespace, None
            api = self._api
        errors: list[str] = []
        for cluster in clusters:
            try:
                cluster.close()
            except Exception as exc:  # keep closing the others
                errors.append(str(exc))
        if api is not None:
            if namespace is not None:
                try:
                    api.delete("v1", "Namespace", namespace)
                except Exception as exc:
                    errors.append(f"delete namespace {namespace}: {exc}")
            try:
                api.close()
            except Exception as exc:
                errors.append(f"close the API client: {exc}")
            with self._lock:
                self._api = None
        if errors:
            raise DataplaneError(
                f"kubeconfig cleanup incomplete ({self.where}): " + "; ".join(errors)
            )


def plan_text(option: Callable[[str], Any]) -> str:
    """What ``--dataplane-plan`` prints for the kubeconfig provider (nothing is contacted)."""
    provider = KubeconfigProvider.from_options(option)
    expected = ", ".join(option("dataplane"))
    if provider.service_type == "LoadBalancer":
        path = "LoadBalancer Services, reached at their load-balancer address"
    elif provider.node_address:
        path = f"NodePort Services, reached at {provider.node_address}"
    else:
        path = "NodePort Services, reached at a node's ExternalIP, else its InternalIP"
    lines = [
        "pytest-dataplane plan: provider kubeconfig (an existing cluster; none is created or "
        "deleted)",
        f"cluster: {provider.where}",
        f"expected dataplane(s): {expected}; the dataplane is detected (kube-proxy ConfigMap "
        "or DaemonSet, Cilium DaemonSet and cilium-config) and tests expecting another one "
        "are skipped with what was found",
        "steps:",
        "    1. create namespace dpt-<session> labelled app.kubernetes.io/managed-by="
        "pytest-dataplane (removed at the end, or by python -m pytest_dataplane cleanup "
        "--kubeconfig PATH)",
        "    2. "
        + (
            f"deploy the privileged node agent DaemonSet ({provider.node_image}) in it"
            if provider.node_access
            else "no node access (rule counts and CPU skip; --dataplane-node-access enables them)"
        ),
        f"    3. tests deploy {provider.backend_image} (agnhost netexec) behind {path}",
        "    4. background services: "
        + ("allowed" if provider.allow_background else "refused (--dataplane-allow-background)"),
    ]
    return "\n".join(lines) + "\n"
