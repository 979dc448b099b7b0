"""LabCluster and LabService: the Cluster / Service protocols on real kernel dataplanes.

A pod is a network namespace on the node's bridge running the lab backend; a Deployment is
a set of pods of one version; the "EndpointSlice controller" here adds a pod to its service's
endpoints when the pod is ready and removes it first when the pod is deleted, before the pod
is stopped after its grace period. Endpoint changes go to the proxier through
:class:`~._sync.SyncLoop`, which schedules syncs like kube-proxy; each is submitted under
the cluster's lock together with the change of state it describes, and before anyone can
see its effect (a pod ready), so that a sync never reads a change it was not told of and
:meth:`LabCluster.wait_programmed` covers every change already visible.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ...config import ServiceTime, parse_duration, resolve_int_or_percent
from ...errors import DataplaneError
from ...events import Event, now
from ..base import (
    CpuUsage,
    RuleCount,
    check_background_args,
    check_deploy_args,
    check_replicas,
)
from . import _proc
from ._sync import Change, SyncLoop
from ._types import Endpoint, Proxier, ServiceSpec
from .netns import MAX_PODS, AddressPlan, Topology

log = logging.getLogger(__name__)

POD_START_TIMEOUT = 30.0
DEFAULT_GRACE = 1.0


@dataclass
class _Pod:
    name: str
    slot: int
    netns: str
    ip: str
    version: str
    process: subprocess.Popen[bytes] | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    failed: str | None = None
    terminating: bool = False
    stopped: threading.Event = field(default_factory=threading.Event)
    removed: bool = False


class LabService:
    """A Deployment of lab backend pods behind a virtual IP."""

    def __init__(
        self,
        cluster: LabCluster,
        name: str,
        *,
        vip: str,
        port: int,
        replicas: int,
        service_time: ServiceTime | None,
    ) -> None:
        self.name = name
        self._cluster = cluster
        self.vip = vip
        self.port = port
        self.replicas = replicas
        self.service_time = service_time
        self.version = 1
        self.pods: list[_Pod] = []
        self._endpoints: list[_Pod] = []
        self.key = f"default/{name}:http"
        self._serial = 0

    def __repr__(self) -> str:
        return f"<LabService {self.name} {self.url} on {self._cluster.name}>"

    # ------------------------------------------------------------------ Service protocol

    @property
    def url(self) -> str:
        """The cluster IP URL; reachable from :attr:`netns` (and :attr:`cgroup` on ebpf)."""
        return f"http://{self.vip}:{self.port}/"

    @property
    def netns(self) -> str | None:
        return self._cluster.topology.client

    @property
    def cgroup(self) -> str | None:
        return self._cluster.client_cgroup

    @property
    def endpoints(self) -> list[str]:
        with self._cluster._lock:
            return [f"{pod.ip}:{self.port}" for pod in self._endpoints]

    @property
    def events(self) -> list[Event]:
        return [e for e in self._cluster.events if e.detail.get("service") == self.name]

    def spec(self) -> ServiceSpec:
        """What the proxier must program for this service now."""
        return ServiceSpec(
            name=self.key,
            vip=self.vip,
            port=self.port,
            endpoints=tuple(Endpoint(pod.ip, self.port) for pod in self._endpoints),
        )

    def scale(self, replicas: int, *, grace: float | str = DEFAULT_GRACE) -> None:
        """Scale to ``replicas`` pods; returns when new pods are ready, or when removed pods,
        out of the endpoints first, have stopped ``grace`` later."""
        check_replicas(replicas)
        grace_s = parse_duration(grace, name="grace")
        cluster = self._cluster
        cluster._event(
            "scale", service=self.name, replicas_from=self.replicas, replicas_to=replicas
        )
        self.replicas = replicas
        live = [p for p in self.pods if not p.terminating]
        if replicas > len(live):
            started = [self._start_pod() for _ in range(replicas - len(live))]
            self._wait_ready(started)
        else:
            # Like a ReplicaSet: unready pods go first, then the newest.
            victims = sorted(live, key=lambda p: (p.ready.is_set(), -self.pods.index(p)))
            removed = victims[: len(live) - replicas]
            for pod in removed:
                self._delete_pod(pod, grace_s)
            self._wait_stopped(removed, grace_s)
        cluster._event("scale-end", service=self.name, replicas=replicas)

    def rollout(
        self,
        *,
        max_surge: int | str = "25%",
        max_unavailable: int | str = "25%",
        grace: float | str = DEFAULT_GRACE,
        timeout: float | str = "120s",
    ) -> None:
        """Replace every pod by one of a new version, with Deployment RollingUpdate semantics.

        New pods are created while the total stays within ``replicas + max_surge``; old pods
        are deleted while the ready ones stay at least ``replicas - max_unavailable``; a new
        pod joins the endpoints when it is ready, an old pod leaves them when it is deleted and
        stops ``grace`` later. Returns (and marks ``rollout-end``) when every old pod has
        stopped, so that the rollout window holds what their termination caused.
        """
        replicas = self.replicas
        surge = resolve_int_or_percent(max_surge, replicas, round_up=True, name="max_surge")
        unavailable = resolve_int_or_percent(
            max_unavailable, replicas, round_up=False, name="max_unavailable"
        )
        if surge == 0 and unavailable == 0:
            raise ValueError(
                f"max_surge={max_surge!r} and max_unavailable={max_unavailable!r} both resolve "
                f"to 0 for {replicas} replicas; at least one must be positive"
            )
        grace_s = parse_duration(grace, name="grace")
        deadline = time.monotonic() + parse_duration(timeout, name="timeout")
        cluster = self._cluster
        self.version += 1
        version = f"v{self.version}"
        retired: list[_Pod] = []
        cluster._event(
            "rollout-start",
            service=self.name,
            version=version,
            replicas=replicas,
            max_surge=surge,
            max_unavailable=unavailable,
        )
        while True:
            with cluster._lock:
                old = [p for p in self.pods if p.version != version and not p.terminating]
                new = [p for p in self.pods if p.version == version and not p.terminating]
                failed = [p for p in new if p.failed]
            if failed:
                raise DataplaneError(
                    f"rollout of {self.name}: pod {failed[0].name} failed: {failed[0].failed}"
                )
            new_ready = [p for p in new if p.ready.is_set()]
            if not old and len(new_ready) >= replicas:
                break
            progressed = False
            room = replicas + surge - len(old) - len(new)
            for _ in range(max(0, min(room, replicas - len(new)))):
                self._start_pod(version)
                progressed = True
            available = len(new_ready) + sum(1 for p in old if p.ready.is_set())
            removable = available - (replicas - unavailable)
            # Unready old pods cost no availability: delete them first.
            for pod in sorted(old, key=lambda p: p.ready.is_set()):
                if not pod.ready.is_set():
                    self._delete_pod(pod, grace_s)
                    retired.append(pod)
                    progressed = True
                elif removable > 0:
                    self._delete_pod(pod, grace_s)
                    retired.append(pod)
                    removable -= 1
                    progressed = True
            if not progressed:
                if time.monotonic() > deadline:
                    raise DataplaneError(
                        f"rollout of {self.name} did not finish in time: {len(new_ready)} of "
                        f"{replicas} new pods ready, {len(old)} old pods left"
                    )
                cluster._pod_changed.wait(0.05)
                cluster._pod_changed.clear()
        self._wait_stopped(retired, grace_s)
        cluster._event("rollout-end", service=self.name, version=version)

    # ------------------------------------------------------------------ pods

    def _start_pod(self, version: str | None = None) -> _Pod:
        cluster = self._cluster
        self._serial += 1
        pod_name = f"{self.name}-{self._serial}"
        slot = cluster._allocate_slot()
        netns, ip = cluster.topology.add_pod(pod_name, slot)
        # The address may have been a stopped pod's: the node would keep sending to that
        # pod's MAC while its ARP entry looks valid (up to a minute) and connections to the
        # new pod would time out. Forget the entry, so that the node asks again.
        _proc.run(["ip", "neigh", "flush", "to", ip], netns=cluster.topology.node, check=False)
        pod = _Pod(pod_name, slot, netns, ip, version or f"v{self.version}")
        with cluster._lock:
            self.pods.append(pod)
        cluster._event("pod-started", service=self.name, pod=pod_name, ip=ip)
        argv = [
            sys.executable,
            "-m",
            "pytest_dataplane.providers.lab.backend",
            "--name",
            pod_name,
            "--port",
            str(self.port),
            "--version",
            pod.version,
            "--parent",
            str(os.getpid()),
        ]
        if self.service_time is not None:
            argv += ["--service-time", self.service_time.spec]
        log_path = cluster.state_dir / f"{pod_name}.log"
        with open(log_path, "ab") as log_file:
            pod.process = subprocess.Popen(
                _proc.in_netns(netns, argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log_file,
                start_new_session=True,  # Ctrl-C in the terminal is the lab's to handle
            )
        threading.Thread(
            target=self._watch_pod, args=(pod, log_path), name=f"pod-{pod_name}", daemon=True
        ).start()
        return pod

    def _watch_pod(self, pod: _Pod, log_path: Path) -> None:
        process = pod.process
        if process is None or process.stdout is None:  # pragma: no cover - set by _start_pod
            return
        line = process.stdout.readline()
        if line.startswith(b"READY"):
            self._cluster._pod_ready(self, pod)
        else:
            detail = log_path.read_text(errors="replace").strip()[-500:] or "no output"
            pod.failed = f"exited before becoming ready: {detail}"
            self._cluster._pod_changed.set()
        process.stdout.read()  # until the pod exits
        process.stdout.close()
        process.wait()
        pod.stopped.set()

    def _wait_ready(self, pods: Sequence[_Pod], timeout: float = POD_START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        for pod in pods:
            while not pod.ready.wait(0.05):
                if pod.failed:
                    raise DataplaneError(f"pod {pod.name} failed: {pod.failed}")
                if time.monotonic() > deadline:
                    raise DataplaneError(f"pod {pod.name} not ready after {timeout:g} s")

    def _wait_stopped(self, pods: Sequence[_Pod], grace: float) -> None:
        deadline = time.monotonic() + grace + POD_START_TIMEOUT
        for pod in pods:
            while not pod.removed:
                if time.monotonic() > deadline:
                    raise DataplaneError(f"pod {pod.name} did not stop after its {grace:g} s grace")
                time.sleep(0.02)

    def _delete_pod(self, pod: _Pod, grace: float) -> None:
        cluster = self._cluster
        pod.terminating = True
        cluster._remove_endpoint(self, pod)
        cluster._event("pod-terminating", service=self.name, pod=pod.name, grace=grace)
        timer = threading.Timer(grace, cluster._stop_pod, args=(self, pod))
        timer.daemon = True
        cluster._timers.append(timer)
        timer.start()


class LabCluster:
    """A lab cluster: one node namespace running one dataplane, a client namespace, pods."""

    provider = "lab"

    def __init__(
        self,
        dataplane: str,
        *,
        prefix: str,
        block: int,
        state_dir: Path,
        make_proxier: Any,
        min_sync_period: float,
        cgroup_root: Path | None = None,
        facts: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = dataplane
        self.prefix = prefix
        self.state_dir = state_dir
        self.plan = AddressPlan(block)
        self.topology = Topology(prefix, self.plan)
        self._facts = dict(facts or {})
        self._lock = threading.RLock()
        self._pod_changed = threading.Event()
        self._events: list[Event] = []
        self._services: dict[str, LabService] = {}
        self._background: dict[str, ServiceSpec] = {}
        self._free_slots = list(range(MAX_PODS))
        self._next_vip = 0
        self._timers: list[threading.Timer] = []
        self.client_cgroup: str | None = None
        self._closed = False
        self.timings: dict[str, float] = {}
        state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.topology.create()
            if cgroup_root is not None:
                path = cgroup_root / f"{prefix}-client"
                path.mkdir(parents=True, exist_ok=True)
                self.client_cgroup = str(path)
            self.proxier: Proxier = make_proxier(self)
            self.proxier.start()
            self._sync = SyncLoop(
                self.proxier, self._desired, min_sync_period=min_sync_period, lock=self._lock
            )
            self._sync.start()
            self._sync.wait(self._sync.submit(full=True))
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"<LabCluster {self.name} {self.prefix}>"

    # ------------------------------------------------------------------ Cluster protocol

    @property
    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)

    def deploy(
        self,
        name: str,
        replicas: int = 3,
        *,
        service_time: ServiceTime | float | str | None = None,
        port: int = 80,
    ) -> LabService:
        """Start ``replicas`` backend pods behind a new service and wait until the dataplane
        routes to them."""
        check_deploy_args(name, replicas, port)
        if name in self._services:
            raise ValueError(f"name: a service called {name!r} exists already on this cluster")
        service = LabService(
            self,
            name,
            vip=self.plan.service_ip(self._take_vip()),
            port=port,
            replicas=replicas,
            service_time=ServiceTime.parse(service_time),
        )
        with self._lock:
            self._services[name] = service
        self._event("deploy", service=name, replicas=replicas, vip=service.vip)
        pods = [service._start_pod() for _ in range(replicas)]
        service._wait_ready(pods)
        self.wait_programmed()
        return service

    def service(self, name: str) -> LabService:
        try:
            return self._services[name]
        except KeyError:
            known = ", ".join(sorted(self._services)) or "none"
            raise KeyError(f"no service {name!r} on this cluster; services: {known}") from None

    def add_background_services(self, count: int, endpoints: int = 3) -> None:
        """Add ``count`` services of ``endpoints`` endpoints each (addresses with no process
        behind them, like services of other nodes' pods) and wait until they are programmed."""
        check_background_args(count, endpoints)
        started = now()
        with self._lock:
            base = len(self._background)
            changes = []
            for i in range(base, base + count):
                key = f"background/svc-{i:05d}:http"
                self._background[key] = ServiceSpec(
                    name=key,
                    vip=self.plan.service_ip(self._take_vip()),
                    port=80,
                    endpoints=tuple(
                        Endpoint(self.plan.phantom_ip(i * endpoints + j), 8080)
                        for j in range(endpoints)
                    ),
                )
                changes.append(Change(key, started, f"{key} created", endpoint_change=False))
            generation = self._sync.submit(changes)
        self._event(
            "background-services", count=count, endpoints=endpoints, total=len(self._background)
        )
        self._sync.wait(generation)
        took = now() - started
        self.timings["program_background"] = took
        self._event("background-programmed", count=count, seconds=took)

    def rule_count(self) -> RuleCount:
        return self.proxier.rule_count()

    def programming_latencies(self) -> npt.NDArray[np.float64]:
        return np.asarray(self._sync.programming_latencies(), dtype=np.float64)

    def cpu_seconds(self) -> CpuUsage:
        per_change, changes, total = self._sync.cpu_per_change()
        syncs = [r.result for r in self._sync.records]
        return CpuUsage(
            total=total,
            per_change=tuple(per_change),
            changes=tuple(c.description for c in changes),
            times=tuple(c.time for c in changes),
            detail={
                "syncs": float(len(syncs)),
                "full_sync_cpu": sum(r.cpu for r in syncs if r.full),
                "partial_sync_cpu": sum(r.cpu for r in syncs if not r.full),
            },
        )

    def apply(self, path_or_objects: str | Sequence[Mapping[str, Any]]) -> Any:
        raise DataplaneError(
            "the lab provider has no containers or Kubernetes API, so it cannot apply "
            "manifests; use deploy() here, or --dataplane-provider=kind for your manifests"
        )

    def fingerprint(self) -> dict[str, Any]:
        return {"provider": "lab", "dataplane": self.name, **self._facts}

    def resync(self, timeout: float = 600.0) -> float:
        """Force a full sync of every service (as kube-proxy does at start and after a
        failure) and return its duration in seconds."""
        before = len(self._sync.records)
        self._sync.wait(self._sync.submit(full=True), timeout)
        full = [r.result.wall for r in self._sync.records[before:] if r.result.full]
        return full[-1] if full else 0.0

    def wait_programmed(self, timeout: float = 300.0) -> None:
        """Block until every change made so far is in the kernel."""
        self._sync.wait(self._sync.submit(), timeout)

    def reset(self) -> None:
        """Remove every service, pod and background service; clear measurements."""
        self._cancel_timers()
        for service in list(self._services.values()):
            for pod in list(service.pods):
                pod.terminating = True
                self._remove_endpoint(service, pod)
                self._stop_pod(service, pod)
        with self._lock:
            self._services.clear()
            self._background.clear()
            self._next_vip = 0
        reset = getattr(self.proxier, "reset", None)
        if reset is not None:
            self._sync.stop()
            reset()
            self._sync = SyncLoop(
                self.proxier,
                self._desired,
                min_sync_period=self._sync.min_sync_period,
                lock=self._lock,
            )
            self._sync.start()
        self._sync.wait(self._sync.submit(full=True))
        self._sync.clear_records()
        with self._lock:
            self._events.clear()
        self.timings.clear()

    def close(self) -> None:
        """Stop every pod and the proxier, and remove every namespace and cgroup."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        sync = getattr(self, "_sync", None)
        if sync is not None:
            sync.stop()
        self._cancel_timers()
        for service in list(self._services.values()):
            for pod in service.pods:
                self._kill(pod)
        proxier = getattr(self, "proxier", None)
        if proxier is not None:
            try:
                proxier.close()
            except Exception as exc:
                errors.append(f"proxier: {exc}")
        errors += self.topology.destroy()
        if self.client_cgroup is not None:
            try:
                os.rmdir(self.client_cgroup)
            except FileNotFoundError:
                pass
            except OSError as exc:
                errors.append(f"cgroup {self.client_cgroup}: {exc}")
        if errors:
            raise DataplaneError("lab cleanup incomplete: " + "; ".join(errors))

    # ------------------------------------------------------------------ internals

    def _desired(self) -> dict[str, ServiceSpec]:
        with self._lock:
            specs = dict(self._background)
            for service in self._services.values():
                specs[service.key] = service.spec()
            return specs

    def _event(self, name: str, **detail: Any) -> Event:
        event = Event(name, now(), detail)
        with self._lock:
            self._events.append(event)
        return event

    def _take_vip(self) -> int:
        with self._lock:
            self._next_vip += 1
            return self._next_vip - 1

    def _allocate_slot(self) -> int:
        with self._lock:
            if not self._free_slots:
                raise DataplaneError(f"the lab node is full ({MAX_PODS} pods)")
            return self._free_slots.pop(0)

    def _pod_ready(self, service: LabService, pod: _Pod) -> None:
        with self._lock:
            if pod.terminating:
                return
            service._endpoints.append(pod)
            event = self._event(
                "endpoint-added",
                service=service.name,
                endpoint=f"{pod.ip}:{service.port}",
                pod=pod.name,
            )
            self._sync.submit([Change(service.key, event.time, f"{service.name}: added {pod.ip}")])
            # Only now: whoever sees the pod ready and then waits for the dataplane must find
            # this change submitted, or wait_programmed() could return without it.
            pod.ready.set()
        self._pod_changed.set()

    def _remove_endpoint(self, service: LabService, pod: _Pod) -> None:
        with self._lock:
            if pod not in service._endpoints:
                return
            service._endpoints.remove(pod)
            event = self._event(
                "endpoint-removed",
                service=service.name,
                endpoint=f"{pod.ip}:{service.port}",
                pod=pod.name,
            )
            self._sync.submit(
                [Change(service.key, event.time, f"{service.name}: removed {pod.ip}")]
            )
        self._pod_changed.set()

    def _stop_pod(self, service: LabService, pod: _Pod) -> None:
        self._kill(pod)
        pod.stopped.wait(10)
        with self._lock:
            if pod.removed:
                return
            pod.removed = True
        try:
            self.topology.remove_pod(pod.name)
        except OSError as exc:
            log.warning("could not remove pod namespace %s: %s", pod.netns, exc)
        with self._lock:
            if pod in service.pods:
                service.pods.remove(pod)
            self._free_slots.append(pod.slot)
        self._event("pod-stopped", service=service.name, pod=pod.name)
        self._pod_changed.set()

    def _kill(self, pod: _Pod) -> None:
        process = pod.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _cancel_timers(self) -> None:
        timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()
