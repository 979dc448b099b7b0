"""What the lab cluster gives the Kubernetes layer that the API does not: its nodes, its client,
its processes' cgroups and its eBPF controller's records.

:class:`~pytest_dataplane.providers.k8s.cluster.KubeCluster` runs on a :class:`~.lab.KubeLab`
with these in place of what kind and an existing cluster use:

- :class:`LabNodes` (the :class:`~pytest_dataplane.providers.k8s.nodes.NodeAccess` protocol):
  a node is a network namespace, and a script runs in it with ``nsenter`` — so the shared
  rule counting and kube-proxy's metrics script (its metrics listen on the node's loopback)
  work unchanged;
- :class:`LabTrafficPath`: ClusterIP Services, reached from the lab's client namespace (and,
  on ebpf, from the client cgroup the socket load balancer is attached to); one request at a
  time goes through a small prober process that lives there;
- :class:`LabCpuSource`: the dataplane's CPU from the cgroups of its processes (kube-proxy
  with the iptables-restore / nft it runs, or the eBPF controller);
- :class:`EbpfProgramming`: the eBPF controller's exact record of every endpoint change it
  programmed;
- :func:`wait_settled`: whether the dataplane has caught up with the API.

Why one module of some 570 lines: each of these is one hook of ``ClusterHooks`` over the same
small view of the lab (:class:`LabView`), and the largest, the client prober, is a process
with its own lifecycle; nftables' programming source, which runs processes of its own, is
:mod:`.nftmon`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from ....errors import DataplaneError
from ....events import Event
from ...k8s import resources
from ...k8s.dataplane import CpuReading
from .. import _proc
from .process import child_setup

__all__ = [
    "EbpfProgramming",
    "LabCpuSource",
    "LabNodes",
    "LabTrafficPath",
    "ProbeProcess",
    "read_usage_usec",
]

log = logging.getLogger(__name__)


class LabView(Protocol):
    """The part of :class:`~.lab.KubeLab` this module reads (a protocol, so tests can hand in
    a lab of their own making)."""

    @property
    def node_names(self) -> list[str]: ...

    def node_netns(self, index: int = 0) -> str: ...

    @property
    def client_netns(self) -> str: ...

    @property
    def client_cgroup(self) -> Path | None: ...

    def dataplane_cgroups(self, index: int = 0) -> list[Path]: ...

    @property
    def runs_kube_proxy(self) -> bool: ...

    def proxy_metrics(self, index: int = 0) -> str: ...

    def logs(self, lines: int = 25) -> dict[str, str]: ...

    def ebpf_programmed(self) -> dict[tuple[str, int, str], list[str]]: ...


# ---------------------------------------------------------------------------------- nodes


class LabNodes:
    """:class:`~pytest_dataplane.providers.k8s.nodes.NodeAccess` for a lab cluster: ``sh -c``
    in the node's network namespace. The node's mount namespace is the host's, so the tools
    are the host's (the same iptables binaries kube-proxy's PATH finds)."""

    def __init__(self, lab: LabView) -> None:
        self._lab = lab

    def __repr__(self) -> str:
        return f"LabNodes({self.nodes()})"

    def nodes(self) -> list[str]:
        return list(self._lab.node_names)

    def netns(self, node: str) -> str:
        """The network namespace of ``node``."""
        names = self.nodes()
        if node not in names:
            raise DataplaneError(
                f"node {node!r} is not a node of this lab cluster; nodes: {', '.join(names)}"
            )
        return self._lab.node_netns(names.index(node))

    def run(self, node: str, script: str, *, timeout: float = 60.0) -> str:
        argv = _proc.in_netns(self.netns(node), ["sh", "-c", script])
        env = dict(os.environ, PATH=_proc.sbin_path())
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                env=env,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise DataplaneError(
                f"on node {node}: {script[:80]!r} ran over {timeout:g} s"
            ) from None
        if done.returncode != 0:
            raise DataplaneError(
                f"on node {node}: {script[:80]!r} failed ({done.returncode}): "
                f"{done.stderr.strip()[:500]}"
            )
        return done.stdout


# ---------------------------------------------------------------------------------- traffic

# The prober's side: one JSON request a line on stdin ({"url", "timeout"}), one JSON answer a
# line on stdout ({"pod": name or null}). A new connection per request, as the load's
# per-request mode opens them, so the dataplane chooses a backend every time.
PROBE_SCRIPT: Final = r"""
import http.client, json, sys, urllib.parse
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    parts = urllib.parse.urlsplit(request["url"])
    pod = None
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=request["timeout"])
    try:
        conn.request("GET", "/hostname", headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read(256).decode(errors="replace").strip()
        pod = body if response.status == 200 else None
    except (OSError, http.client.HTTPException):
        pod = None
    finally:
        conn.close()
    print(json.dumps({"pod": pod}), flush=True)
"""


class ProbeProcess:
    """A long-lived prober in the client's network namespace and cgroup.

    Why a process: the test process must not join the client namespace or cgroup (its other
    threads would follow), and starting a process per request would cost far more than the
    request. It cannot outlive its owner: it has a parent-death signal (SIGKILL), and the
    thread that starts it — the signal fires when the *forking thread* ends — is one of ours
    that lives until :meth:`close`; it sits in a cgroup of the lab's (removed with the lab,
    and found by ``cleanup`` after a SIGKILL), and :meth:`close` kills and reaps it.
    """

    def __init__(self, netns: str, cgroup: Path | None, *, own_cgroup: bool) -> None:
        self.netns = netns
        self.cgroup = cgroup
        self._own_cgroup = own_cgroup
        self._lock = threading.Lock()  # one request at a time on the pipe
        self._popen: subprocess.Popen[str] | None = None
        self._requests: queue.Queue[tuple[str, queue.Queue[BaseException | None]]] = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._own, name="lab-prober", daemon=True)
        self._thread.start()
        self._call("start")

    def __repr__(self) -> str:
        pid = None if self._popen is None else self._popen.pid
        return f"<ProbeProcess netns={self.netns} cgroup={self.cgroup} pid={pid}>"

    @property
    def pid(self) -> int | None:
        return None if self._popen is None else self._popen.pid

    def _call(self, what: str) -> None:
        done: queue.Queue[BaseException | None] = queue.Queue()
        self._requests.put((what, done))
        error = done.get()
        if error is not None:
            raise error

    def _own(self) -> None:
        while True:
            what, done = self._requests.get()
            error: BaseException | None = None
            try:
                if what == "start":
                    self._start()
                elif what == "stop":
                    self._kill()
            except BaseException as exc:
                error = exc
            done.put(error)
            if what == "stop":
                return

    def _start(self) -> None:
        self._kill()
        if self.cgroup is not None and self._own_cgroup:
            self.cgroup.mkdir(parents=True, exist_ok=True)
        try:
            popen = subprocess.Popen(
                _proc.in_netns(self.netns, [sys.executable, "-c", PROBE_SCRIPT]),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                bufsize=1,
                start_new_session=True,  # Ctrl-C in the terminal is the lab's to handle
                preexec_fn=child_setup(self.cgroup, signal.SIGKILL),  # noqa: PLW1509 - started from our own long-lived thread
            )
        except OSError as exc:
            raise DataplaneError(f"cannot start the lab's client prober: {exc}") from None
        self._popen = popen
        if popen.stdout is None or not popen.stdout.readline():
            status = popen.wait()
            self._popen = None
            raise DataplaneError(
                f"the lab's client prober in {self.netns} exited ({status}) before it was ready"
            )

    def _kill(self) -> None:
        popen, self._popen = self._popen, None
        if popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            popen.kill()
        popen.wait()
        for stream in (popen.stdin, popen.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def hostname(self, url: str, *, timeout: float = 1.0) -> str | None:
        """The pod that answered one GET of ``url`` from the client, or None."""
        with self._lock:
            if self._closed:
                raise DataplaneError("the lab's client prober is closed")
            for attempt in (1, 2):
                popen = self._popen
                if popen is None or popen.poll() is not None:
                    # It died (killed from outside): a new one, once per request.
                    log.warning("lab client prober gone; starting a new one")
                    self._call("start")
                    popen = self._popen
                if popen is None or popen.stdin is None or popen.stdout is None:
                    raise DataplaneError("the lab's client prober did not start")
                try:
                    popen.stdin.write(json.dumps({"url": url, "timeout": timeout}) + "\n")
                    popen.stdin.flush()
                    line = popen.stdout.readline()
                except (BrokenPipeError, OSError):
                    line = ""
                if line:
                    answer: dict[str, Any] = json.loads(line)
                    pod = answer.get("pod")
                    return str(pod) if pod else None
                if attempt == 2:
                    raise DataplaneError("the lab's client prober died twice in one request")
            return None

    def close(self) -> None:
        """Kill and reap the prober; remove its cgroup if it is ours."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._call("stop")
        self._thread.join(10)
        if self.cgroup is not None and self._own_cgroup:
            with contextlib.suppress(FileNotFoundError):
                self.cgroup.rmdir()


