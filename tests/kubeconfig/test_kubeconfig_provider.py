"""The kubeconfig provider against the in-memory API: detection as an expectation, the
session namespace's lifecycle, node access only on request, and cleanup."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_dataplane.errors import DataplaneError, DataplaneSkip, DataplaneUnavailable
from pytest_dataplane.providers.k8s.api import ExecResult, api_error
from pytest_dataplane.providers.k8s.testing import MemoryApi, matches_selector
from pytest_dataplane.providers.kubeconfig import KubeconfigProvider
from pytest_dataplane.providers.kubeconfig import cleanup as kube_cleanup
from pytest_dataplane.providers.kubeconfig.agent import AgentNodes, agent_daemonset
from pytest_dataplane.providers.kubeconfig.session import cleanup, session_namespace

KUBE_PROXY_CM = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "kube-proxy", "namespace": "kube-system", "labels": {"app": "kube-proxy"}},
    "data": {"config.conf": "kind: KubeProxyConfiguration\nmode: ipvs\n"},
}
KUBE_PROXY_DS = {
    "apiVersion": "apps/v1",
    "kind": "DaemonSet",
    "metadata": {
        "name": "kube-proxy",
        "namespace": "kube-system",
        "labels": {"k8s-app": "kube-proxy"},
    },
    "spec": {
        "template": {"spec": {"containers": [{"name": "kube-proxy", "command": ["kube-proxy"]}]}}
    },
}
NODES = [
    {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": addresses},
    }
    for name, addresses in (
        ("node-b", [{"type": "InternalIP", "address": "10.0.0.12"}]),
        (
            "node-a",
            [
                {"type": "InternalIP", "address": "10.0.0.11"},
                {"type": "ExternalIP", "address": "203.0.113.11"},
            ],
        ),
    )
]


def play_daemonsets(api: MemoryApi, verb: str, obj: dict[str, Any]) -> None:
    """The DaemonSet controller: an agent pod per node, all ready at once."""
    if obj["kind"] != "DaemonSet" or verb != "create":
        return
    meta = obj["metadata"]
    key = (obj["apiVersion"], "DaemonSet", meta["namespace"], meta["name"])
    api.objects[key]["status"] = {"desiredNumberScheduled": 2, "numberReady": 2}
    for node in ("node-a", "node-b"):
        api.add(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"agent-{node}",
                    "namespace": meta["namespace"],
                    "labels": obj["spec"]["template"]["metadata"]["labels"],
                },
                "spec": {"nodeName": node},
                "status": {"phase": "Running"},
            }
        )


def make_api(*objects: dict[str, Any]) -> MemoryApi:
    api = MemoryApi()
    api.add(*NODES, *objects)
    api.reactors.append(play_daemonsets)
    return api


def provider(api: MemoryApi, **kw: Any) -> KubeconfigProvider:
    return KubeconfigProvider(api_factory=lambda: api, **kw)


def test_detected_dataplane_is_an_expectation() -> None:
    api = make_api(KUBE_PROXY_CM, KUBE_PROXY_DS)
    p = provider(api)
    assert p.availability("ipvs") is None
    reason = p.availability("ebpf")
    assert reason == (
        "the cluster runs ipvs (kube-proxy ConfigMap kube-system/kube-proxy: mode ipvs), not ebpf"
    )
    with pytest.raises(DataplaneUnavailable, match="not iptables"):
        p.create("iptables")
    # nothing was created for a mismatch, and detection read only kube-system
    assert not [c for c in api.calls if c.verb == "create"]
    assert {c.namespace for c in api.calls if c.verb in ("get", "list")} <= {"kube-system"}
    p.close()


def test_unreachable_cluster_names_the_options() -> None:
    def broken() -> MemoryApi:
        raise ConnectionRefusedError("connection refused")

    p = KubeconfigProvider(kubeconfig="/etc/staging.yaml", context="stage", api_factory=broken)
    reason = p.availability("iptables")
    assert reason is not None
    assert reason.startswith("cannot reach a cluster through /etc/staging.yaml, context stage:")
    assert "--dataplane-kubeconfig" in reason
    assert "--dataplane-context" in reason


def test_session_namespace_lifecycle_without_node_access() -> None:
    api = make_api(KUBE_PROXY_CM, KUBE_PROXY_DS)
    p = provider(api)
    cluster = p.create("ipvs")
    namespace = f"dpt-{p.session}"
    assert cluster.namespace == namespace
    created = [(c.kind, c.name) for c in api.calls if c.verb == "create"]
    assert created == [("Namespace", namespace)]  # no agent without --dataplane-node-access
    ns = api.get("v1", "Namespace", namespace)
    assert ns["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "pytest-dataplane",
        "pytest-dataplane/session": p.session,
        "pytest-dataplane/role": "session",
    }
    assert cluster.traffic.node_host == "203.0.113.11"  # an ExternalIP first
    with pytest.raises(DataplaneSkip, match="--dataplane-node-access"):
        cluster.rule_count()
    with pytest.raises(DataplaneSkip, match="--dataplane-allow-background"):
        cluster.add_background_services(100)
    assert cluster.fingerprint()["kube_proxy_mode"] == "ipvs"
    p.close()
    assert ("delete", "Namespace", namespace) in [(c.verb, c.kind, c.name) for c in api.calls]
    assert api.closed
    with pytest.raises(Exception, match="not found"):
        api.get("v1", "Namespace", namespace)


def test_node_access_deploys_the_agent_in_the_session_namespace() -> None:
    api = make_api(KUBE_PROXY_CM, KUBE_PROXY_DS)
    ran: list[tuple[str, list[str]]] = []

    def run(ns: str, pod: str, container: str | None, argv: list[str]) -> ExecResult:
        ran.append((pod, argv))
        return ExecResult(
            "### pytest-dataplane iptables-nft-save\n*nat\n-A KUBE-SERVICES -j X\nCOMMIT\n", "", 0
        )

    api.exec_handler = run
    p = provider(api, node_access=True, allow_background=True, node_address="192.0.2.7")
    cluster = p.create("ipvs")
    namespace = f"dpt-{p.session}"
    ns = api.get("v1", "Namespace", namespace)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    ds = api.get("apps/v1", "DaemonSet", "dpt-node-agent", namespace)
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] and pod["hostPID"]
    assert pod["containers"][0]["securityContext"] == {"privileged": True}
    assert cluster.traffic.node_host == "192.0.2.7"
    assert cluster.hooks.background_refusal is None
    count = cluster.rule_count()
    assert count.total == 2  # one KUBE- line on each of 2 nodes
    assert [r[0] for r in ran if "iptables" in r[1][-1]] == ["agent-node-a", "agent-node-b"]
    assert ran[0][1][:5] == ["nsenter", "-t", "1", "-m", "-u"]
    p.close()


def test_load_balancer_traffic_path() -> None:
    api = make_api(KUBE_PROXY_CM)
    p = provider(api, service_type="LoadBalancer")
    cluster = p.create("ipvs")
    assert cluster.traffic.service_type == "LoadBalancer"
    assert cluster.traffic.url({"spec": {"ports": [{"port": 80}]}, "status": {}}) is None
    assert (
        cluster.traffic.url(
            {
                "spec": {"ports": [{"port": 80}]},
                "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.4"}]}},
            }
        )
        == "http://198.51.100.4:80/"
    )
    p.close()


def test_no_node_address_says_which_options_make_a_path() -> None:
    api = MemoryApi()
    api.add(
        KUBE_PROXY_CM, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}, "status": {}}
    )
    p = provider(api)
    cluster = p.create("ipvs")
    with pytest.raises(
        Exception, match=r"--dataplane-node-address=.*--dataplane-service-type=LoadBalancer"
    ):
        cluster.traffic.url({"spec": {"ports": [{"name": "http", "nodePort": 30001}]}})
    p.close()


def test_agent_object_and_errors() -> None:
    ds = agent_daemonset("dpt-x", session="x", image="busybox:test")
    assert ds["spec"]["template"]["spec"]["tolerations"] == [{"operator": "Exists"}]
    assert ds["metadata"]["labels"]["pytest-dataplane/role"] == "node-agent"
    api = MemoryApi()
    api.exec_handler = lambda ns, pod, c, argv: ExecResult("", "nsenter: not found", 127)
    api.add(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "agent-1",
                "namespace": "dpt-x",
                "labels": {"app.kubernetes.io/name": "dpt-node-agent"},
            },
            "spec": {"nodeName": "n1"},
            "status": {"phase": "Running"},
        }
    )
    nodes = AgentNodes(api, "dpt-x")
    assert nodes.nodes() == ["n1"]
    with pytest.raises(Exception, match="exit status 127: nsenter: not found"):
        nodes.run("n1", "true")
    with pytest.raises(Exception, match="no node agent runs on n2"):
        nodes.run("n2", "true")


def test_cleanup_selects_only_our_namespaces() -> None:
    api = MemoryApi()
    ours = [session_namespace("aaaaaa"), session_namespace("bbbbbb", privileged=True)]
    theirs = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "payments", "labels": {"app.kubernetes.io/managed-by": "helm"}},
    }
    api.add(*ours, theirs)
    said: list[str] = []
    assert cleanup(api, dry_run=True, say=said.append) == ["dpt-aaaaaa", "dpt-bbbbbb"]
    assert said[0].startswith("would delete namespace dpt-aaaaaa (created 20")
    assert not [c for c in api.calls if c.verb == "delete"]
    list_call = next(c for c in api.calls if c.verb == "list")
    assert list_call.body == "app.kubernetes.io/managed-by=pytest-dataplane"
    assert not matches_selector(theirs["metadata"]["labels"], list_call.body)
    assert cleanup(api, session="bbbbbb", say=said.append) == ["dpt-bbbbbb"]
    assert cleanup(api, say=said.append) == ["dpt-aaaaaa"]
    assert cleanup(api, say=said.append) == []
    assert said[-1].startswith("nothing to clean up")
    assert [k[3] for k in api.objects] == ["payments"]


def test_cleanup_command_main() -> None:
    api = MemoryApi()
    api.add(session_namespace("cccccc"))
    assert kube_cleanup.main(kubeconfig="/k", api_factory=lambda: api) == 0
    assert api.objects == {}
    assert api.closed


def test_cleanup_command_line_on_an_unreachable_cluster(tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://127.0.0.1:1'}\n"
        "contexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\n"
        "users:\n- name: u\n  user: {token: x}\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest_dataplane",
            "cleanup",
            "--kubeconfig",
            str(config),
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert f"cleanup: cannot reach a cluster through {config} (context current)" in done.stderr
    context_only = subprocess.run(
        [sys.executable, "-m", "pytest_dataplane", "cleanup", "--context", "x"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert context_only.returncode == 2
    assert "--context needs --kubeconfig" in context_only.stderr


def test_plugin_skips_when_the_cluster_is_unreachable(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile("def test_story(dataplane):\n    raise AssertionError('no cluster')\n")
    result = pytester.runpytest(
        "--dataplane-provider=kubeconfig",
        f"--dataplane-kubeconfig={tmp_path / 'missing'}",
        "--dataplane=iptables",
        "-rs",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        ["*iptables on kubeconfig: cannot reach a cluster through *missing*--dataplane-kubeconfig*"]
    )


def test_close_closes_everything_and_names_every_failure() -> None:
    api = make_api(KUBE_PROXY_CM, KUBE_PROXY_DS)
    p = provider(api, kubeconfig="/etc/staging.yaml")
    first, second = p.create("ipvs"), p.create("ipvs")
    stopped: list[str] = []

    def failing(label: str) -> Callable[[], None]:
        def close() -> None:
            stopped.append(label)
            raise RuntimeError(f"{label} is stuck")

        return close

    def recorded(label: str, stop: Callable[[], None]) -> Callable[[], None]:
        def wrapper() -> None:
            stopped.append(label)
            stop()

        return wrapper

    assert first.prober is not None and second.prober is not None
    assert first.watcher is not None and second.watcher is not None
    first.watcher.stop = recorded("first watch", first.watcher.stop)  # type: ignore[method-assign]
    second.watcher.stop = recorded("second watch", second.watcher.stop)  # type: ignore[method-assign]
    first.prober.close = failing("first prober")  # type: ignore[method-assign]
    second.prober.close = failing("second prober")  # type: ignore[method-assign]

    def refuse_namespace_deletion(api: MemoryApi, verb: str, obj: dict[str, Any]) -> None:
        if verb == "delete" and obj["kind"] == "Namespace":
            raise RuntimeError("admission webhook denied the request")

    api.reactors.append(refuse_namespace_deletion)
    with pytest.raises(DataplaneError) as info:
        p.close()
    message = str(info.value)
    assert message.startswith(
        "kubeconfig cleanup incomplete (/etc/staging.yaml, context (current)): "
    )
    namespace = first.namespace
    assert (
        "kubeconfig cluster (current) (ipvs) did not close cleanly: prober: first prober is stuck"
    ) in message
    assert "prober: second prober is stuck" in message
    assert f"delete namespace {namespace}: admission webhook denied the request" in message
    # The first cluster's failure did not keep the second from closing.
    assert stopped == ["first watch", "first prober", "second watch", "second prober"]
    assert api.closed


# ---------------------------------------------------------------------- node access refused


class Refused(Exception):
    """What the official client raises for an API error: HTTP status and a Status body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"({status})\nReason: Unprocessable Entity\nHTTP response headers: ...")
        self.status = status
        self.body = json.dumps({"kind": "Status", "message": message, "code": status}).encode()


