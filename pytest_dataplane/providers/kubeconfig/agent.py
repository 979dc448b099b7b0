"""Node access on an existing cluster: a privileged DaemonSet in the session namespace.

Deployed only with ``--dataplane-node-access``. Each agent pod shares the node's network and
PID namespaces; commands enter the node's mount namespace with ``nsenter -t 1`` and run the
node's own tools (``iptables-save``, ``nft``, the cgroup files), exactly as on a kind node.
It goes away with the namespace.

Where it cannot run, :func:`start_agent` says why instead of failing the run (the provider then
carries on without node access, and what needs it skips with that reason): nodes run by the
lab's node agent (whose pods are lab backends, not containers), an API server or admission
policy refusing privileged pods, agent pods that do not start.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, Final

from ...errors import DataplaneError
from ..k8s import resources
from ..k8s.api import KubeApi, api_error

__all__ = [
    "AGENT_IMAGE",
    "AgentNodes",
    "NodeAccessUnavailable",
    "agent_daemonset",
    "lab_nodes",
    "start_agent",
]

AGENT_NAME: Final = "dpt-node-agent"
# busybox carries nsenter, sh and sleep, which is all the agent needs.
AGENT_IMAGE: Final = "registry.k8s.io/e2e-test-images/busybox:1.36.1-1"
# Waiting reasons the kubelet gives for a container it will not start however long one
# waits (a bad image name or spec); image pulls are retried, so ErrImagePull is not here.
_HOPELESS: Final = frozenset(
    {
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


class NodeAccessUnavailable(DataplaneError):
    """The node agent cannot run on this cluster; the message says why."""


def lab_nodes(nodes: Iterable[Mapping[str, Any]]) -> list[str]:
    """Names of the nodes run by the lab's node agent (its container runtime is
    ``resources.LAB_RUNTIME``): their pods are lab backends in network namespaces, so nothing
    can share such a node's PID namespace."""
    return sorted(
        str(node["metadata"]["name"])
        for node in nodes
        if str(
            ((node.get("status") or {}).get("nodeInfo") or {}).get("containerRuntimeVersion", "")
        ).startswith(resources.LAB_RUNTIME)
    )


def _waiting(pods: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """``(pod, reason, message)`` of every agent container waiting with a reason."""
    found = []
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason"):
                found.append(
                    (
                        str(pod["metadata"]["name"]),
                        str(waiting["reason"]),
                        str(waiting.get("message") or "").strip()[:300],
                    )
                )
    return found


def start_agent(
    api: KubeApi,
    namespace: str,
    *,
    session: str,
    image: str = AGENT_IMAGE,
    timeout: float = 180.0,
) -> AgentNodes:
    """Deploy the node agent in ``namespace`` and wait until it runs on every node.

    Raises :class:`NodeAccessUnavailable` naming the reason when it cannot: lab nodes (checked
    before anything is created), the API server refusing the DaemonSet, or agent pods that
    do not become ready (their waiting reasons are given; the DaemonSet is then deleted so
    that it does not keep retrying for the rest of the session).
    """
    nodes, _ = api.list_items("v1", "Node")
    lab = lab_nodes(nodes)
    if lab:
        raise NodeAccessUnavailable(
            f"node(s) {', '.join(lab)} are run by the pytest-dataplane lab's node agent "
            f"(container runtime {resources.LAB_RUNTIME}...), whose pods are lab backends, not "
            "containers: the privileged node-agent DaemonSet cannot run there; the lab "
            "provider (--dataplane-provider=lab) reads rules and CPU in the node namespaces"
        )
    try:
        api.create(agent_daemonset(namespace, session=session, image=image))
    except DataplaneError:
        raise
    except Exception as exc:
        status, message = api_error(exc)
        if status in (401, 403, 422):
            raise NodeAccessUnavailable(
                f"the API server refused the privileged node-agent DaemonSet ({status}): {message}"
            ) from None
        raise
    agent = AgentNodes(api, namespace, timeout=timeout)
    try:
        agent.wait_ready()
    except NodeAccessUnavailable:
        try:
            api.delete("apps/v1", "DaemonSet", AGENT_NAME, namespace)
        except Exception as exc:  # the namespace goes at the end anyway; keep the news
            status, message = api_error(exc)
            raise NodeAccessUnavailable(
                f"{agent.last_problem}; deleting the DaemonSet failed too: {message}"
            ) from None
        raise
    return agent


def agent_daemonset(namespace: str, *, session: str, image: str = AGENT_IMAGE) -> dict[str, Any]:
    """The privileged node agent: hostNetwork, hostPID, tolerating every taint, idle until
    exec'd into."""
    labels = {**resources.managed_labels(session, "node-agent"), resources.APP_LABEL: AGENT_NAME}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": AGENT_NAME, "namespace": namespace, "labels": labels},
        "spec": {
            "selector": {"matchLabels": {resources.APP_LABEL: AGENT_NAME}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "hostNetwork": True,
                    "hostPID": True,
                    "tolerations": [{"operator": "Exists"}],
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "agent",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": [
                                "sh",
                                "-c",
                                "trap 'exit 0' TERM INT; while true; do sleep 3600 & wait; done",
                            ],
                            "securityContext": {"privileged": True},
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                        }
                    ],
                },
            },
        },
    }