class LabTrafficPath:
    """:class:`~pytest_dataplane.providers.k8s.traffic.TrafficPath` in the lab: ClusterIP
    Services, reached from the client namespace (and the client cgroup on ebpf: the
    cgroup/connect4 load balancer applies only to the processes in it)."""

    service_type = "ClusterIP"

    def __init__(self, lab: LabView, *, prober_cgroup: Path | None) -> None:
        self._lab = lab
        client_cgroup = lab.client_cgroup
        self._cgroup = None if client_cgroup is None else str(client_cgroup)
        self.missing_reason = (
            f"ClusterIPs are served in the lab's client namespace {lab.client_netns}"
            + ("" if client_cgroup is None else f" to the processes of cgroup {client_cgroup}")
        )
        self.prober = ProbeProcess(
            lab.client_netns,
            client_cgroup if client_cgroup is not None else prober_cgroup,
            own_cgroup=client_cgroup is None,
        )

    def __repr__(self) -> str:
        return f"LabTrafficPath({self._lab.client_netns!r}, cgroup={self._cgroup!r})"

    @property
    def netns(self) -> str | None:
        return self._lab.client_netns

    @property
    def cgroup(self) -> str | None:
        return self._cgroup

    def url(self, svc: Any) -> str | None:
        address = resources.cluster_ip(svc)
        ports = svc.get("spec", {}).get("ports") or [{}]
        return resources.url_for(address, int(ports[0].get("port", 80))) if address else None

    def hostname(self, url: str, *, timeout: float = 1.0) -> str | None:
        return self.prober.hostname(url, timeout=timeout)

    def close(self) -> None:
        """Stop the prober."""
        self.prober.close()


