"""A real Kubernetes cluster in the lab: the story's kubectl commands, the real kube-proxy's
rules and metrics, and a root namespace that nothing changes.

Skipped (with the reason) where the Kubernetes binaries are not built
(``python -m pytest_dataplane kube build``) or without root.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from kubekit import binaries_or_skip, in_netns, root_state, state_diff, wait_for

from pytest_dataplane.providers.kubeconfig.detect import kube_proxy_mode_from_configmap
from pytest_dataplane.providers.lab.kube import plan
from pytest_dataplane.providers.lab.kube.lab import KubeLab, detect_iptables_backend
from pytest_dataplane.providers.lab.kube.probe import get_json

ROLLOUT_TIMEOUT = 240


def kubectl(lab: KubeLab, *args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        [*lab.kubectl(), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


def ask(lab: KubeLab, url: str, count: int) -> list[dict[str, str]]:
    """``count`` requests (a new connection each) from the client namespace; their X- headers."""
    code = (
        "import http.client, json, sys, urllib.parse\n"
        "u = urllib.parse.urlsplit(sys.argv[1]); out = []\n"
        "for _ in range(int(sys.argv[2])):\n"
        "    c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=5)\n"
        "    c.request('GET', '/', headers={'Connection': 'close'}); r = c.getresponse()\n"
        "    r.read(); out.append({k: v for k, v in r.getheaders() if k.startswith('X-')})\n"
        "    c.close()\n"
        "print(json.dumps(out))\n"
    )
    return json.loads(in_netns(lab.client_netns, sys.executable, "-c", code, url, str(count)))  # type: ignore[no-any-return]


def dnat_targets(lab: KubeLab, service: str) -> set[str]:
    """The endpoints kube-proxy's iptables rules on node 0 send ``service`` to."""
    rules = in_netns(lab.node_netns(0), "iptables-save", "-t", "nat")
    return {
        match.group(1)
        for line in rules.splitlines()
        if f'"{service}' in line and "-j DNAT" in line
        if (match := re.search(r"--to-destination (\S+)", line))
    }


def pods(lab: KubeLab, selector: str) -> list[dict[str, Any]]:
    return json.loads(kubectl(lab, "get", "pods", "-l", selector, "-o", "json"))["items"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def root_before() -> dict[str, str]:
    return root_state()


@pytest.fixture(scope="module")
def iptables_lab(root_before: dict[str, str]) -> Iterator[KubeLab]:
    binaries_or_skip()
    with KubeLab(dataplane="iptables", progress=lambda m: print(f"lab: {m}")) as lab:
        print(f"boot timings: {lab.timings}")
        yield lab


def test_the_cluster_boots_with_ready_nodes(iptables_lab: KubeLab, record_property) -> None:
    lab = iptables_lab
    record_property("boot_seconds", round(lab.timings["boot"], 2))
    nodes = json.loads(kubectl(lab, "get", "nodes", "-o", "json"))["items"]
    assert [n["metadata"]["name"] for n in nodes] == ["node-0"]
    (node,) = nodes
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert ready["Ready"] == "True"
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == lab.plan.node_ip(0)  # type: ignore[union-attr]
    version = kubectl(lab, "version", "-o", "json")
    server = json.loads(version)["serverVersion"]["gitVersion"]
    assert server.startswith("v1.37."), server
    # The kubernetes Service has the first ClusterIP and the API server behind it.
    svc = json.loads(kubectl(lab, "get", "service", "kubernetes", "-o", "json"))
    assert svc["spec"]["clusterIP"] == lab.plan.kubernetes_service_ip  # type: ignore[union-attr]


def test_the_story_rolls_v2_out_behind_the_cluster_ip(iptables_lab: KubeLab) -> None:
    lab = iptables_lab
    kubectl(lab, "create", "deployment", "backend", "--image=backend:v1", "--replicas=3")
    kubectl(lab, "expose", "deployment", "backend", "--port=80")
    kubectl(lab, "scale", "deploy/backend", "--replicas=6")
    kubectl(lab, "set", "image", "deploy/backend", "backend=backend:v2")
    kubectl(lab, "rollout", "status", "deploy/backend", "-w", timeout=ROLLOUT_TIMEOUT)

    cluster_ip = kubectl(lab, "get", "service", "backend", "-o", "jsonpath={.spec.clusterIP}")
    v2 = [
        p
        for p in pods(lab, "app=backend")
        if p["spec"]["containers"][0]["image"] == "backend:v2"
        and not p["metadata"].get("deletionTimestamp")
    ]
    assert len(v2) == 6
    wanted = {f"{p['status']['podIP']}:80" for p in v2}
    # Old pods may still be in their grace period: wait until kube-proxy routes to the new
    # ones only (its rules, read from the node), then every answer must come from v2.
    wait_for(
        lambda: dnat_targets(lab, "default/backend") == wanted,
        timeout=60,
        what=f"kube-proxy's rules on the v2 endpoints {sorted(wanted)}",
    )
    answers = ask(lab, f"http://{cluster_ip}:80/", 40)
    assert {a["X-Version"] for a in answers} == {"v2"}
    assert len({a["X-Pod"] for a in answers}) > 1  # load-balanced over several pods


def test_kube_proxy_chains_and_metrics(iptables_lab: KubeLab) -> None:
    lab = iptables_lab
    save = in_netns(lab.node_netns(0), "iptables-save")
    for chain in ("KUBE-SERVICES", "KUBE-SVC-", "KUBE-SEP-", "KUBE-PROXY-FIREWALL"):
        assert f":{chain}" in save, chain
    assert "default/kubernetes:https" in save
    metrics = lab.proxy_metrics(0)
    for name in (
        "kubeproxy_sync_proxy_rules_duration_seconds",
        "kubeproxy_network_programming_duration_seconds",
    ):
        assert f"{name}_count" in metrics, name
    # Served on the node's loopback only: not from the client namespace.
    assert lab.plan is not None
    unreachable = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            lab.client_netns,
            "curl",
            "-s",
            "-m",
            "2",
            f"http://{lab.plan.node_ip(0)}:10249/metrics",
        ],
        capture_output=True,
        check=False,
    )
    assert unreachable.returncode != 0


