"""Dataplane comparison in the lab: what 1, 1,000 and 5,000 services cost each dataplane.

Run as root, on demand (not part of the test suite), once the Kubernetes binaries are built
(``python -m pytest_dataplane kube build``)::

    sudo .venv/bin/python benchmarks/lab.py [--services 1,1000,5000] [--dataplanes ...]

Each dataplane gets one real lab Kubernetes cluster (API server, controllers, kube-proxy in
iptables or nftables mode, or the lab's eBPF controller), and a Deployment ``bench`` of 3 pods
behind a ClusterIP Service. The service counts are reached by growing one set of selectorless
background services (3 endpoints each) within that cluster, never by recreating it: the API
server allocates ClusterIPs slowly (minutes for 5,000 on 2 cores), and the time each growth
took is printed. At each count it measures, in one run on this machine:

* connection + request latency (p50/p95/p99) of new TCP connections to the service's
  ClusterIP from the client namespace (on ebpf, its cgroup), with an open-loop load at a fixed
  rate and a backend answering at once, so the dataplane's per-connection cost is what
  differs; at the first count, the same load straight to a pod IP is the reference row
  ("direct"), the floor no dataplane can beat;
* network-programming latency (p50/p95) during a rollout (surge 1) under that load, from
  ``cluster.programming_latencies()``: kube-proxy's own
  ``kubeproxy_network_programming_duration_seconds`` (the Kubernetes SLI; a histogram, so each
  figure is its bucket's upper bound) or the lab's per-change figures (the eBPF controller's
  record of each change); each row names its source;
* dataplane CPU per endpoint change in that rollout (``cluster.cpu_seconds()``: kube-proxy's
  cgroup with the iptables-restore / nft it runs, or the eBPF controller's cgroup);
* kube-proxy's full sync: one is forced by changing the node's topology-zone label (kube-proxy
  resyncs every service on a topology change) and timed by kube-proxy itself, from its
  ``kubeproxy_sync_full_proxy_rules_duration_seconds`` histogram (the change of its ``_sum``
  over the change of its ``_count``: exact). The eBPF controller has no full-sync trigger
  (it writes everything once at start and on a relist): n/a;
* the ``KUBE-`` rule lines (``cluster.rule_count()``);

then prints the table, the ratios iptables/ebpf (and nftables/ebpf) of every column, and the
machine's load average at each measurement (the figures are only as quiet as the machine).
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pytest_dataplane.config import parse_dataplanes
from pytest_dataplane.errors import DataplaneError
from pytest_dataplane.load import LoadFactory, LoadResult, run
from pytest_dataplane.providers.lab import LabProvider
from pytest_dataplane.providers.lab.kube.access import wait_settled

FULL_SYNC = "kubeproxy_sync_full_proxy_rules_duration_seconds"
# kube-proxy counts the syncs whose write to the kernel failed; such a sync is still timed
# (its duration histograms observe every attempt) but programs nothing and observes no
# programming latency.
SYNC_FAILURES = (
    "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
    "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
    "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
)
# kube-proxy resyncs every service when this label of its Node changes (OnTopologyChange).
ZONE_LABEL = "topology.kubernetes.io/zone"
ENDPOINTS = 3
SETTLE_TIMEOUT = 900.0
CLOSE_FAILURES: list[str] = []


@dataclass
class Row:
    dataplane: str
    services: int
    p50: float = float("nan")
    p95: float = float("nan")
    p99: float = float("nan")
    errors: int = 0
    saturated: bool = False
    prog_p50: float = float("nan")
    prog_p95: float = float("nan")
    changes: int = 0
    cpu_p50: float = float("nan")
    cpu_p95: float = float("nan")
    full_sync: float = float("nan")
    full_sync_failed: bool = False
    sync_failures: int = 0
    rules: int = 0
    created: float = float("nan")  # seconds to create this count's new background services
    load: tuple[float, float, float] = (float("nan"),) * 3
    notes: list[str] = field(default_factory=list)


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 1e3:.3f}"


def _percentiles(values: npt.NDArray[np.float64]) -> tuple[float, float]:
    if values.size == 0:
        return float("nan"), float("nan")
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def _new_observations(
    before: npt.NDArray[np.float64], after: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """What ``after`` holds beyond ``before``, as multisets: kube-proxy's histogram comes back
    sorted by bucket, so the new observations are not simply its tail."""
    left = collections.Counter(after.tolist())
    left.subtract(collections.Counter(before.tolist()))
    return np.asarray(sorted(left.elements()), dtype=np.float64)


def _sum_count(metrics: str, name: str) -> tuple[float, float]:
    """``_sum`` and ``_count`` of histogram ``name`` in Prometheus text, of the IPv4 proxier.

    kube-proxy runs one proxier per IP family (its metaproxier): the IPv6 one holds none of
    the lab's services and its syncs take a tenth of a second whatever the IPv4 one carries,
    so counting both families would time the wrong sync.
    """
    total = count = 0.0
    for line in metrics.splitlines():
        head, _, value = line.rpartition(" ")
        metric, _, labels = head.partition("{")
        if "ip_family=" in labels and 'ip_family="IPv4"' not in labels:
            continue
        if metric == f"{name}_sum":
            total += float(value)
        elif metric == f"{name}_count":
            count += float(value)
    return total, count


def _value(metrics: str, name: str) -> float:
    """A counter's value in Prometheus text, summed over its labels (0 when absent)."""
    total = 0.0
    for line in metrics.splitlines():
        head, _, value = line.rpartition(" ")
        if head.split("{", 1)[0] == name:
            total += float(value)
    return total