# ---------------------------------------------------------------------------------- CPU


def read_usage_usec(path: Path) -> int | None:
    """``usage_usec`` of a cgroup v2 directory's ``cpu.stat`` (None if it cannot be read)."""
    try:
        text = (path / "cpu.stat").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            with contextlib.suppress(ValueError):
                return int(value)
    return None


class LabCpuSource:
    """:class:`~pytest_dataplane.providers.k8s.dataplane.CpuSource` in the lab: the cgroups of
    the dataplane's processes on every node (``lab.dataplane_cgroups(i)``), read directly —
    they live in this host's cgroup tree."""

    def __init__(self, lab: LabView) -> None:
        self._lab = lab

    def read(self) -> CpuReading:
        counters: dict[str, float] = {}
        problems: list[str] = []
        for index, node in enumerate(self._lab.node_names):
            paths = self._lab.dataplane_cgroups(index)
            if not paths:
                problems.append(f"{node}: the lab names no dataplane cgroup")
            for path in paths:
                usec = read_usage_usec(path)
                if usec is None:
                    problems.append(f"{node}: no usage_usec in {path}/cpu.stat")
                else:
                    counters[f"{node}:{path}"] = usec / 1e6
        return CpuReading(counters, "; ".join(problems) or None)


# ---------------------------------------------------------------------------------- eBPF


class EbpfRecords(Protocol):
    """The lab's eBPF controller records (``KubeLab.ebpf_programming``)."""

    def ebpf_programming(self) -> list[dict[str, Any]]: ...

    def ebpf_programmed(self) -> dict[tuple[str, int, str], list[str]]: ...


class EbpfProgramming:
    """Exact per-change programming latency from the lab's eBPF controller: for each endpoint
    change the test's EndpointSlice watch saw, from that moment to the controller's BPF map
    write returning (its record of the same service, endpoint and change).

    Why not the records' own ``seconds``: their trigger is the EndpointSlice's
    ``last-change-trigger-time``, which the API keeps to the second (up to 1 s too long, the
    bias kube-proxy's histogram has too). The watch sees a change when the API server sends
    it, as the controller does: the difference is the delivery jitter between two watchers
    (milliseconds), so a change the controller programmed before the watch delivered it
    counts as 0. A change not programmed yet counts as the time since it was seen (a lower
    bound, so that a dataplane that never programs it cannot pass).
    """

    name = "lab eBPF controller (per change)"

    def __init__(self, lab: EbpfRecords, namespace: str) -> None:
        self._lab = lab
        self._namespace = namespace

    def latencies(self, changes: Sequence[Event]) -> list[float]:
        import time

        from ....events import now

        offset = time.time() - now()  # monotonic event times to wall time
        records = self._lab.ebpf_programming()
        used: set[int] = set()
        result: list[float] = []
        for event in changes:
            change = "added" if event.name == "endpoint-added" else "removed"
            service = f"{self._namespace}/{event.detail.get('service')}"
            endpoint = str(event.detail.get("endpoint"))
            seen = event.time + offset
            # The record of this change: the first of this service, endpoint and change
            # programmed no earlier than the previous change of the same endpoint could be.
            match = next(
                (
                    i
                    for i, r in enumerate(records)
                    if i not in used
                    and r.get("service") == service
                    and r.get("endpoint") == endpoint
                    and r.get("change") == change
                    and float(r["programmed"]) >= seen - _WATCH_SLACK
                ),
                None,
            )
            if match is None:
                result.append(max(0.0, time.time() - seen))
                continue
            used.add(match)
            result.append(max(0.0, float(records[match]["programmed"]) - seen))
        return result


