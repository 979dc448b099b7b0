"""The lab provider on the real cluster: traffic crosses each dataplane (the real kube-proxy in
iptables and nftables mode, the lab's eBPF controller), and what the Cluster protocol reports
(rules, programming latency, CPU) is what the kernel and the components hold."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from kubekit import ended
from labkit import (
    in_node,
    pod_names,
    programmed_endpoints,
    run_client,
    wait_for,
    wait_programmed,
)
from scipy.stats import chisquare

from pytest_dataplane import DataplaneAssertionError, assert_kube_rules_at_most
from pytest_dataplane.providers.k8s import resources
from pytest_dataplane.providers.k8s.nodes import DUMP_SCRIPT

DATAPLANES = ["iptables", "nftables", "ebpf"]


@pytest.mark.parametrize("plane", DATAPLANES)
def test_connections_spread_evenly_over_every_backend(lab_cluster, plane: str) -> None:
    cluster = lab_cluster(plane)
    service = cluster.deploy("backend", replicas=3)
    assert service.url.startswith("http://") and service.netns == cluster.handle.client_netns
    wait_programmed(cluster, service)
    counts = run_client(service, 3000)
    assert counts["errors"] == {}
    pods = counts["pods"]
    assert set(pods) == pod_names(service) and len(pods) == 3
    assert sum(pods.values()) == 3000
    # Uniform random backend choice: chi-square must not reject uniformity at 0.001.
    assert chisquare(list(pods.values())).pvalue > 0.001, pods


@pytest.mark.parametrize("plane", DATAPLANES)
def test_endpoint_changes_reach_the_dataplane(lab_cluster, plane: str) -> None:
    cluster = lab_cluster(plane)
    service = cluster.deploy("backend", replicas=2)
    service.scale(4)
    assert len(service.endpoints) == 4
    wait_programmed(cluster, service)
    assert set(run_client(service, 400)["pods"]) == pod_names(service)
    service.scale(1)
    wait_programmed(cluster, service)
    answered = run_client(service, 100)
    assert answered["errors"] == {} and set(answered["pods"]) == pod_names(service)
    assert len(answered["pods"]) == 1
    names = [e.name for e in service.events]
    assert names.count("endpoint-added") == 4 and names.count("endpoint-removed") == 3
    latencies = cluster.programming_latencies()
    assert np.all(latencies >= 0)
    if plane == "ebpf":
        # The controller records every endpoint change it programmed, exactly once.
        assert latencies.size == 7
        assert cluster.fingerprint()["programming_latency_source"].startswith("lab eBPF")
    elif plane == "nftables":
        # Every change, from kube-proxy's commits the kernel announced: one per change and
        # node, each found (a change not found would read as the time since it was seen,
        # growing from one reading to the next; found ones move only by the clock
        # conversion's microseconds).
        assert latencies.size == 7
        assert cluster.fingerprint()["programming_latency_source"].startswith("nft monitor")
        time.sleep(0.5)
        assert np.allclose(cluster.programming_latencies(), latencies, rtol=0, atol=0.01)
    else:
        # kube-proxy's own SLI, one observation per changed EndpointSlice per sync.
        assert latencies.size >= 1
        assert cluster.fingerprint()["programming_latency_source"] == "kube-proxy histogram"


@pytest.mark.parametrize("plane", DATAPLANES)
def test_service_time_reaches_the_backend(lab_cluster, plane: str) -> None:
    cluster = lab_cluster(plane)
    service = cluster.deploy("slow", replicas=1, service_time="constant:40ms")
    wait_programmed(cluster, service)
    seconds = run_client(service, 20)["seconds"]
    assert len(seconds) == 20
    assert statistics.median(seconds) >= 0.040


def test_apply_runs_a_team_manifest(lab_cluster) -> None:
    """apply() works in the lab (a real API server): a Deployment and Service of the lab
    backend's image, reached through the dataplane, and removed by reset()."""
    cluster = lab_cluster("nftables")
    labels = {"app.kubernetes.io/name": "team"}
    applied = cluster.apply(
        [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "team"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "containers": [
                                {
                                    "name": "app",
                                    "image": "backend:v2",
                                    "ports": [{"containerPort": 8080}],
                                }
                            ]
                        },
                    },
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "team"},
                "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
            },
        ]
    )
    assert [obj["kind"] for obj in applied] == ["Deployment", "Service"]
    address = resources.cluster_ip(cluster.api.get("v1", "Service", "team", cluster.namespace))
    assert address is not None
    url = resources.url_for(address, 80)
    wait_for(lambda: cluster.traffic.hostname(url) is not None, "the applied service answering")
    answered = {cluster.traffic.hostname(url) for _ in range(30)}
    assert {name for name in answered if name} and all(
        name and name.startswith("team-") for name in answered
    ), answered