def sync_failures(lab: Any) -> int:
    """kube-proxy's failed syncs so far, summed over nodes and kinds (0 on ebpf)."""
    if not lab.runs_kube_proxy:
        return 0
    texts = [lab.proxy_metrics(i) for i in range(len(lab.node_names))]
    return round(sum(_value(text, name) for text in texts for name in SYNC_FAILURES))


def show_failures(lab: Any, label: str) -> None:
    """kube-proxy's own words on its failed syncs, on stderr."""
    for name, text in sorted(lab.logs(4000).items()):
        if not name.startswith("kube-proxy"):
            continue
        wanted = [line for line in text.splitlines() if "rror" in line or "ailed" in line]
        print(f"# {label}: {name}: {len(wanted)} error lines, the last:", file=sys.stderr)
        for line in wanted[-6:]:
            print(f"#   {line[:400]}", file=sys.stderr)


def force_full_sync(cluster: Any, serial: int) -> tuple[float, str]:
    """Make every node's kube-proxy resync all services; its own figure for that sync (the
    slowest node's) and a note."""
    lab = cluster.handle
    wait_settled(lab, timeout=SETTLE_TIMEOUT)
    before = [_sum_count(lab.proxy_metrics(i), FULL_SYNC) for i in range(len(lab.node_names))]
    for node in lab.node_names:
        cluster.api.patch(
            "v1",
            "Node",
            node,
            None,
            {"metadata": {"labels": {ZONE_LABEL: f"bench-{serial}"}}},
            strategic=False,
        )
    seconds = 0.0
    note = ""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    for index, (sum0, count0) in enumerate(before):
        while True:
            total, count = _sum_count(lab.proxy_metrics(index), FULL_SYNC)
            if count > count0:
                break
            if time.monotonic() > deadline:
                raise DataplaneError(
                    f"kube-proxy on {lab.node_names[index]} made no full sync in "
                    f"{SETTLE_TIMEOUT:g} s after its topology label changed"
                )
            time.sleep(0.1)
        if count - count0 > 1:
            note = f"{count - count0:g} full syncs meanwhile: their mean"
        seconds = max(seconds, (total - sum0) / (count - count0))
    return seconds, note


def wait_programmed(cluster: Any, service: Any) -> None:
    """Wait until the dataplane holds what the API says (kube-proxy: nothing pending; ebpf:
    the service's map entry lists exactly its ready endpoints)."""
    lab = cluster.handle
    if lab.runs_kube_proxy:
        wait_settled(lab, timeout=SETTLE_TIMEOUT)
        return
    svc = cluster.api.get("v1", "Service", service.name, cluster.namespace)
    vip = svc["spec"]["clusterIP"]
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while time.monotonic() < deadline:
        wanted = set(service.endpoints)
        held = [set(v) for k, v in lab.ebpf_programmed().items() if k[0] == vip]
        if held and all(h == wanted for h in held):
            return
        time.sleep(0.05)
    raise DataplaneError(f"the eBPF maps never held {service.name}'s endpoints {wanted}")