# How much earlier than the test's watch the controller may receive a change (two watchers
# of one API server): records programmed earlier than this belong to an older change.
_WATCH_SLACK: Final = 1.0


def ebpf_service_entries(lab: EbpfRecords) -> int:
    """Services in the eBPF load balancer's service map now (what ``cilium-dbg bpf lb list``
    counts on kind)."""
    return len(lab.ebpf_programmed())


# ---------------------------------------------------------------------------------- settling

# kube-proxy's gauges of changes received but not yet written to the kernel, and the times
# of its last queued change and last completed sync.
_PENDING: Final = (
    "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
    "kubeproxy_sync_proxy_rules_service_changes_pending",
)
_QUEUED: Final = "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds"
_SYNCED: Final = "kubeproxy_sync_proxy_rules_last_timestamp_seconds"


def proxy_caught_up(metrics: str) -> bool:
    """Whether kube-proxy's /metrics text says it has written every change it received: no
    change pending, and its last completed sync no older than its last queued change."""
    from .probe import metric

    if not metrics:
        return False
    if any((metric(metrics, name) or 0.0) > 0 for name in _PENDING):
        return False
    queued = metric(metrics, _QUEUED)
    synced = metric(metrics, _SYNCED)
    return synced is not None and (queued is None or synced >= queued)


def wait_settled(
    lab: LabView,
    *,
    timeout: float,
    poll: float = 0.1,
    cluster_ips: Callable[[], ServiceAddresses] | None = None,
) -> None:
    """Wait until the dataplane has caught up with the changes it received (one test's
    cleanup must not be measured in the next; a rollout must not start while thousands of
    new background services are still being programmed): every node's kube-proxy has synced
    what it queued; on ebpf, where ``cluster_ips()`` says which Services exist and which of
    them have ready endpoints, the controller's maps hold every one of the latter and no
    address of a Service that is gone.
    """
    import time

    deadline = time.monotonic() + timeout
    if not lab.runs_kube_proxy:
        if cluster_ips is None:
            return
        while True:
            programmed = {vip for vip, _, _ in lab.ebpf_programmed()}
            wanted = cluster_ips()
            stale = programmed - wanted.existing
            missing = wanted.ready - programmed
            if not stale and not missing:
                return
            if time.monotonic() > deadline:
                raise DataplaneError(
                    f"the eBPF controller did not catch up in {timeout:g} s: it serves "
                    f"{len(stale)} deleted services (e.g. {sorted(stale)[:3]}) and misses "
                    f"{len(missing)} services with ready endpoints (e.g. {sorted(missing)[:3]})"
                )
            time.sleep(poll)
    for index, node in enumerate(lab.node_names):
        while not proxy_caught_up(lab.proxy_metrics(index)):
            if time.monotonic() > deadline:
                raise DataplaneError(
                    f"kube-proxy on {node} did not catch up with the API in {timeout:g} s"
                )
            time.sleep(poll)


@dataclass(frozen=True)
class ServiceAddresses:
    """Cluster IPs of the cluster's Services: all of them, and those with a ready endpoint."""

    existing: frozenset[str]
    ready: frozenset[str]


def service_ips(api: Any) -> ServiceAddresses:
    """:class:`ServiceAddresses` of the cluster (``api``: a KubeApi), from one list of its
    Services and one of its EndpointSlices."""
    services, _ = api.list_items("v1", "Service", None)
    slices, _ = api.list_items("discovery.k8s.io/v1", "EndpointSlice", None)
    with_ready = set()
    for item in slices:
        meta = item.get("metadata") or {}
        name = (meta.get("labels") or {}).get("kubernetes.io/service-name")
        # An endpoint without a ready condition counts as ready (the API's own rule).
        if name and any(
            (e.get("conditions") or {}).get("ready") is not False
            for e in item.get("endpoints") or []
        ):
            with_ready.add((meta.get("namespace"), name))
    existing: set[str] = set()
    ready: set[str] = set()
    for item in services:
        meta = item.get("metadata") or {}
        addresses = resources.cluster_ips(item)
        existing |= addresses
        if (meta.get("namespace"), meta.get("name")) in with_ready:
            ready |= addresses
    return ServiceAddresses(frozenset(existing), frozenset(ready))


def dataplane_logs(lab: LabView, lines: int = 60) -> list[tuple[str, str]]:
    """The dataplane processes' log tails (kube-proxy per node, or the eBPF controller) and
    the node agents', for a failure report."""
    wanted = ("kube-proxy-", "ebpf", "agent-")
    return [
        (f"lab {name} log (last {lines} lines)", text)
        for name, text in sorted(lab.logs(lines).items())
        if name.startswith(wanted)
    ]