def test_kube_proxy_setup_defaults(iptables_lab: KubeLab) -> None:
    lab = iptables_lab
    # "auto": the backend the machine's own iptables is; kube-proxy's rules are there.
    backend = detect_iptables_backend()
    assert lab.iptables_backend == backend
    assert ":KUBE-SERVICES" in in_netns(lab.node_netns(0), f"iptables-{backend}-save")
    configz = get_json(lab.node_netns(0), f"http://{plan.PROXY_METRICS}/configz")
    assert configz["kubeproxy.config.k8s.io"]["iptables"]["minSyncPeriod"] == "1s"
    configmap = json.loads(
        kubectl(lab, "-n", "kube-system", "get", "configmap", "kube-proxy", "-o", "json")
    )
    assert kube_proxy_mode_from_configmap(configmap) == "iptables"
    assert lab.dataplane_cgroups(0) == [lab.processes["kube-proxy-node-0"].cgroup]
    assert lab.client_cgroup is None
    assert lab.ebpf_programming() == []


def test_kube_proxy_leaves_the_root_namespace_alone(
    iptables_lab: KubeLab, root_before: dict[str, str]
) -> None:
    # kube-proxy has synced (the cluster is ready) and runs; the root namespace's firewall,
    # routes, addresses, links and sysctls are what they were before the cluster booted.
    assert iptables_lab.proxy_synced(0)
    assert state_diff(root_before, root_state()) == {}


@pytest.mark.parametrize("nodes", [2])
def test_nftables_mode_on_two_nodes(nodes: int, root_before: dict[str, str]) -> None:
    binaries_or_skip()
    with KubeLab(dataplane="nftables", nodes=nodes) as lab:
        kubectl(lab, "create", "deployment", "web", "--image=backend:v1", "--replicas=4")
        kubectl(lab, "expose", "deployment", "web", "--port=80")
        kubectl(lab, "rollout", "status", "deploy/web", "-w", timeout=ROLLOUT_TIMEOUT)
        placed = {p["spec"]["nodeName"] for p in pods(lab, "app=web")}
        assert placed <= {"node-0", "node-1"}
        cluster_ip = kubectl(lab, "get", "service", "web", "-o", "jsonpath={.spec.clusterIP}")
        wanted = {p["status"]["podIP"] for p in pods(lab, "app=web")}
        assert len(wanted) == 4

        def table() -> str:
            text = in_netns(lab.node_netns(0), "nft", "list", "table", "ip", "kube-proxy")
            return text if cluster_ip in text and all(ip in text for ip in wanted) else ""

        listed = wait_for(
            table, timeout=60, what="the web service and its pods in kube-proxy's nftables table"
        )
        assert "chain service-" in listed
        assert "default/web" in listed
        # kube-proxy 1.37 picks one of the 4 endpoints in the service chain itself.
        assert "numgen random mod 4" in listed
        configmap = json.loads(
            kubectl(lab, "-n", "kube-system", "get", "configmap", "kube-proxy", "-o", "json")
        )
        assert kube_proxy_mode_from_configmap(configmap) == "nftables"
        # No iptables rules from kube-proxy in nftables mode.
        assert "KUBE-SVC-" not in in_netns(lab.node_netns(0), "iptables-save")
        answers = ask(lab, f"http://{cluster_ip}:80/", 80)
        assert {a["X-Version"] for a in answers} == {"v1"}
        names = {p["metadata"]["name"] for p in pods(lab, "app=web")}
        answered = {a["X-Pod"] for a in answers}
        assert answered <= names
        # Pods on node 1 answer through node 0's rules and the node network (the scheduler
        # spreads replicas over nodes; 80 requests over 4 pods miss one with p = 1e-10).
        remote = {
            p["metadata"]["name"] for p in pods(lab, "app=web") if p["spec"]["nodeName"] == "node-1"
        }
        assert remote <= answered
        assert state_diff(root_before, root_state()) == {}
