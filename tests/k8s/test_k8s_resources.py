"""Objects and patches sent to the Kubernetes API."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_dataplane.providers.k8s import resources


def test_deployment_object() -> None:
    dep = resources.deployment("backend", "dpt-abc", replicas=3, image="img:1", session="abc")
    assert dep["apiVersion"] == "apps/v1"
    assert dep["metadata"] == {
        "name": "backend",
        "namespace": "dpt-abc",
        "labels": {
            "app.kubernetes.io/managed-by": "pytest-dataplane",
            "pytest-dataplane/session": "abc",
            "pytest-dataplane/role": "workload",
            "app.kubernetes.io/name": "backend",
        },
    }
    spec = dep["spec"]
    assert spec["replicas"] == 3
    assert spec["selector"] == {"matchLabels": {"app.kubernetes.io/name": "backend"}}
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": "25%", "maxUnavailable": "25%"}
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "img:1"
    assert container["args"] == [
        "netexec",
        "--http-port=8080",
        "--udp-port=-1",
        "--delay-shutdown=1",
    ]
    assert container["readinessProbe"]["httpGet"] == {"path": "/hostname", "port": 8080}
    assert pod["terminationGracePeriodSeconds"] == 6


def test_service_object() -> None:
    svc = resources.service("backend", "ns", port=80, session="s")
    assert svc["spec"] == {
        "type": "NodePort",
        "selector": {"app.kubernetes.io/name": "backend"},
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
    }
    balanced = resources.service("b", "ns", port=80, session="s", service_type="LoadBalancer")
    assert balanced["spec"]["type"] == "LoadBalancer"


@pytest.mark.parametrize("name", ["Backend", "1st", "a_b", "x" * 64, "end-", ""])
def test_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="deploy name"):
        resources.deployment(name, "ns", replicas=1, image="i", session="s")


@pytest.mark.parametrize("value", [-1, True, 2.5])
def test_bad_replicas(value: Any) -> None:
    with pytest.raises(ValueError, match="replicas"):
        resources.deployment("b", "ns", replicas=value, image="i", session="s")


@pytest.mark.parametrize("value", [0, 70000, True])
def test_bad_ports(value: Any) -> None:
    with pytest.raises(ValueError, match="port"):
        resources.service("b", "ns", port=value, session="s")


def test_background_objects() -> None:
    svc = resources.background_service("dpt-bg-00001", "ns", session="s")
    assert "selector" not in svc["spec"]
    assert svc["metadata"]["labels"]["pytest-dataplane/role"] == "background"
    addresses = resources.background_addresses(3, 3)
    assert addresses == ["198.18.0.4", "198.18.0.5", "198.18.0.6"]
    eps = resources.background_slice("dpt-bg-00001", "ns", addresses, session="s")
    labels = eps["metadata"]["labels"]
    assert labels["kubernetes.io/service-name"] == "dpt-bg-00001"
    assert labels["endpointslice.kubernetes.io/managed-by"] == "pytest-dataplane"
    assert eps["addressType"] == "IPv4"
    assert [e["addresses"][0] for e in eps["endpoints"]] == addresses
    assert all(e["conditions"] == {"ready": True} for e in eps["endpoints"])
    assert eps["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]


def test_background_addresses_are_distinct_and_bounded() -> None:
    many = resources.background_addresses(0, 15_000)
    assert len(set(many)) == 15_000
    assert many[-1] == "198.18.58.152"
    with pytest.raises(ValueError, match=r"do not fit in 198\.18\.0\.0/15"):
        resources.background_addresses(131_000, 100)


def test_scale_patch() -> None:
    assert resources.scale_patch(6) == {"spec": {"replicas": 6}}
    with pytest.raises(ValueError, match="replicas"):
        resources.scale_patch(-2)


def test_rollout_patch() -> None:
    patch = resources.rollout_patch(max_surge=1, max_unavailable="0%", grace="2.5s", revision="r1")
    assert patch == {
        "spec": {
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": "0%"},
            },
            "template": {
                "metadata": {"annotations": {"pytest-dataplane/revision": "r1"}},
                "spec": {
                    "terminationGracePeriodSeconds": 8,
                    "containers": [
                        {
                            "name": "backend",
                            "args": [
                                "netexec",
                                "--http-port=8080",
                                "--udp-port=-1",
                                "--delay-shutdown=3",
                            ],
                        }
                    ],
                },
            },
        }
    }


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"max_surge": 0, "max_unavailable": 0}, "both 0"),
        ({"max_surge": "x", "max_unavailable": 1}, "max_surge"),
        ({"max_surge": 1, "max_unavailable": -1}, "max_unavailable"),
    ],
)
def test_rollout_patch_rejects(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resources.rollout_patch(grace="1s", revision="r", **kw)


def deployment(generation: int, **status: int) -> dict[str, Any]:
    return {"metadata": {"generation": generation}, "spec": {"replicas": 3}, "status": status}


@pytest.mark.parametrize(
    ("dep", "done"),
    [
        (
            deployment(2, observedGeneration=2, updatedReplicas=3, replicas=3, availableReplicas=3),
            True,
        ),
        (
            deployment(3, observedGeneration=2, updatedReplicas=3, replicas=3, availableReplicas=3),
            False,
        ),
        (
            deployment(2, observedGeneration=2, updatedReplicas=2, replicas=4, availableReplicas=3),
            False,
        ),
        (
            deployment(2, observedGeneration=2, updatedReplicas=3, replicas=4, availableReplicas=3),
            False,
        ),
        (
            deployment(2, observedGeneration=2, updatedReplicas=3, replicas=3, availableReplicas=2),
            False,
        ),
        ({"metadata": {"generation": 1}, "spec": {"replicas": 3}}, False),
    ],
)
def test_rollout_complete(dep: dict[str, Any], done: bool) -> None:
    assert resources.rollout_complete(dep) is done
    assert "wanted 3" in resources.rollout_status(dep)


def test_addresses_and_urls() -> None:
    node = {
        "status": {
            "addresses": [
                {"type": "Hostname", "address": "w1"},
                {"type": "InternalIP", "address": "172.18.0.3"},
                {"type": "ExternalIP", "address": "203.0.113.9"},
            ]
        }
    }
    assert resources.node_address(node) == "172.18.0.3"
    assert resources.node_address(node, prefer=("ExternalIP", "InternalIP")) == "203.0.113.9"
    assert resources.node_address({"status": {}}) is None
    svc = {
        "spec": {"ports": [{"name": "http", "port": 80, "nodePort": 31234}]},
        "status": {"loadBalancer": {"ingress": [{"hostname": "lb.example"}]}},
    }
    assert resources.node_port(svc) == 31234
    assert resources.node_port({"spec": {"ports": [{"name": "http", "port": 80}]}}) is None
    assert resources.lb_address(svc) == "lb.example"
    assert resources.lb_address({"status": {}}) is None
    assert resources.url_for("172.18.0.3", 31234) == "http://172.18.0.3:31234/"
    assert resources.url_for("fd00::3", 80) == "http://[fd00::3]:80/"
    assert resources.url_for("lb.example", 80) == "http://lb.example:80/"


@pytest.mark.parametrize(
    ("spec", "single", "every"),
    [
        ({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"]}, "10.96.0.10", {"10.96.0.10"}),
        (
            {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::a"]},
            "10.96.0.10",
            {"10.96.0.10", "fd00::a"},
        ),
        ({"clusterIP": "10.96.0.10"}, "10.96.0.10", {"10.96.0.10"}),  # without clusterIPs
        ({"clusterIP": "None", "clusterIPs": ["None"]}, None, set()),  # headless
        ({}, None, set()),  # not allocated yet
    ],
)
def test_cluster_ips(spec: dict[str, Any], single: str | None, every: set[str]) -> None:
    assert resources.cluster_ip({"spec": spec}) == single
    assert resources.cluster_ips({"spec": spec}) == every