@pytest.mark.parametrize("plane", DATAPLANES)
def test_reset_leaves_a_clean_namespace(lab_cluster, plane: str) -> None:
    cluster = lab_cluster(plane)
    before = cluster.rule_count().total
    service = cluster.deploy("backend", replicas=2)
    cluster.add_background_services(50, endpoints=3)
    wait_programmed(cluster, service)
    assert cluster.rule_count().total > before or plane == "ebpf"
    cluster.reset()
    # The lab is discarded at close: the background services stay for the next test...
    kept, _ = cluster.api.list_items("v1", "Service", cluster.namespace)
    assert sorted(i["metadata"]["name"] for i in kept) == [
        resources.background_name(i) for i in range(50)
    ]
    for api_version, kind in (("v1", "Pod"), ("apps/v1", "Deployment")):
        items, _ = cluster.api.list_items(api_version, kind, cluster.namespace)
        assert items == [], (kind, [i["metadata"]["name"] for i in items])
    # ...and a next test that uses the cluster otherwise (here: counting rules) finds them
    # deleted and the dataplane caught up.
    cluster.rule_count()
    for api_version, kind in (
        ("v1", "Service"),
        ("v1", "Pod"),
        ("apps/v1", "Deployment"),
        ("discovery.k8s.io/v1", "EndpointSlice"),
    ):
        items, _ = cluster.api.list_items(api_version, kind, cluster.namespace)
        assert items == [], (kind, [i["metadata"]["name"] for i in items])
    # reset() waits until kube-proxy has caught up, so nothing routes to the test's services
    # any more; kube-proxy's nftables mode deletes a service's emptied chains on a later sync
    # (so that a packet in flight never meets a missing chain), and the eBPF controller
    # deletes map entries as the deletions reach it: wait for those too.
    if plane == "ebpf":
        kubernetes = cluster.api.get("v1", "Service", "kubernetes", "default")
        wait_for(
            lambda: (
                {vip for vip, _, _ in cluster.handle.ebpf_programmed()}
                == {resources.cluster_ip(kubernetes)}
            ),
            "only the kubernetes Service left in the eBPF service map",
        )
    else:
        # In nftables mode the service chains emptied by a deletion are removed on a later
        # sync (so that a packet in flight never meets a missing chain); what must be gone is
        # every way into them: the map elements that jump there.
        def routed() -> list[str]:
            dump = in_node(cluster, "sh", "-c", DUMP_SCRIPT)
            return [
                line
                for line in dump.splitlines()
                if f"{cluster.namespace}/" in line
                and (plane == "iptables" or " : goto " in line or " : jump " in line)
            ]

        wait_for(lambda: routed() == [], "the test's rules leaving the node")
    if plane != "nftables":
        assert cluster.rule_count().total <= before
    assert cluster.events == [] and cluster.programming_latencies().size == 0


@pytest.mark.parametrize("plane", DATAPLANES)
def test_background_services_are_taken_over_by_the_next_test(lab_cluster, plane: str) -> None:
    cluster = lab_cluster(plane)
    cluster.add_background_services(40, endpoints=3)
    cluster.reset()
    cluster.add_background_services(60, endpoints=3)
    event = cluster.events[-1]
    assert (event.detail["reused"], event.detail["total"]) == (40, 60)
    services, _ = cluster.api.list_items("v1", "Service", cluster.namespace)
    assert sorted(i["metadata"]["name"] for i in services) == [
        resources.background_name(i) for i in range(60)
    ]
    # The dataplane has every one of them: the last one created answers on its cluster IP
    # in the rules (iptables / nftables) or the eBPF service map.
    last = cluster.api.get("v1", "Service", resources.background_name(59), cluster.namespace)
    address = resources.cluster_ip(last)
    if plane == "ebpf":
        wait_for(
            lambda: any(vip == address for vip, _, _ in cluster.handle.ebpf_programmed()),
            "the last background service in the eBPF service map",
        )
    else:
        wait_for(
            lambda: address in in_node(cluster, "sh", "-c", DUMP_SCRIPT),
            "the last background service in kube-proxy's rules",
        )


@pytest.mark.parametrize("plane", DATAPLANES)
def test_dataplane_cpu_comes_from_its_cgroups(lab_cluster, plane: str) -> None:
    """Programming 300 services costs the dataplane CPU, read from the cgroups of its
    processes (kube-proxy with the iptables-restore / nft it runs, or the eBPF controller)."""
    cluster = lab_cluster(plane)
    paths = cluster.handle.dataplane_cgroups(0)
    assert paths and all((path / "cpu.stat").is_file() for path in paths)
    cluster.add_background_services(300, endpoints=3)
    service = cluster.deploy("backend", replicas=2)
    wait_programmed(cluster, service)
    usage = cluster.cpu_seconds()
    assert usage.total > 0
    assert len(usage.changes) == 2  # the two endpoints added


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_iptables_mode_runs_on_the_backend_asked_for(lab_cluster, backend: str) -> None:
    cluster = lab_cluster("iptables", backend=backend)
    assert cluster.fingerprint()["iptables_backend"] == backend
    service = cluster.deploy("backend", replicas=1)
    wait_programmed(cluster, service)
    other = "nft" if backend == "legacy" else "legacy"
    mine = in_node(cluster, f"iptables-{backend}-save", "-t", "nat")
    theirs = in_node(cluster, "sh", "-c", f"iptables-{other}-save -t nat 2>/dev/null || true")
    assert f"{cluster.namespace}/backend:http" in mine
    assert "KUBE-" not in theirs


