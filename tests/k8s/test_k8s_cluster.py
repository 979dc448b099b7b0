"""The Cluster protocol on Kubernetes, against the in-memory API with controllers played by
the test and a loopback HTTP server standing in for NodePorts (real connections)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from k8skit import Backends, Controllers

from pytest_dataplane.errors import DataplaneError, DataplaneSkip, DataplaneUnavailable
from pytest_dataplane.providers.k8s import resources
from pytest_dataplane.providers.k8s.api import ExecResult
from pytest_dataplane.providers.k8s.cluster import (
    DEPLOY_DRAIN,
    KubeCluster,
    format_events,
    load_manifests,
)
from pytest_dataplane.providers.k8s.dataplane import DataplanePods
from pytest_dataplane.providers.k8s.hooks import ClusterHooks
from pytest_dataplane.providers.k8s.metrics import PROGRAMMING_METRIC
from pytest_dataplane.providers.k8s.nodes import DUMP_SCRIPT
from pytest_dataplane.providers.k8s.testing import MemoryApi
from pytest_dataplane.providers.k8s.traffic import NodePortPath

DATA = Path(__file__).parent.parent / "data"
NS = "dpt-test1"
IDS = {"kind-worker": "a" * 64, "kind-control-plane": "b" * 64}


class FakeNodes:
    """Nodes that answer the scripts the way kind nodes do: recorded lab dumps, a growing
    histogram, and cgroup counters that grow by 0.05 s per read."""

    def __init__(self, *, metrics: bool = True, cgroups: bool = True) -> None:
        self.metrics = metrics
        self.cgroups = cgroups  # False: no cgroup with a CPU counter (find prints nothing)
        self.scripts: list[tuple[str, str]] = []
        self.observations = 0
        self.cpu = dict.fromkeys(IDS, 1.0)
        self.lock = threading.Lock()

    def nodes(self) -> list[str]:
        return sorted(IDS)

    def run(self, node: str, script: str, *, timeout: float = 60.0) -> str:
        with self.lock:
            self.scripts.append((node, script))
            if script == DUMP_SCRIPT:
                legacy = (DATA / "iptables-legacy-save.txt").read_text()
                return f"### pytest-dataplane iptables-legacy-save\n{legacy}"
            if PROGRAMMING_METRIC in script:
                if not self.metrics:
                    return ""
                fast = self.observations
                return (
                    f'{PROGRAMMING_METRIC}_bucket{{le="0.5"}} {fast}\n'
                    f'{PROGRAMMING_METRIC}_bucket{{le="1"}} {fast}\n'
                    f'{PROGRAMMING_METRIC}_bucket{{le="+Inf"}} {fast}\n'
                )
            if "find /sys/fs/cgroup" in script:
                return f"{IDS[node]} /sys/fs/cgroup/kubepods/{IDS[node]}\n" if self.cgroups else ""
            if "usage_usec" in script:
                self.cpu[node] += 0.05
                return (
                    f"/sys/fs/cgroup/kubepods/{IDS[node]} usage_usec {int(self.cpu[node] * 1e6)}\n"
                )
            raise AssertionError(f"unexpected script {script[:60]}")


def kube_proxy_pods(container: str = "kube-proxy", app: str = "kube-proxy") -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{app}-{node[-6:]}",
                "namespace": "kube-system",
                "labels": {"k8s-app": app},
            },
            "spec": {"nodeName": node},
            "status": {
                "containerStatuses": [{"name": container, "containerID": f"containerd://{cid}"}]
            },
        }
        for node, cid in IDS.items()
    ]


@pytest.fixture
def backends() -> Iterator[Backends]:
    server = Backends()
    yield server
    server.close()


def make_cluster(
    backends: Backends,
    *,
    dataplane: str = "iptables",
    nodes: FakeNodes | None = None,
    **kw: Any,
) -> tuple[KubeCluster, MemoryApi, Controllers]:
    api = MemoryApi()
    controllers = Controllers(api, backends)
    if dataplane == "ebpf":
        api.add(*kube_proxy_pods("cilium-agent", "cilium"))
    else:
        api.add(*kube_proxy_pods())
    cluster = KubeCluster(
        api=api,
        provider="kind",
        dataplane=dataplane,
        namespace=NS,
        session="test1",
        backend_image="agnhost:test",
        traffic=NodePortPath("127.0.0.1"),
        dataplane_pods=DataplanePods.for_dataplane(dataplane, "cilium-dbg"),
        node_access=nodes,
        node_access_reason="pass --dataplane-node-access",
        timeout=10.0,
        cpu_interval=0.05,
        **kw,
    )
    return cluster, api, controllers


@pytest.fixture
def iptables(backends: Backends) -> Iterator[tuple[KubeCluster, MemoryApi, FakeNodes]]:
    nodes = FakeNodes()
    cluster, api, _ = make_cluster(backends, nodes=nodes)
    yield cluster, api, nodes
    cluster.close()


def test_deploy_scale_rollout_events(iptables: tuple[KubeCluster, MemoryApi, FakeNodes]) -> None:
    cluster, api, _ = iptables
    backend = cluster.deploy("backend", replicas=3)
    assert backend.url.startswith("http://127.0.0.1:")
    assert len(backend.endpoints) == 3
    created = [c for c in api.calls if c.verb == "create"]
    assert [c.kind for c in created] == ["Deployment", "Service"]
    assert created[0].body == resources.deployment(
        "backend", NS, replicas=3, image="agnhost:test", session="test1", grace=DEPLOY_DRAIN
    )
    assert created[1].body["spec"]["type"] == "NodePort"

    backend.scale(6)
    patches = [c for c in api.calls if c.verb in ("patch", "merge-patch")]
    assert patches[-1].verb == "merge-patch"
    assert patches[-1].body == {"spec": {"replicas": 6}}
    assert len(backend.endpoints) == 6

    before = set(cluster.tracker.ready("backend").values())
    backend.rollout(max_surge=1, max_unavailable=0, grace="2s")
    rollout = [c for c in api.calls if c.verb == "patch"][-1]
    assert rollout.body["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert (
        "pytest-dataplane/revision" in rollout.body["spec"]["template"]["metadata"]["annotations"]
    )
    after = set(cluster.tracker.ready("backend").values())
    assert len(after) == 6
    assert not (before & after)

    events = cluster.events
    order = [e.name for e in events]
    assert order.count("endpoint-added") == 3 + 3 + 6
    assert order.count("endpoint-removed") == 6
    assert order.index("scale") < order.index("rollout-start") < order.index("rollout-end")
    start = order.index("rollout-start")
    assert set(order[start + 1 : order.index("rollout-end")]) == {
        "endpoint-added",
        "endpoint-removed",
    }
    assert [e.time for e in events] == sorted(e.time for e in events)
    assert all(e.detail["service"] == "backend" for e in events)
    assert backend.events == events
    scale = events[order.index("scale")]
    assert scale.detail == {"service": "backend", "replicas": 6, "previous": 3}
    with pytest.raises(KeyError, match="no service 'web' on iptables; deployed: backend"):
        cluster.service("web")
    assert cluster.service("backend") is backend
    with pytest.raises(ValueError, match="already deployed"):
        cluster.deploy("backend")


def test_reset_deletes_by_selector_and_starts_clean(
    iptables: tuple[KubeCluster, MemoryApi, FakeNodes],
) -> None:
    cluster, api, _ = iptables
    cluster.deploy("backend", replicas=2)
    cluster.add_background_services(3, endpoints=2)
    cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "team"},
                "data": {"a": "b"},
            }
        ]
    )
    cluster.reset()
    collections = [(c.kind, c.body) for c in api.calls if c.verb == "deletecollection"]
    assert collections == [
        ("Deployment", "pytest-dataplane/role=workload"),
        ("Service", "pytest-dataplane/role=workload"),
        ("Service", "pytest-dataplane/role=background"),
        ("EndpointSlice", "pytest-dataplane/role=background"),
    ]
    assert ("delete", "ConfigMap", NS, "team") in [
        (c.verb, c.kind, c.namespace, c.name) for c in api.calls
    ]
    remaining = {k[1] for k in api.objects if k[2] == NS}
    assert "Service" not in remaining
    assert "Deployment" not in remaining
    assert cluster.events == []
    with pytest.raises(KeyError):
        cluster.service("backend")


def test_background_services(iptables: tuple[KubeCluster, MemoryApi, FakeNodes]) -> None:
    cluster, api, _ = iptables
    cluster.add_background_services(20, endpoints=3)
    cluster.add_background_services(5, endpoints=3)
    services, _ = api.list_items(
        "v1", "Service", NS, label_selector="pytest-dataplane/role=background"
    )
    slices, _ = api.list_items("discovery.k8s.io/v1", "EndpointSlice", NS)
    assert len(services) == 25
    assert len(slices) == 25
    assert all("selector" not in s["spec"] for s in services)
    addresses = [e["addresses"][0] for s in slices for e in s["endpoints"]]
    assert len(addresses) == len(set(addresses)) == 75
    event = cluster.events[-1]
    assert event.name == "background-services"
    assert (event.detail["count"], event.detail["endpoints"], event.detail["total"]) == (5, 3, 25)
    # background slices make no endpoint events
    assert [e.name for e in cluster.events] == ["background-services", "background-services"]
    with pytest.raises(ValueError, match="count"):
        cluster.add_background_services(-1)
    with pytest.raises(ValueError, match="endpoints"):
        cluster.add_background_services(1, endpoints=0)


def _background(api: MemoryApi) -> tuple[list[str], list[str]]:
    selector = "pytest-dataplane/role=background"
    services, _ = api.list_items("v1", "Service", NS, label_selector=selector)
    slices, _ = api.list_items("discovery.k8s.io/v1", "EndpointSlice", NS, label_selector=selector)
    return (
        sorted(s["metadata"]["name"] for s in services),
        sorted(s["metadata"]["name"] for s in slices),
    )


def _creates(api: MemoryApi, kind: str) -> int:
    return sum(1 for c in api.calls if c.verb == "create" and c.kind == kind)


@pytest.fixture
def reusing(backends: Backends) -> Iterator[tuple[KubeCluster, MemoryApi, list[float]]]:
    settled: list[float] = []
    cluster, api, _ = make_cluster(
        backends, nodes=FakeNodes(), hooks=ClusterHooks(disposable=True, settle=settled.append)
    )
    yield cluster, api, settled
    cluster.close()


def test_background_services_are_taken_over_by_the_next_test(
    reusing: tuple[KubeCluster, MemoryApi, list[float]],
) -> None:
    cluster, api, _ = reusing
    cluster.add_background_services(4, endpoints=2)
    cluster.reset()
    # Kept for the next test, not deleted.
    assert _background(api)[0] == [f"dpt-bg-0000{i}" for i in range(4)]
    assert cluster.events == []
    cluster.add_background_services(6, endpoints=2)
    services, slices = _background(api)
    assert services == [f"dpt-bg-0000{i}" for i in range(6)]
    assert slices == [f"{name}-1" for name in services]
    assert _creates(api, "Service") == 6  # 4, then only the 2 missing
    event = cluster.events[-1]
    assert (event.detail["count"], event.detail["reused"], event.detail["total"]) == (6, 4, 6)
    addresses = [
        e["addresses"][0]
        for s in api.list_items("discovery.k8s.io/v1", "EndpointSlice", NS)[0]
        for e in s["endpoints"]
    ]
    assert len(addresses) == len(set(addresses)) == 12
    # Fewer asked for: the surplus is deleted, the dataplane settles, the window restarts.
    cluster.reset()
    cluster.add_background_services(3, endpoints=2)
    assert _background(api) == (
        [f"dpt-bg-0000{i}" for i in range(3)],
        [f"dpt-bg-0000{i}-1" for i in range(3)],
    )
    assert _creates(api, "Service") == 6


def test_reset_on_a_disposable_cluster_stops_pods_without_their_drain(
    reusing: tuple[KubeCluster, MemoryApi, list[float]],
) -> None:
    cluster, api, _ = reusing
    cluster.deploy("backend", replicas=2)
    cluster.reset()
    collections = [(c.kind, c.body) for c in api.calls if c.verb == "deletecollection"]
    workload = "pytest-dataplane/role=workload"
    assert collections == [
        ("Deployment", workload),
        ("ReplicaSet", ""),
        ("Pod", ("", 0)),
        ("Service", workload),
    ]


def test_other_first_use_deletes_kept_background_services(
    reusing: tuple[KubeCluster, MemoryApi, list[float]],
) -> None:
    cluster, api, settled = reusing
    cluster.add_background_services(5, endpoints=3)
    cluster.reset()
    settles = len(settled)
    cluster.deploy("backend", replicas=1)
    assert _background(api) == ([], [])
    assert len(settled) == settles + 1  # waited for the dataplane before the window
    assert "background-services" not in [e.name for e in cluster.events]
    cluster.reset()
    # Another shape of background services: none taken over.
    cluster.add_background_services(2, endpoints=3)
    cluster.reset()
    cluster.add_background_services(2, endpoints=1)
    assert cluster.events[-1].detail["reused"] == 0
    services, _ = _background(api)
    assert len(services) == 2
    slices, _ = api.list_items(
        "discovery.k8s.io/v1", "EndpointSlice", NS, label_selector="pytest-dataplane/role"
    )
    assert [len(s["endpoints"]) for s in slices] == [1, 1]


@pytest.mark.parametrize(
    "first_use",
    [
        lambda c: c.rule_count(),
        lambda c: c.cpu_seconds(),
        lambda c: c.programming_latencies(),
        lambda c: c.apply(
            [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {}}]
        ),
    ],
    ids=["rule_count", "cpu_seconds", "programming_latencies", "apply"],
)
def test_every_measurement_sees_no_kept_background_services(
    reusing: tuple[KubeCluster, MemoryApi, list[float]], first_use: Any
) -> None:
    cluster, api, _ = reusing
    cluster.add_background_services(3, endpoints=1)
    cluster.reset()
    first_use(cluster)
    assert _background(api) == ([], [])


def test_background_services_of_a_failed_creation_are_deleted_not_handed_on(
    reusing: tuple[KubeCluster, MemoryApi, list[float]],
) -> None:
    cluster, api, _ = reusing
    created = 0

    def fail_on_the_fifth(api: MemoryApi, verb: str, obj: dict[str, Any]) -> None:
        nonlocal created
        if verb == "create" and obj["kind"] == "Service":
            created += 1
            if created == 5:
                raise DataplaneError("the API server went away")

    api.reactors.append(fail_on_the_fifth)
    with pytest.raises(DataplaneError, match="went away"):
        cluster.add_background_services(8, endpoints=1)
    api.reactors.remove(fail_on_the_fifth)
    cluster.reset()
    assert _background(api)[0]  # some were made; kept until the next first use...
    cluster.add_background_services(3, endpoints=1)
    # ...which deletes them all and starts afresh, with no name taken twice
    assert cluster.events[-1].detail["reused"] == 0
    assert _background(api)[0] == [f"dpt-bg-0000{i}" for i in range(3)]


def test_background_services_of_mixed_shapes_are_not_kept(
    reusing: tuple[KubeCluster, MemoryApi, list[float]],
) -> None:
    cluster, api, _ = reusing
    cluster.add_background_services(2, endpoints=3)
    cluster.add_background_services(2, endpoints=1)
    cluster.reset()
    cluster.add_background_services(4, endpoints=1)
    assert cluster.events[-1].detail["reused"] == 0
    assert len(_background(api)[0]) == 4


def test_without_reuse_reset_deletes_background_services(
    iptables: tuple[KubeCluster, MemoryApi, FakeNodes],
) -> None:
    cluster, api, _ = iptables
    cluster.add_background_services(3, endpoints=1)
    cluster.reset()
    assert _background(api) == ([], [])
    cluster.add_background_services(3, endpoints=1)
    assert cluster.events[-1].detail["reused"] == 0


def test_background_refused_on_shared_clusters(backends: Backends) -> None:
    cluster, api, _ = make_cluster(
        backends,
        hooks=ClusterHooks(background_refusal="refused: pass --dataplane-allow-background"),
    )
    try:
        with pytest.raises(DataplaneSkip, match="--dataplane-allow-background"):
            cluster.add_background_services(10)
        assert not [c for c in api.calls if c.verb == "create"]
    finally:
        cluster.close()


def test_rule_count_on_every_node(iptables: tuple[KubeCluster, MemoryApi, FakeNodes]) -> None:
    cluster, _, nodes = iptables
    count = cluster.rule_count()
    per_node = sum(
        "KUBE-" in line for line in (DATA / "iptables-legacy-save.txt").read_text().splitlines()
    )
    assert count.total == 2 * per_node
    assert {p.node for p in count.parts} == set(IDS)
    assert count.service_map_entries is None
    assert sum(1 for _, s in nodes.scripts if s == DUMP_SCRIPT) == 2


def test_rule_count_on_cilium_adds_the_service_map(backends: Backends) -> None:
    table = (
        "SERVICE ADDRESS   BACKEND ADDRESS (REVNAT_ID) (SLOT)\n"
        "10.96.0.1:443/TCP   0.0.0.0:0 (1) (0) [ClusterIP]\n"
        "                    172.18.0.3:6443/TCP (1) (1)\n"
    )
    cluster, api, _ = make_cluster(backends, dataplane="ebpf", nodes=FakeNodes())
    api.exec_handler = lambda ns, pod, container, argv: ExecResult(table, "", 0)
    try:
        count = cluster.rule_count()
        assert count.service_map_entries == 4  # 2 entries on each of 2 agents
        execs = [c for c in api.calls if c.verb == "exec"]
        assert [c.body for c in execs] == [["cilium-dbg", "bpf", "lb", "list"]] * 2
    finally:
        cluster.close()


def test_no_node_access_skips_rule_counts_and_cpu(backends: Backends) -> None:
    cluster, _, _ = make_cluster(backends)
    try:
        with pytest.raises(DataplaneSkip, match="counting rules needs node access: pass"):
            cluster.rule_count()
        with pytest.raises(DataplaneSkip, match="CPU needs node access"):
            cluster.cpu_seconds()
    finally:
        cluster.close()


def test_measuring_before_start_raises_not_asserts(backends: Backends) -> None:
    # A cluster built without its threads has no latency source and no sampler: the package's
    # error says so (a bare assert would vanish under python -O and fail later, obscurely).
    cluster, _, _ = make_cluster(backends, nodes=FakeNodes(), start_threads=False)
    try:
        with pytest.raises(DataplaneError, match="was not started: no programming-latency"):
            cluster.programming_latencies()
        with pytest.raises(DataplaneError, match="was not started: no CPU sampler"):
            cluster.cpu_seconds()
    finally:
        cluster.close()


def test_no_histogram_falls_back_to_connections(backends: Backends) -> None:
    nodes = FakeNodes(metrics=False)
    cluster, _, _ = make_cluster(backends, nodes=nodes)
    try:
        assert cluster.latency_source == "connection"
        assert cluster.prober is not None
    finally:
        cluster.close()


def test_programming_latency_histogram_after_reset(backends: Backends) -> None:
    nodes = FakeNodes()
    nodes.observations = 4
    cluster, _, _ = make_cluster(backends, nodes=nodes)
    try:
        assert cluster.latency_source == "kube-proxy histogram"
        nodes.observations = 7  # 3 more programmings on each node, all under 0.5 s
        np.testing.assert_array_equal(cluster.programming_latencies(), [0.5] * 6)
        cluster.reset()
        assert cluster.programming_latencies().size == 0
    finally:
        cluster.close()


def test_programming_latency_by_connection_on_ebpf(backends: Backends) -> None:
    cluster, _, _ = make_cluster(backends, dataplane="ebpf")
    try:
        assert cluster.latency_source == "connection"
        service = cluster.deploy("backend", replicas=2)
        service.scale(4)
        deadline = 50
        while cluster.prober is not None and len(cluster.prober.latencies()) < 4 and deadline:
            threading.Event().wait(0.1)
            deadline -= 1
        latencies = cluster.programming_latencies()
        assert latencies.size >= 4
        assert np.all(latencies >= 0)
        assert np.all(latencies < 10)
    finally:
        cluster.close()


def test_cpu_seconds_attributes_to_changes(
    iptables: tuple[KubeCluster, MemoryApi, FakeNodes],
) -> None:
    cluster, _, _ = iptables
    service = cluster.deploy("backend", replicas=1)
    service.scale(3)
    usage = cluster.cpu_seconds()
    changes = [e for e in cluster.events if e.name.startswith("endpoint-")]
    assert len(usage.per_change) == len(changes) == 3
    assert len(usage.changes) == 3
    assert usage.times == tuple(e.time for e in changes)
    assert usage.changes[0].startswith("backend: endpoint-added 10.244.1.")
    assert usage.total > 0
    assert sum(usage.per_change) <= usage.total + 1e-9
    assert usage.detail["samples"] >= 2


def test_cpu_without_a_counter_is_unavailable_not_zero(backends: Backends) -> None:
    nodes = FakeNodes(cgroups=False)
    cluster, api, _ = make_cluster(backends, nodes=nodes)
    try:
        with pytest.raises(
            DataplaneUnavailable, match="the dataplane's CPU cannot be read"
        ) as info:
            cluster.cpu_seconds()
        for node, cid in IDS.items():
            assert f"{node}: no cgroup of container {cid[:12]} under /sys/fs/cgroup" in str(
                info.value
            )
        # No pods of the dataplane at all: also unavailable, never an idle zero.
        api.objects = {k: v for k, v in api.objects.items() if k[1] != "Pod"}
        with pytest.raises(DataplaneUnavailable, match="no running kube-proxy container found"):
            cluster.cpu_seconds()
    finally:
        cluster.close()


def test_apply_manifests(
    iptables: tuple[KubeCluster, MemoryApi, FakeNodes], tmp_path: Path
) -> None:
    cluster, api, _ = iptables
    (tmp_path / "a.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: one}\n---\n"
        "apiVersion: v1\nkind: List\nitems:\n"
        "- {apiVersion: v1, kind: ConfigMap, metadata: {name: two}}\n"
    )
    (tmp_path / "b.yml").write_text(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: r}\n"
    )
    (tmp_path / "ignored.txt").write_text("not yaml: [")
    applied = cluster.apply(str(tmp_path))
    assert [o["metadata"]["name"] for o in applied] == ["one", "two", "r"]
    applies = [(c.kind, c.namespace) for c in api.calls if c.verb == "apply"]
    assert applies == [("ConfigMap", NS), ("ConfigMap", NS), ("ClusterRole", None)]
    with pytest.raises(ValueError, match="neither a file nor a directory"):
        cluster.apply(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not a Kubernetes object"):
        load_manifests([{"kind": "ConfigMap"}])


def test_apply_stays_in_the_namespace_on_shared_clusters(backends: Backends) -> None:
    cluster, _, _ = make_cluster(backends, hooks=ClusterHooks(restrict_apply_to_namespace=True))
    try:
        with pytest.raises(DataplaneError, match="targets namespace 'default'"):
            cluster.apply(
                [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": "x", "namespace": "default"},
                    }
                ]
            )
        with pytest.raises(DataplaneError, match="cluster-scoped"):
            cluster.apply(
                [
                    {
                        "apiVersion": "rbac.authorization.k8s.io/v1",
                        "kind": "ClusterRole",
                        "metadata": {"name": "x"},
                    }
                ]
            )
    finally:
        cluster.close()


def test_service_time_is_a_lab_feature(iptables: tuple[KubeCluster, MemoryApi, FakeNodes]) -> None:
    cluster, api, _ = iptables
    with pytest.raises(DataplaneSkip, match="lab's backend"):
        cluster.deploy("backend", service_time="5ms")
    assert not [c for c in api.calls if c.verb == "create"]


def test_hooks_refuse_an_unknown_backend() -> None:
    with pytest.raises(
        ValueError, match="backend: 'nginx' is not accepted; accepted: netexec, lab"
    ):
        ClusterHooks(backend="nginx")


def test_diagnostics(backends: Backends) -> None:
    cluster, api, _ = make_cluster(backends, dataplane="ebpf", hooks=ClusterHooks(hubble=True))
    api.add(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "e1", "namespace": NS},
            "lastTimestamp": "2099-01-01T00:00:00Z",
            "type": "Warning",
            "reason": "BackOff",
            "involvedObject": {"kind": "Pod", "name": "backend-1"},
            "message": "restarting",
        }
    )
    api.pod_logs["cilium-worker"] = "level=info msg=synced"
    api.exec_handler = lambda ns, pod, c, argv: ExecResult("flow 1\n", "", 0)
    try:
        sections = dict(cluster.diagnostics())
        assert "BackOff  Pod/backend-1  restarting" in sections[f"events in {NS}"]
        log_key = next(k for k in sections if k.startswith("cilium-agent log cilium-worker"))
        assert sections[log_key] == "level=info msg=synced"
        hubble = [k for k in sections if k.startswith("hubble flows")]
        assert len(hubble) == 2
        assert sections[hubble[0]] == "flow 1\n"
        exec_argv = next(c.body for c in api.calls if c.verb == "exec")
        assert exec_argv[:3] == ["hubble", "observe", "--since"]
    finally:
        cluster.close()


def test_format_events_filters_by_time() -> None:
    items = [
        {"lastTimestamp": "2020-01-01T00:00:00Z", "reason": "Old", "involvedObject": {}},
        {
            "eventTime": "2030-01-01T00:00:01.000000Z",
            "reason": "New",
            "type": "Normal",
            "regarding": {"kind": "Pod", "name": "p"},
            "note": "hi",
        },
    ]
    text = format_events(items, since_wall=1_600_000_000.0)
    assert "New" in text
    assert "Old" not in text
    assert format_events([]) == "(no events)"


def test_fingerprint(iptables: tuple[KubeCluster, MemoryApi, FakeNodes]) -> None:
    cluster, _, _ = iptables
    assert cluster.fingerprint() == {
        "provider": "kind",
        "dataplane": "iptables",
        "programming_latency_source": "kube-proxy histogram",
        "kubernetes": "v1.31.2",
    }


def test_new_background_services_are_programmed_before_add_returns(
    reusing: tuple[KubeCluster, MemoryApi, list[float]],
) -> None:
    cluster, _, settled = reusing
    cluster.add_background_services(3, endpoints=1)
    assert len(settled) == 1  # the dataplane caught up with the 3 new services
    cluster.reset()
    settles = len(settled)
    cluster.add_background_services(3, endpoints=1)  # all taken over: nothing new to program
    assert len(settled) == settles