def _skip_reason(cluster: Any) -> str:
    with pytest.raises(DataplaneSkip) as info:
        cluster.rule_count()
    return str(info.value)


def test_node_access_on_lab_nodes_says_why_and_the_run_goes_on() -> None:
    lab_node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "node-0"},
        "status": {
            "addresses": [{"type": "InternalIP", "address": "10.213.0.10"}],
            "nodeInfo": {"containerRuntimeVersion": "pytest-dataplane-lab://1"},
        },
    }
    api = MemoryApi()
    api.add(lab_node, KUBE_PROXY_CM)
    p = provider(api, node_access=True)
    cluster = p.create("ipvs")
    # Nothing was tried on the nodes: no DaemonSet.
    assert [c.kind for c in api.calls if c.verb == "create"] == ["Namespace"]
    reason = _skip_reason(cluster)
    assert reason.startswith(
        "counting rules needs node access: --dataplane-node-access was given, but node(s) "
        "node-0 are run by the pytest-dataplane lab's node agent"
    )
    assert "--dataplane-provider=lab" in reason
    facts = cluster.fingerprint()
    assert facts["node_access"] is False
    assert "lab's node agent" in facts["node_access_unavailable"]
    p.close()


def test_a_refused_privileged_daemonset_is_named_with_the_api_servers_message() -> None:
    policy = (
        'DaemonSet.apps "dpt-node-agent" is invalid: spec.template.spec.containers[0]'
        ".securityContext.privileged: Forbidden: disallowed by cluster policy"
    )

    def refuse(api: MemoryApi, verb: str, obj: dict[str, Any]) -> None:
        if verb == "create" and obj["kind"] == "DaemonSet":
            raise Refused(422, policy)

    api = make_api(KUBE_PROXY_CM)
    api.reactors.insert(0, refuse)
    p = provider(api, node_access=True)
    cluster = p.create("ipvs")
    reason = _skip_reason(cluster)
    assert (
        "--dataplane-node-access was given, but the API server refused the privileged "
        f"node-agent DaemonSet (422): {policy}"
    ) in reason
    assert "HTTP response headers" not in reason
    p.close()