def wait_background(cluster: Any, services: int) -> None:
    """Wait until the dataplane caught up with the background services: kube-proxy has
    nothing pending; the eBPF maps hold at least ``services`` services (the API server's own
    ``kubernetes`` service counts too, so this may end one service early: the measurement
    waits for its own service's endpoints anyway)."""
    lab = cluster.handle
    if lab.runs_kube_proxy:
        wait_settled(lab, timeout=SETTLE_TIMEOUT)
        return
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while len(lab.ebpf_programmed()) < services:
        if time.monotonic() > deadline:
            raise DataplaneError(f"the eBPF maps never held {services} services")
        time.sleep(0.1)


def _latencies(row: Row, result: LoadResult) -> None:
    row.p50, row.p95, row.p99 = (result.percentile(q) for q in (50, 95, 99))
    row.errors += result.errors
    row.saturated = row.saturated or result.saturated


def measure(label: str, counts: list[int], args: argparse.Namespace) -> list[Row]:
    dataplane, backend = label, "auto"
    if label.startswith("iptables-"):
        dataplane, backend = "iptables", label.split("-", 1)[1]
    provider = LabProvider(iptables_backend=backend)
    reason = provider.availability(dataplane)
    if reason is not None:
        print(f"# {label}: skipped ({reason})", file=sys.stderr)
        return []
    rows = []
    try:
        began = time.monotonic()
        cluster = provider.create(dataplane)
        lab = cluster.handle
        if dataplane == "iptables":
            label = f"iptables-{lab.iptables_backend}"
        service = cluster.deploy("bench", replicas=3)
        print(f"# {label}: cluster and bench up in {time.monotonic() - began:.1f} s", flush=True)
        rows.append(direct(label, service, args))
        print(f"# measured: {rows[-1]}", flush=True)
        factory = LoadFactory(record=None)
        background = 0
        for serial, count in enumerate(counts):
            row = Row(label, count)
            missing = count - 1 - background  # the bench service is one of the count
            if missing > 0:
                began = time.monotonic()
                cluster.add_background_services(missing, endpoints=ENDPOINTS)
                row.created = time.monotonic() - began
                background += missing
                wait_background(cluster, background + 1)
                print(
                    f"# {label}: {missing} background services added in {row.created:.1f} s "
                    f"({missing / row.created:.0f}/s; add_background_services returns once the "
                    f"dataplane has them), all programmed after {time.monotonic() - began:.1f} s",
                    flush=True,
                )
            row.load = os.getloadavg()
            failed = sync_failures(lab)
            if lab.runs_kube_proxy:
                row.full_sync, note = force_full_sync(cluster, serial)
                if note:
                    row.notes.append(note)
                row.full_sync_failed = sync_failures(lab) > failed
            wait_programmed(cluster, service)
            _latencies(
                row,
                run(
                    service.url,
                    rate=args.rate,
                    duration=args.duration,
                    engine="fast",
                    netns=service.netns,
                    cgroup=service.cgroup,
                ),
            )
            before_prog = cluster.programming_latencies()
            before_cpu = len(cluster.cpu_seconds().per_change)
            with factory(
                service, rate=args.rate, duration=args.rollout_duration, engine="fast"
            ) as during:
                time.sleep(0.5)  # some load before the rollout starts
                service.rollout(max_surge=1, max_unavailable=0, grace="2s")
                wait_programmed(cluster, service)
            row.errors += during.result.errors
            row.saturated = row.saturated or during.result.saturated
            after_prog = cluster.programming_latencies()
            if cluster.latency_source == "kube-proxy histogram":
                new = _new_observations(before_prog, after_prog)
            else:
                # One figure per change, in the order the changes were seen.
                new = after_prog[before_prog.size :]
            row.notes.append(f"prog: {cluster.latency_source}")
            row.changes = new.size
            row.prog_p50, row.prog_p95 = _percentiles(new)
            row.cpu_p50, row.cpu_p95 = _percentiles(
                np.asarray(cluster.cpu_seconds().per_change[before_cpu:], dtype=np.float64)
            )
            row.rules = cluster.rule_count().total
            row.sync_failures = sync_failures(lab) - failed
            if row.sync_failures:
                row.notes.append(f"kube-proxy: {row.sync_failures} failed syncs")
                show_failures(lab, f"{label} at {count}")
            rows.append(row)
            print(f"# measured: {row}", flush=True)
        factory.close()
    finally:
        try:
            provider.close()
        except DataplaneError as exc:
            # The rows measured stand; the failure is reported and makes the exit status 1
            # (``python -m pytest_dataplane cleanup`` reaps what is left).
            print(f"# {label}: closing the lab failed: {exc}", file=sys.stderr)
            CLOSE_FAILURES.append(f"{label}: {exc}")
    return rows