class AgentNodes:
    """:class:`~pytest_dataplane.providers.k8s.nodes.NodeAccess` through the agent pods."""

    def __init__(self, api: KubeApi, namespace: str, *, timeout: float = 180.0) -> None:
        self.api = api
        self.namespace = namespace
        self.timeout = timeout
        self._pods: dict[str, str] = {}
        self.last_problem = ""

    def _agent_pods(self) -> list[dict[str, Any]]:
        pods, _ = self.api.list_items(
            "v1", "Pod", self.namespace, label_selector=f"{resources.APP_LABEL}={AGENT_NAME}"
        )
        return pods

    def wait_ready(self) -> None:
        """Wait until an agent pod runs on every node it was scheduled to; raises
        :class:`NodeAccessUnavailable` with the pods' waiting reasons when they cannot start
        or the timeout passes."""
        deadline = time.monotonic() + self.timeout
        status: dict[str, Any] = {}
        waiting: list[tuple[str, str, str]] = []
        while time.monotonic() < deadline:
            ds = self.api.get("apps/v1", "DaemonSet", AGENT_NAME, self.namespace)
            status = ds.get("status") or {}
            wanted = status.get("desiredNumberScheduled", 0)
            if wanted and status.get("numberReady", 0) == wanted:
                self._refresh()
                return
            waiting = _waiting(self._agent_pods())
            hopeless = [w for w in waiting if w[1] in _HOPELESS]
            if hopeless:
                self.last_problem = (
                    f"node-agent pods of DaemonSet {self.namespace}/{AGENT_NAME} cannot start: "
                    + "; ".join(f"{pod}: {reason}: {message}" for pod, reason, message in hopeless)
                )
                raise NodeAccessUnavailable(self.last_problem)
            time.sleep(1.0)
        seen = "; ".join(f"{pod}: {reason}: {message}" for pod, reason, message in waiting)
        self.last_problem = (
            f"node-agent DaemonSet {self.namespace}/{AGENT_NAME} not ready in {self.timeout:g} s "
            f"(ready {status.get('numberReady', 0)} of {status.get('desiredNumberScheduled', 0)}"
            + (f"; {seen}" if seen else "")
            + "); does Pod Security or a policy engine refuse privileged pods here?"
        )
        raise NodeAccessUnavailable(self.last_problem)

    def _refresh(self) -> None:
        pods = self._agent_pods()
        self._pods = {
            p["spec"]["nodeName"]: p["metadata"]["name"]
            for p in pods
            if p.get("spec", {}).get("nodeName")
            and (p.get("status") or {}).get("phase") == "Running"
        }

    def nodes(self) -> list[str]:
        if not self._pods:
            self._refresh()
        return sorted(self._pods)

    def run(self, node: str, script: str, *, timeout: float = 60.0) -> str:
        if node not in self._pods:
            self._refresh()
        if node not in self._pods:
            raise DataplaneError(f"no node agent runs on {node}")
        argv = ["nsenter", "-t", "1", "-m", "-u", "-i", "-n", "-p", "--", "sh", "-c", script]
        done = self.api.exec(self.namespace, self._pods[node], "agent", argv, timeout=timeout)
        if done.returncode != 0:
            raise DataplaneError(
                f"node agent on {node}: exit status {done.returncode}: {done.stderr.strip()[:1000]}"
            )
        return done.stdout