def test_agent_pods_that_cannot_start_end_the_wait_and_the_daemonset_goes() -> None:
    def broken_pods(api: MemoryApi, verb: str, obj: dict[str, Any]) -> None:
        if obj["kind"] != "DaemonSet" or verb != "create":
            return
        meta = obj["metadata"]
        key = (obj["apiVersion"], "DaemonSet", meta["namespace"], meta["name"])
        api.objects[key]["status"] = {"desiredNumberScheduled": 1, "numberReady": 0}
        api.add(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "agent-node-a",
                    "namespace": meta["namespace"],
                    "labels": obj["spec"]["template"]["metadata"]["labels"],
                },
                "spec": {"nodeName": "node-a"},
                "status": {
                    "phase": "Pending",
                    "containerStatuses": [
                        {
                            "name": "agent",
                            "state": {
                                "waiting": {
                                    "reason": "CreateContainerConfigError",
                                    "message": "container has runAsNonRoot and image runs as root",
                                }
                            },
                        }
                    ],
                },
            }
        )

    api = MemoryApi()
    api.add(*NODES, KUBE_PROXY_CM)
    api.reactors.append(broken_pods)
    p = provider(api, node_access=True)
    cluster = p.create("ipvs")
    # At the first look, not after the 180 s readiness timeout: the kubelet will not start
    # it however long one waits.
    looks = [c for c in api.calls if c.verb == "get" and c.name == "dpt-node-agent"]
    assert len(looks) == 1
    namespace = f"dpt-{p.session}"
    assert ("delete", "DaemonSet", "dpt-node-agent") in [
        (c.verb, c.kind, c.name) for c in api.calls
    ]
    reason = _skip_reason(cluster)
    assert (
        f"node-agent pods of DaemonSet {namespace}/dpt-node-agent cannot start: agent-node-a: "
        "CreateContainerConfigError: container has runAsNonRoot and image runs as root"
    ) in reason
    p.close()


def test_api_error_prefers_the_status_message() -> None:
    assert api_error(Refused(403, "pods is forbidden: no")) == (403, "pods is forbidden: no")
    assert api_error(ConnectionResetError("reset by peer")) == (
        None,
        "ConnectionResetError: reset by peer",
    )
    # A body that is not a Status falls back to the exception's first line.
    odd = Refused(500, "x")
    odd.body = b"<html>bad gateway</html>"
    assert api_error(odd) == (500, "Refused: (500)")
