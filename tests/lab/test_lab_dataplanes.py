"""Traffic really crosses each lab dataplane, and rule counts are what the kernel holds."""

from __future__ import annotations

import socket
import subprocess
import time

import numpy as np
import pytest
from labkit import in_node, run_client
from scipy.stats import chisquare

from pytest_dataplane import DataplaneAssertionError, assert_kube_rules_at_most
from pytest_dataplane.providers.lab import iptables as ipt_layout
from pytest_dataplane.providers.lab._sync import Change
from pytest_dataplane.providers.lab.cluster import LabCluster
from pytest_dataplane.providers.lab.netns import in_netns

DATAPLANES = ["iptables", "nftables", "ebpf"]


@pytest.mark.parametrize("plane", DATAPLANES)
def test_connections_spread_evenly_over_every_backend(lab_cluster, plane: str) -> None:
    cluster = lab_cluster(plane)
    service = cluster.deploy("backend", replicas=3)
    counts = run_client(service, 3000)
    assert counts["errors"] == {}
    pods = counts["pods"]
    assert sorted(pods) == ["backend-1", "backend-2", "backend-3"]
    assert sum(pods.values()) == 3000
    # Uniform random backend choice: chi-square must not reject uniformity at 0.001.
    assert chisquare(list(pods.values())).pvalue > 0.001, pods


@pytest.mark.parametrize("plane", DATAPLANES)
def test_endpoint_changes_reach_the_dataplane(lab_cluster, plane: str) -> None:
    cluster = lab_cluster(plane)
    service = cluster.deploy("backend", replicas=2)
    service.scale(4)
    cluster.wait_programmed()
    assert len(service.endpoints) == 4
    assert set(run_client(service, 400)["pods"]) == {f"backend-{i}" for i in range(1, 5)}
    service.scale(1, grace=0)
    cluster.wait_programmed()
    answered = run_client(service, 100)
    assert list(answered["pods"]) == ["backend-1"] and answered["errors"] == {}
    latencies = cluster.programming_latencies()
    # 1 deploy x 2 + 2 added + 3 removed endpoint changes, each measured once.
    assert latencies.size == 7
    assert np.all(latencies > 0)
    names = [e.name for e in service.events]
    assert names.count("endpoint-added") == 4 and names.count("endpoint-removed") == 3