def direct(label: str, service: Any, args: argparse.Namespace) -> Row:
    """The same load straight to a pod from the client namespace: no service translation (on
    ebpf outside the balanced cgroup, so its program is not even consulted)."""
    row = Row(f"direct ({label})", 1)
    row.load = os.getloadavg()
    pod = service.endpoints[0]
    _latencies(
        row,
        run(
            f"http://{pod}/",
            rate=args.rate,
            duration=args.duration,
            engine="fast",
            netns=service.netns,
        ),
    )
    return row


def _full_sync(row: Row) -> str:
    if math.isnan(row.full_sync):
        return "n/a"
    return f"{'FAILED ' if row.full_sync_failed else ''}{row.full_sync:.3f}s"


def _ratio(a: float, b: float, digits: int) -> str:
    if math.isnan(a) or math.isnan(b) or b == 0:
        return "n/a"
    return f"{a / b:.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--dataplanes", default="iptables,nftables,ebpf")
    parser.add_argument("--services", default="1,1000,5000")
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rollout-duration", type=float, default=8.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("benchmarks/lab.py needs root (network namespaces)", file=sys.stderr)
        return 2
    counts = sorted({int(c) for c in args.services.split(",")})
    if counts[0] < 1:
        raise SystemExit(f"--services: {args.services!r}; accepted: counts >= 1")
    names = [d.strip() for d in args.dataplanes.split(",") if d.strip()]
    parse_dataplanes([n.split("-")[0] for n in names])  # validates the names
    started = time.monotonic()
    rows: list[Row] = []
    for name in names:
        rows += measure(name, counts, args)
    header = (
        f"{'dataplane':25} {'services':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
        f"{'prog p50':>9} {'prog p95':>9} {'changes':>7} {'cpu/chg p50':>11} "
        f"{'cpu/chg p95':>11} {'full sync':>9} {'KUBE- lines':>11} {'errors':>6} "
        f"{'created':>8} {'load avg':>14}"
    )
    print(
        f"\nlab dataplanes on real Kubernetes, {os.cpu_count()} CPUs, kernel "
        f"{os.uname().release}, load {args.rate:g} req/s of new connections, "
        f"{time.monotonic() - started:.0f} s in all\n"
    )
    print(header)
    for r in rows:
        flag = " (load generator saturated)" if r.saturated else ""
        notes = "".join(f"; {n}" for n in r.notes)
        created = "" if math.isnan(r.created) else f"{r.created:.0f}s"
        print(
            f"{r.dataplane:25} {r.services:>8} {_ms(r.p50):>8} {_ms(r.p95):>8} {_ms(r.p99):>8} "
            f"{_ms(r.prog_p50):>9} {_ms(r.prog_p95):>9} {r.changes:>7} {_ms(r.cpu_p50):>11} "
            f"{_ms(r.cpu_p95):>11} "
            f"{_full_sync(r):>9} "
            f"{r.rules:>11,} {r.errors:>6} {created:>8} "
            f"{' '.join(f'{x:.1f}' for x in r.load):>14}{flag}{notes}"
        )
    print(
        "\nprog: the cluster's programming-latency source (in each row's notes; kube-proxy "
        "histogram: network_programming_duration_seconds, bucket upper bounds); full sync: "
        "kube-proxy's own figure (IPv4) for a sync forced by a node topology-label change"
    )
    ebpf = {r.services: r for r in rows if r.dataplane == "ebpf"}
    print("\nratios to ebpf at the same service count (>1: slower / costlier than ebpf)")
    print(
        f"{'dataplane':25} {'services':>8} {'p50':>7} {'p95':>7} {'p99':>7} {'prog p95':>9} "
        f"{'cpu/chg p95':>11}"
    )
    for r in rows:
        ref = ebpf.get(r.services)
        if ref is None or r.dataplane == "ebpf" or r.dataplane.startswith("direct"):
            continue
        print(
            f"{r.dataplane:25} {r.services:>8} {_ratio(r.p50, ref.p50, 2):>7} "
            f"{_ratio(r.p95, ref.p95, 2):>7} {_ratio(r.p99, ref.p99, 2):>7} "
            f"{_ratio(r.prog_p95, ref.prog_p95, 0):>9} {_ratio(r.cpu_p95, ref.cpu_p95, 0):>11}"
        )
    return 1 if CLOSE_FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