def test_the_client_prober_dies_with_its_owner(lab_cluster) -> None:
    """The prober in the client namespace has a parent-death signal: a SIGKILLed owner takes
    it along (nothing else would stop it)."""
    from pytest_dataplane.providers.lab.kube.access import ProbeProcess

    cluster = lab_cluster("iptables")
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import time
                from pytest_dataplane.providers.lab.kube.access import ProbeProcess
                prober = ProbeProcess({cluster.traffic.netns!r}, None, own_cgroup=False)
                print(prober.pid, flush=True)
                time.sleep(600)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    pid = int(owner.stdout.readline())
    assert os.path.exists(f"/proc/{pid}")
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    owner.stdout.close()

    wait_for(lambda: ended(pid), f"prober {pid} ending with its owner", timeout=10)
    # And close() of a prober of ours ends it at once.
    prober = ProbeProcess(cluster.traffic.netns, None, own_cgroup=False)
    mine = prober.pid
    prober.close()
    assert mine is not None and not os.path.exists(f"/proc/{mine}")


# Above kube-proxy's 1 s --min-sync-period, as a preStop hook gives: the old pods keep
# serving until every proxier has had the chance to drop them.
GRACE = "2s"
# Background services of the busy test.
BUSY = 1000


@pytest.mark.parametrize("plane", DATAPLANES)
def test_busy_cluster_rules_and_a_rollout_under_load(lab_cluster, load, plane: str) -> None:
    """The story on each dataplane: rule counts with BUSY services x 3 endpoints written by
    the real kube-proxy (none on ebpf), then a rollout (3 -> 6 replicas, then a new pod
    template) under 300 req/s of new connections. (5,000 services take minutes to create
    through the API server on 2 cores; their figures come from benchmarks/, not the suite.)"""
    cluster = lab_cluster(plane)
    started = time.monotonic()
    cluster.add_background_services(BUSY, endpoints=3)
    created = time.monotonic() - started
    backend = cluster.deploy("backend", replicas=3, service_time="lognormal:2ms:0.5")
    wait_programmed(cluster, backend)  # kube-proxy has written every service by now
    count = cluster.rule_count()
    # What `iptables-save | grep -c KUBE-` prints (nat and filter), for both backends, plus
    # the lines of `nft list table ip kube-proxy`.
    grep = 0
    for tool in ("iptables-legacy-save", "iptables-nft-save"):
        table = ""
        for line in in_node(cluster, tool).splitlines():
            table = line[1:] if line.startswith("*") else table
            grep += table in ("nat", "filter") and "KUBE-" in line
    listing = in_node(cluster, "sh", "-c", "nft list table ip kube-proxy 2>/dev/null || true")
    nft_lines = sum(1 for line in listing.splitlines() if line.strip())
    assert count.total == grep + nft_lines
    print(f"\n{plane}: {count.total} KUBE- lines at {BUSY} services; created in {created:.1f} s")
    if plane == "ebpf":
        assert count.total == 0
        assert count.service_map_entries is not None and count.service_map_entries >= BUSY + 1
        assert_kube_rules_at_most(cluster, 10)
    else:
        assert 3 * BUSY <= count.total < 1_000_000, count.describe()
        with pytest.raises(DataplaneAssertionError, match="KUBE- rule lines") as excinfo:
            assert_kube_rules_at_most(cluster, 10)
        assert "largest chains" in str(excinfo.value)

    with load(backend, rate=300, duration="12s", engine="fast") as run:
        time.sleep(1)  # a second of steady load first: the shape of the run, not a wait
        backend.scale(6)
        backend.rollout(grace=GRACE)
    result = run.result
    assert result.scheduled == result.completed + result.errors + result.dropped == 3600
    names = [e.name for e in result.events]
    for expected in ("scale", "rollout-start", "endpoint-added", "endpoint-removed", "rollout-end"):
        assert expected in names, expected
    rollout = result.between("rollout-start", "rollout-end")
    assert 0 < rollout.scheduled < result.scheduled
    assert len(backend.endpoints) == 6
    wait_programmed(cluster, backend)
    assert programmed_endpoints(cluster, backend) == set(backend.endpoints)
    assert cluster.programming_latencies().size >= 1
    # A connection refused or unanswered is a stopped pod the dataplane still sent traffic
    # to, as a real node would when kube-proxy lags (measured and reported, like every
    # iptables rollout); anything else is a fault. The eBPF controller programs each change
    # within milliseconds, far inside the 2 s the old pods keep serving: it loses nothing.
    stale_endpoint = {"connect_refused", "connect_timeout", "read_timeout", "reset"}
    assert set(result.error_kinds) <= stale_endpoint, dict(result.error_kinds)
    if plane == "ebpf":
        assert (result.errors, result.dropped) == (0, 0), dict(result.error_kinds)