def test_an_endpoint_change_is_submitted_before_its_pod_shows_ready(
    lab_cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """wait_programmed() covers the changes submitted before it. A pod's readiness is what
    deploy() and scale() wait for before they (or the test) wait for the dataplane, so the
    change adding its endpoint must be submitted, with the endpoint in the desired state,
    before the pod shows ready; a pod-watch thread that set ready first could be overtaken
    by wait_programmed() and the wait would end without the new endpoint."""
    cluster = lab_cluster("ebpf")
    seen: list[tuple[str, bool, bool]] = []
    submit = cluster._sync.submit

    def checking_submit(changes: list[Change] | None = None, *, full: bool = False) -> int:
        for change in changes or ():
            service = cluster._services.get(change.service.split("/")[1].split(":")[0])
            for pod in service.pods if service is not None else ():
                if change.description.endswith(f"added {pod.ip}"):
                    endpoint = f"{pod.ip}:{service.port}"
                    desired = {str(e) for e in cluster._desired()[service.key].endpoints}
                    seen.append((pod.name, pod.ready.is_set(), endpoint in desired))
        return submit(changes, full=full)

    monkeypatch.setattr(cluster._sync, "submit", checking_submit)
    service = cluster.deploy("backend", replicas=2)
    service.scale(3)
    assert sorted(seen) == [(f"backend-{i}", False, True) for i in (1, 2, 3)]
    cluster.wait_programmed()
    assert set(run_client(service, 300)["pods"]) == {"backend-1", "backend-2", "backend-3"}


# Below every MAC the kernel draws for a veth: a Linux bridge whose own address was never set
# takes the lowest address among its ports, so this port's address becomes the bridge's.
LOWEST_MAC = "02:00:00:00:00:01"


def _bridge_mac(cluster: LabCluster) -> str:
    return in_node(cluster, "ip", "-brief", "link", "show", "cbr0").split()[2]


def _node_has_link(cluster: LabCluster, name: str) -> bool:
    done = subprocess.run(
        ["nsenter", f"--net=/run/netns/{cluster.topology.node}", "--", "ip", "link", "show", name],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


@pytest.mark.parametrize("plane", DATAPLANES)
def test_a_pod_keeps_its_gateway_when_other_pods_go(lab_cluster, plane: str) -> None:
    """Pods cache the bridge's MAC as their gateway's. If the bridge took a removed pod's
    port address, it changes address when that port goes (which the kernel does after
    ``ip netns delete`` returns, whenever it tears the namespace down): the pods' frames
    to the old address are dropped until their ARP entry expires, and a response in flight
    at that moment, or a connection the pod opens, times out (how a scale-down with grace 0
    can make test_endpoint_changes_reach_the_dataplane time out). Forced here: the leaving
    pod's port gets the lowest address, and is gone before the staying pod connects."""
    cluster = lab_cluster(plane)
    service = cluster.deploy("backend", replicas=2)
    staying, leaving = service.pods
    in_node(cluster, "ip", "link", "set", f"vp{leaving.slot}", "address", LOWEST_MAC)
    bridge_mac = _bridge_mac(cluster)
    client_ip = cluster.plan.client_ip

    def listen() -> socket.socket:
        listener = socket.create_server((client_ip, 0))
        listener.settimeout(5)
        return listener

    def connect_from_staying_pod(port: int) -> None:
        in_netns(staying.netns, lambda: socket.create_connection((client_ip, port), 3).close())

    with in_netns(cluster.topology.client, listen) as listener:
        port = listener.getsockname()[1]
        connect_from_staying_pod(port)  # the staying pod resolves its gateway now
        listener.accept()[0].close()
        service.scale(1, grace=0)
        deadline = time.monotonic() + 60
        while _node_has_link(cluster, f"vp{leaving.slot}"):
            assert time.monotonic() < deadline, "the leaving pod's port outlived 60 s"
            time.sleep(0.05)
        connect_from_staying_pod(port)
        listener.accept()[0].close()
    assert _bridge_mac(cluster) == bridge_mac
    cluster.wait_programmed()
    answered = run_client(service, 20)
    assert answered == {"pods": {"backend-1": 20}, "errors": {}}


@pytest.mark.parametrize("plane", DATAPLANES)
def test_a_pod_on_a_stopped_pod_s_address_is_reached(lab_cluster, plane: str) -> None:
    """Pod addresses come back when slots are reused. The node still holds the stopped
    pod's MAC for that address, valid-looking for up to a minute, and would send the new
    pod's connections there: they time out. Forced here: the next pod gets the slot the
    stopped pod just left (normally that takes 253 pods)."""
    cluster = lab_cluster(plane)
    service = cluster.deploy("backend", replicas=2)
    assert set(run_client(service, 50)["pods"]) == {"backend-1", "backend-2"}
    leaving = service.pods[1]
    service.scale(1, grace=0)
    deadline = time.monotonic() + 60
    while _node_has_link(cluster, f"vp{leaving.slot}"):  # its slot's veth name comes back too
        assert time.monotonic() < deadline, "the leaving pod's port outlived 60 s"
        time.sleep(0.05)
    with cluster._lock:
        cluster._free_slots.remove(leaving.slot)
        cluster._free_slots.insert(0, leaving.slot)
    service.scale(2)
    cluster.wait_programmed()
    assert service.pods[1].ip == leaving.ip
    answered = run_client(service, 50)
    assert answered["errors"] == {}
    assert set(answered["pods"]) == {"backend-1", "backend-3"}


def test_iptables_rule_counts_match_kube_proxy(lab_cluster) -> None:
    """kube-proxy's published nat rule counts: 5 + S·(2 + 3N), read back from the kernel."""
    cluster = lab_cluster("iptables", backend="legacy")
    backend = cluster.proxier.backend
    for services, endpoints, expected in [(1, 1, 10), (1, 10, 37), (10, 10, 325)]:
        cluster.reset()
        cluster.add_background_services(services, endpoints=endpoints)
        saved = in_node(cluster, f"iptables-{backend}-save", "-t", "nat")
        rules = [line for line in saved.splitlines() if line.startswith("-A KUBE-")]
        assert len(rules) == expected == ipt_layout.nat_rule_count(cluster._desired().values())


# Above kube-proxy's 1 s --min-sync-period, as a preStop hook gives: the old pods keep
# serving until every proxier has had the chance to drop them.
GRACE = 2.0


@pytest.mark.parametrize("plane", DATAPLANES)
def test_5000_services_rules_and_a_rollout_under_load(lab_cluster, load, plane: str) -> None:
    """The story on each dataplane: rule counts with 5,000 services x 3 endpoints, then a
    rollout (3 -> 6 replicas, then a new image) under 300 req/s of new connections."""
    cluster = lab_cluster(plane)
    cluster.add_background_services(5000, endpoints=3)
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
    if plane == "ebpf":
        assert count.total <= 10
        assert count.service_map_entries is not None and count.service_map_entries >= 5000
        assert_kube_rules_at_most(cluster, 10)
    else:
        assert 10_000 <= count.total < 1_000_000, count.describe()
        with pytest.raises(DataplaneAssertionError, match="KUBE- rule lines") as excinfo:
            assert_kube_rules_at_most(cluster, 10)
        assert "largest chains" in str(excinfo.value)

    backend = cluster.deploy("backend", replicas=3, service_time="lognormal:2ms:0.5")
    with load(backend, rate=300, duration="12s", engine="fast") as run:
        time.sleep(1)
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
    assert cluster.programming_latencies().size >= 3 + 3 + 6 + 6
    # An old pod stops GRACE after it left the endpoints. A dataplane that dropped it by then
    # sends it nothing more, and ebpf and nftables must then lose no request. One that took
    # longer (kube-proxy's sync on a busy machine: partial nftables syncs of 5,000 services
    # took 2.5-7 s of wall time, 0.4 s of CPU, beside a Go build) sends the stopped pod
    # connections, refused or unanswered, as a real node would: measured and reported, like
    # every iptables rollout (the summary table and JSON carry the numbers).
    late = [
        change.description
        for record in cluster._sync.records
        for change in record.changes
        if "removed" in change.description and record.finished - change.time > GRACE
    ]
    if plane in ("ebpf", "nftables") and not late:
        assert (result.errors, result.dropped) == (0, 0), dict(result.error_kinds)
    stale_endpoint = {"connect_refused", "connect_timeout", "read_timeout", "reset"}
    if plane in ("ebpf", "nftables"):
        assert set(result.error_kinds) <= stale_endpoint, (late, dict(result.error_kinds))
