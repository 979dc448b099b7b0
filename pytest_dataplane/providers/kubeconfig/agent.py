"""Node access on an existing cluster: a privileged DaemonSet in the session namespace.

Deployed only with ``--dataplane-node-access``. Each agent pod shares the node's network and
PID namespaces; commands enter the node's mount namespace with ``nsenter -t 1`` and run the
node's own tools (``iptables-save``, ``nft``, the cgroup files), exactly as on a kind node.
It goes away with the namespace.
"""

from __future__ import annotations

import time
from typing import Any, Final

from ...errors import DataplaneError
from ..k8s import resources
from ..k8s.api import KubeApi

__all__ = ["AGENT_IMAGE", "AgentNodes", "agent_daemonset"]

AGENT_NAME: Final = "dpt-node-agent"
# busybox carries nsenter, sh and sleep, which is all the agent needs.
AGENT_IMAGE: Final = "registry.k8s.io/e2e-test-images/busybox:1.36.1-1"


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

    def wait_ready(self) -> None:
        """Wait until an agent pod runs on every node it was scheduled to."""
        deadline = time.monotonic() + self.timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            ds = self.api.get("apps/v1", "DaemonSet", AGENT_NAME, self.namespace)
            status = ds.get("status") or {}
            wanted = status.get("desiredNumberScheduled", 0)
            if wanted and status.get("numberReady", 0) == wanted:
                self._refresh()
                return
            time.sleep(1.0)
        raise DataplaneError(
            f"node agent DaemonSet {self.namespace}/{AGENT_NAME} not ready in {self.timeout:g} s "
            f"(ready {status.get('numberReady', 0)} of {status.get('desiredNumberScheduled', 0)}); "
            "does Pod Security or a policy engine refuse privileged pods here?"
        )

    def _refresh(self) -> None:
        pods, _ = self.api.list_items(
            "v1", "Pod", self.namespace, label_selector=f"{resources.APP_LABEL}={AGENT_NAME}"
        )
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
