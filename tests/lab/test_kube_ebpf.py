"""The ``ebpf`` dataplane on the lab's real cluster: no kube-proxy; the eBPF service controller
watches Services and EndpointSlices and programs the cgroup/connect4 load balancer that the
client cgroup's connections go through.

Skipped (with the reason) without root, without the Kubernetes binaries, or where the eBPF
toolchain is missing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubekit import (
    binaries_or_skip,
    ended,
    in_netns,
    root_state,
    session_objects,
    state_diff,
    wait_for,
)

from pytest_dataplane.providers.lab._session import STATE_ROOT
from pytest_dataplane.providers.lab.ebpf import ebpf_unavailable_reason
from pytest_dataplane.providers.lab.kube.lab import EBPFCTL, KubeLab

ROLLOUT_TIMEOUT = 240
BACKGROUND = 1000  # selectorless services of 3 endpoints each
CLI = [sys.executable, "-m", "pytest_dataplane"]

# Requests from the client namespace, by a process that first joins the client cgroup (the
# load balancer serves only connect() calls made from it). One new connection each.
ASK = (
    "import http.client, json, sys, urllib.parse\n"
    "u = urllib.parse.urlsplit(sys.argv[1]); out = []\n"
    "for _ in range(int(sys.argv[2])):\n"
    "    c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=5)\n"
    "    c.request('GET', '/', headers={'Connection': 'close'}); r = c.getresponse()\n"
    "    r.read(); out.append({k: v for k, v in r.getheaders() if k.startswith('X-')})\n"
    "    c.close()\n"
    "print(json.dumps(out))\n"
)
JOIN = 'echo $$ > "$0/cgroup.procs" && exec "$@"'


def skip_without_ebpf() -> None:
    binaries_or_skip()
    reason = ebpf_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


def kubectl(lab: KubeLab, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
    done = subprocess.run(
        [*lab.kubectl(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


def ask(lab: KubeLab, url: str, count: int) -> list[dict[str, str]]:
    assert lab.client_cgroup is not None
    # Join the cgroup before entering the namespace: `ip netns exec` mounts a sysfs of its
    # own, in which the cgroup v2 mount under /sys is not to be found.
    done = subprocess.run(
        ["sh", "-c", JOIN, str(lab.client_cgroup), "ip", "netns", "exec", lab.client_netns,
         sys.executable, "-c", ASK, url, str(count)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def pods(lab: KubeLab, selector: str) -> list[dict[str, Any]]:
    items = json.loads(kubectl(lab, "get", "pods", "-l", selector, "-o", "json"))["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def cluster_ip(lab: KubeLab, name: str) -> str:
    return kubectl(lab, "get", "service", name, "-o", "jsonpath={.spec.clusterIP}")


def programmed(lab: KubeLab, vip: str, port: int = 80) -> set[str]:
    return set(lab.ebpf_programmed().get((vip, port, "tcp"), []))


def records(lab: KubeLab, service: str) -> list[dict[str, Any]]:
    return [r for r in lab.ebpf_programming() if r["service"] == service]


def cpu_usec(lab: KubeLab) -> int:
    total = 0
    for cgroup in lab.dataplane_cgroups(0):
        stat = dict(line.split() for line in (cgroup / "cpu.stat").read_text().splitlines())
        total += int(stat["usage_usec"])
    return total


@pytest.fixture(scope="module")
def root_before() -> dict[str, str]:
    return root_state()


@pytest.fixture(scope="module")
def ebpf_lab(root_before: dict[str, str]) -> Iterator[KubeLab]:
    skip_without_ebpf()
    with KubeLab(dataplane="ebpf", progress=lambda m: print(f"lab: {m}")) as lab:
        print(f"boot timings: {lab.timings}")
        yield lab


def test_the_controller_serves_the_kubernetes_service(
    ebpf_lab: KubeLab, record_property: Callable[[str, object], None]
) -> None:
    lab = ebpf_lab
    assert lab.plan is not None
    record_property("controller_ready_seconds", round(lab.timings["ebpf_controller"], 2))
    assert "kube-proxy-node-0" not in lab.processes
    assert lab.iptables_backend is None
    kubernetes = (lab.plan.kubernetes_service_ip, 443, "tcp")
    assert lab.ebpf_programmed()[kubernetes] == [f"{lab.plan.cp_ip}:6443"]
    # The controller runs in its own cgroup, which is the dataplane's CPU on node 0.
    controller = lab.processes[EBPFCTL]
    (cgroup,) = lab.dataplane_cgroups(0)
    assert cgroup == controller.cgroup
    assert str(controller.pid) in (cgroup / "cgroup.procs").read_text().split()
    assert cpu_usec(lab) > 0
    assert lab.client_cgroup is not None and lab.client_cgroup.is_dir()
    assert lab.client_cgroup != cgroup


def test_a_deployment_is_reached_through_the_bpf_load_balancer(ebpf_lab: KubeLab) -> None:
    lab = ebpf_lab
    kubectl(lab, "create", "deployment", "backend", "--image=backend:v1", "--replicas=3")
    kubectl(lab, "expose", "deployment", "backend", "--port=80")
    kubectl(lab, "rollout", "status", "deploy/backend", "-w", timeout=ROLLOUT_TIMEOUT)
    vip = cluster_ip(lab, "backend")
    running = pods(lab, "app=backend")
    wanted = {f"{p['status']['podIP']}:80" for p in running}
    assert len(wanted) == 3
    wait_for(
        lambda: programmed(lab, vip) == wanted, timeout=60, what=f"the map on {sorted(wanted)}"
    )
    answers = ask(lab, f"http://{vip}:80/", 40)
    assert {a["X-Version"] for a in answers} == {"v1"}
    answered = {a["X-Pod"] for a in answers}
    assert answered <= {p["metadata"]["name"] for p in running}
    assert len(answered) > 1  # balanced over several pods
    # From the same namespace but outside the client cgroup nothing translates the VIP.
    outside = subprocess.run(
        ["ip", "netns", "exec", lab.client_netns, "curl", "-s", "-m", "2", f"http://{vip}/"],
        capture_output=True,
        check=False,
    )
    assert outside.returncode != 0


def test_scaling_changes_the_map_and_is_recorded(ebpf_lab: KubeLab) -> None:
    lab = ebpf_lab
    vip = cluster_ip(lab, "backend")
    before = {f"{p['status']['podIP']}:80" for p in pods(lab, "app=backend")}
    began = time.time()
    kubectl(lab, "scale", "deploy/backend", "--replicas=5")
    kubectl(lab, "rollout", "status", "deploy/backend", "-w", timeout=ROLLOUT_TIMEOUT)
    grown = {f"{p['status']['podIP']}:80" for p in pods(lab, "app=backend")}
    assert len(grown) == 5 and before < grown
    wait_for(lambda: programmed(lab, vip) == grown, timeout=60, what="5 endpoints in the map")
    added = [
        r
        for r in records(lab, "default/backend")
        if r["change"] == "added" and r["programmed"] >= began
    ]
    assert {r["endpoint"] for r in added} == grown - before
    for r in added:
        assert r["port"] == "default/backend"
        # The trigger is the slice's annotation (kept to the second: up to a second before
        # the change) where the endpointslice controller wrote one (it leaves it out when
        # its tracker saw no pod change to time), else when the controller saw the slice.
        assert r["trigger_source"] in ("annotation", "seen")
        earliest = began - 1 if r["trigger_source"] == "annotation" else began
        assert earliest <= r["trigger"] <= r["programmed"] <= time.time()
        assert r["seconds"] == pytest.approx(r["programmed"] - r["trigger"])
        assert 0 <= r["seconds"] < time.time() - began + 1
    shrink = time.time()
    kubectl(lab, "scale", "deploy/backend", "--replicas=2")
    wait_for(lambda: len(programmed(lab, vip)) == 2, timeout=60, what="2 endpoints in the map")
    removed = [
        r
        for r in records(lab, "default/backend")
        if r["change"] == "removed" and r["programmed"] >= shrink
    ]
    assert len({r["endpoint"] for r in removed}) == 3
    assert programmed(lab, vip) == grown - {r["endpoint"] for r in removed}


def test_a_selectorless_service_with_its_own_slice(ebpf_lab: KubeLab) -> None:
    lab = ebpf_lab
    running = pods(lab, "app=backend")
    chosen = running[0]
    ip = chosen["status"]["podIP"]
    manifest = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "manual"},
                "spec": {"ports": [{"name": "web", "port": 8080, "targetPort": 80}]},
            },
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": "manual-1",
                    "labels": {"kubernetes.io/service-name": "manual"},
                },
                "addressType": "IPv4",
                "ports": [{"name": "web", "port": 80, "protocol": "TCP"}],
                "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
            },
        ],
    }
    kubectl(lab, "apply", "-f", "-", stdin=json.dumps(manifest))
    vip = cluster_ip(lab, "manual")
    wait_for(lambda: programmed(lab, vip, 8080) == {f"{ip}:80"}, timeout=60, what="manual")
    answers = ask(lab, f"http://{vip}:8080/", 10)
    assert {a["X-Pod"] for a in answers} == {chosen["metadata"]["name"]}
    (line,) = records(lab, "default/manual")
    assert line["port"] == "default/manual:web"
    assert line["trigger_source"] == "seen"  # a slice of our own carries no trigger time
    kubectl(lab, "delete", "endpointslice", "manual-1")
    wait_for(lambda: programmed(lab, vip, 8080) == set(), timeout=60, what="manual emptied")
    assert [r["change"] for r in records(lab, "default/manual")] == ["added", "removed"]


def test_no_kube_proxy_rules_on_the_node(ebpf_lab: KubeLab) -> None:
    lab = ebpf_lab
    for tool in ("iptables-legacy-save", "iptables-nft-save"):
        assert "KUBE-" not in in_netns(lab.node_netns(0), tool)
    assert "kube-proxy" not in in_netns(lab.node_netns(0), "nft", "list", "ruleset")
    # Nothing of kube-proxy is published either.
    done = subprocess.run(
        [*lab.kubectl(), "-n", "kube-system", "get", "configmap", "kube-proxy"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0 and "NotFound" in done.stderr


def _create_background(lab: KubeLab, count: int, threads: int = 8) -> None:
    """``count`` selectorless Services, each with one EndpointSlice of 3 ready endpoints (the
    addresses are never connected to), created through the API from several clients."""
    from pytest_dataplane.providers.lab.kube.daemon import Api

    errors: list[str] = []

    def work(part: int) -> None:
        api = Api(str(lab.kubeconfig), f"bg{part}")
        try:
            for i in range(part, count, threads):
                name = f"bg-{i}"
                api.request(
                    "POST",
                    "/api/v1/namespaces/default/services",
                    body={
                        "metadata": {"name": name},
                        "spec": {"ports": [{"port": 80, "targetPort": 8080}]},
                    },
                )
                base = f"10.{200 + i // 65000 % 50}.{i // 250 % 250}.{i % 250 + 1}"
                addresses = [base, base.replace("10.", "11.", 1), base.replace("10.", "12.", 1)]
                api.request(
                    "POST",
                    "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
                    body={
                        "metadata": {
                            "name": f"{name}-1",
                            "labels": {"kubernetes.io/service-name": name},
                        },
                        "addressType": "IPv4",
                        "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
                        "endpoints": [
                            {"addresses": [a], "conditions": {"ready": True}} for a in addresses
                        ],
                    },
                )
        except Exception as exc:
            errors.append(str(exc))
        finally:
            api.close()

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []


def test_background_services_by_three_endpoints(
    ebpf_lab: KubeLab, record_property: Callable[[str, object], None]
) -> None:
    # 1,000 here: creating them costs the API server ~30 objects/s on a loaded 2-core machine
    # (5,000 x 3 took 289 s to create there and were all programmed 0.3 s after the last
    # create; the README has the figures).
    lab = ebpf_lab
    count = BACKGROUND
    cpu_before = cpu_usec(lab)
    began = time.time()
    _create_background(lab, count)
    created = time.time()

    def background() -> int:
        return sum(1 for (vip, port, _), eps in lab.ebpf_programmed().items() if len(eps) == 3)

    wait_for(lambda: background() >= count, timeout=300, what=f"{count} services x 3 in the map")
    done = time.time()
    record_property("create_seconds", round(created - began, 1))
    record_property("programmed_after_last_create_seconds", round(done - created, 2))
    lines = [r for r in lab.ebpf_programming() if r["service"].startswith("default/bg-")]
    assert len(lines) == 3 * count
    assert all(r["change"] == "added" and r["seconds"] >= 0 for r in lines)
    seconds = sorted(r["seconds"] for r in lines)
    record_property("seconds_p50", round(seconds[len(seconds) // 2], 4))
    record_property("seconds_p99", round(seconds[int(len(seconds) * 0.99)], 4))
    print(
        f"created {count} services x 3 in {created - began:.1f} s; all programmed "
        f"{done - created:.2f} s after the last create; per-change seconds p50 "
        f"{seconds[len(seconds) // 2]:.4f} p99 {seconds[int(len(seconds) * 0.99)]:.4f}; "
        f"controller CPU {(cpu_usec(lab) - cpu_before) / 1e6:.2f} s"
    )
    # The controller's work shows in the dataplane's cgroup.
    assert cpu_usec(lab) > cpu_before
    # Still no rules, whatever the number of services.
    assert "KUBE-" not in in_netns(lab.node_netns(0), "iptables-nft-save")


def test_stop_removes_everything(ebpf_lab: KubeLab, root_before: dict[str, str]) -> None:
    lab = ebpf_lab
    prefix = lab.session.prefix
    client = lab.client_cgroup
    state = lab.ebpf_state_dir
    assert state_diff(root_before, root_state()) == {}
    lab.stop()
    assert client is not None and not client.exists()
    assert not state.exists()
    assert session_objects(prefix) == set()
    assert state_diff(root_before, root_state()) == {}


def lab_state(name: str) -> dict[str, object]:
    for path in STATE_ROOT.glob("*/lab.json"):
        data = json.loads(path.read_text())
        if data.get("name") == name:
            return data  # type: ignore[no-any-return]
    raise AssertionError(f"no state file for lab {name}")


def test_a_sigkilled_ebpf_lab_is_reaped(root_before: dict[str, str]) -> None:
    skip_without_ebpf()
    name = f"e{os.getpid()}"
    up = subprocess.run(
        [*CLI, "lab", "up", "--name", name, "--dataplane", "ebpf"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert up.returncode == 0, up.stderr
    state = lab_state(name)
    prefix = str(state["prefix"])
    mounts = Path("/proc/mounts").read_text()
    assert f"/run/pytest-dataplane/{prefix}" in mounts  # the controller's bpffs
    os.kill(int(str(state["pid"])), signal.SIGKILL)
    wait_for(lambda: ended(state["pid"]), timeout=30, what="owner gone")
    done = subprocess.run(
        [*CLI, "cleanup", "--prefix", prefix],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert session_objects(prefix) == set()
    assert state_diff(root_before, root_state()) == {}
