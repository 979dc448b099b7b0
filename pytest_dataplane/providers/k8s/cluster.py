"""The Cluster and Service protocols on a real Kubernetes cluster, once for every provider.

Everything a test creates lives in one namespace. Workloads are agnhost ``netexec``
Deployments behind Services that the provider's :class:`~.traffic.TrafficPath` reaches, so
requests cross the dataplane; scaling and rollouts are template changes that the real
Deployment controller carries out; background services are selectorless Services with
EndpointSlices of their own; an EndpointSlice watch turns endpoint changes into events.
Node-level numbers (rules, CPU, kube-proxy's histogram) need the provider's
:class:`~.nodes.NodeAccess`. A provider that knows more than the API tells (the lab: its own
processes' cgroups, its eBPF controller's exact programming records, its backend's service
times) plugs that in through one :class:`~.hooks.ClusterHooks`.

Why one module of some 900 lines: it is one class, :class:`KubeCluster`, whose parts
(workloads, background services and their hand-over between tests, measurements, reset) share
its state under one lock: the events, the services, the measurement window and the kept
background services. What needs no such state lives beside it (``resources``: the objects;
``watch``: the EndpointSlice tracker; ``nodes``, ``dataplane``, ``metrics``, ``probe``:
the readings; ``hooks``: what providers plug in).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ...config import ServiceTime, parse_duration
from ...errors import DataplaneError, DataplaneSkip, DataplaneUnavailable
from ...events import Event, now
from ..base import (
    CpuUsage,
    RuleCount,
    check_background_args,
    check_deploy_args,
)
from ..rules import summarize
from . import resources
from .api import KubeApi
from .cilium import parse_lb_list
from .dataplane import CpuSampler, DataplanePods, PodCpuSource
from .hooks import ClusterHooks
from .metrics import (
    attribute_cpu,
    diff_histogram,
    histogram_samples,
    metrics_script,
    parse_histogram,
)
from .nodes import NodeAccess, count_rules
from .probe import Probe, Prober
from .traffic import TrafficPath
from .watch import EndpointTracker, SliceWatcher

__all__ = [
    "KubeCluster",
    "KubeService",
    "format_events",
    "load_manifests",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 300.0
# How long a deployed pod keeps serving after it leaves the endpoints (a preStop sleep, or
# netexec's --delay-shutdown). A pod's drain is fixed when it is created: a rollout's
# ``grace`` applies to the new pods, while the old ones drain as they were deployed, so this
# must outlast a busy kube-proxy's programming (seconds on a loaded 2-core node, measured).
DEPLOY_DRAIN = "5s"
_ENDPOINT_EVENTS = ("endpoint-added", "endpoint-removed")


def load_manifests(
    path_or_objects: str | Path | Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Objects from a YAML/JSON file, a directory of them (sorted), or a sequence of dicts.

    ``List`` objects are flattened; empty documents are skipped.
    """
    import yaml

    if isinstance(path_or_objects, (str, Path)):
        path = Path(path_or_objects)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
        elif path.is_file():
            files = [path]
        else:
            raise ValueError(f"apply: {str(path)!r} is neither a file nor a directory")
        raw: list[Any] = []
        for file in files:
            raw += [doc for doc in yaml.safe_load_all(file.read_text()) if doc]
    else:
        raw = list(path_or_objects)
    objects: list[dict[str, Any]] = []
    for doc in raw:
        if not isinstance(doc, Mapping) or "kind" not in doc or "apiVersion" not in doc:
            raise ValueError(
                f"apply: {str(doc)[:80]!r} is not a Kubernetes object; accepted: mappings with "
                "apiVersion, kind and metadata.name"
            )
        if doc["kind"] == "List":
            objects += [dict(item) for item in doc.get("items") or []]
        else:
            objects.append(dict(doc))
    return objects


class KubeService:
    """A Deployment of backends behind a Service, as the test sees it."""

    def __init__(self, cluster: KubeCluster, name: str, url: str, replicas: int) -> None:
        self.name = name
        self._cluster = cluster
        self._url = url
        self.replicas = replicas

    def __repr__(self) -> str:
        return f"<KubeService {self.name} {self._url} on {self._cluster.name}>"

    @property
    def url(self) -> str:
        return self._url

    @property
    def netns(self) -> str | None:
        return self._cluster.traffic.netns

    @property
    def cgroup(self) -> str | None:
        return self._cluster.traffic.cgroup

    @property
    def endpoints(self) -> list[str]:
        return sorted(self._cluster.tracker.ready(self.name))

    @property
    def events(self) -> list[Event]:
        return [e for e in self._cluster.events if e.detail.get("service") == self.name]

    def scale(self, replicas: int) -> None:
        self._cluster._scale(self, replicas)

    def rollout(
        self,
        *,
        max_surge: int | str = "25%",
        max_unavailable: int | str = "25%",
        grace: float | str = "1s",
    ) -> None:
        self._cluster._rollout(
            self, max_surge=max_surge, max_unavailable=max_unavailable, grace=grace
        )


class KubeCluster:
    """A :class:`~pytest_dataplane.providers.base.Cluster` on a Kubernetes cluster.

    The provider builds it with how the cluster is reached: the API client and namespace, the
    dataplane agent's pods, how nodes are reached (None: no node access, and
    ``node_access_reason`` says why), the traffic path, its facts and what to do on
    :meth:`close`; and with :class:`~.hooks.ClusterHooks` for what it knows about its
    dataplane and how it holds the cluster (None: a borrowed cluster seen through the API).
    """

    def __init__(
        self,
        *,
        api: KubeApi,
        provider: str,
        dataplane: str,
        namespace: str,
        session: str,
        backend_image: str,
        traffic: TrafficPath,
        dataplane_pods: DataplanePods,
        node_access: NodeAccess | None,
        node_access_reason: str = "",
        facts: Mapping[str, Any] | None = None,
        on_close: Callable[[], None] | None = None,
        hooks: ClusterHooks | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        cpu_interval: float = 1.0,
        start_threads: bool = True,
    ) -> None:
        self.name = dataplane
        self.provider = provider
        self.api = api
        self.namespace = namespace
        self.session = session
        self.backend_image = backend_image
        self.traffic = traffic
        self.dataplane_pods = dataplane_pods
        self.node_access = node_access
        self.node_access_reason = node_access_reason
        self.hooks = ClusterHooks() if hooks is None else hooks
        self.timeout = timeout
        self._facts = dict(facts or {})
        self._on_close = on_close
        self._lock = threading.Lock()
        self._events: list[Event] = []
        self._services: dict[str, KubeService] = {}
        self._applied: list[tuple[str, str, str, str | None]] = []
        self._background = 0
        self._background_endpoints = 0
        # Background services a finished test left for the next (see reset()): how many,
        # with how many endpoints each.
        self._parked = 0
        self._parked_endpoints = 0
        self._closed = False
        self.tracker = EndpointTracker()
        self._window_start = now()
        self._window_wall = time.time()
        self._histogram_base: dict[str, dict[float, float]] | None = None
        self.latency_source = "connection"
        self.prober: Prober | None = None
        self.watcher: SliceWatcher | None = None
        self.cpu: CpuSampler | None = None
        if start_threads:
            self.start(cpu_interval=cpu_interval)

    # -- lifecycle --

    def start(self, *, cpu_interval: float = 1.0) -> None:
        """Start the EndpointSlice watch, the prober or histogram baseline, and CPU sampling."""
        self.watcher = SliceWatcher(self.api, self.namespace, self.tracker, self._record)
        self.watcher.start()
        if self.hooks.programming is not None:
            self.latency_source = self.hooks.programming.name
        elif self.name != "ebpf" and self.node_access is not None:
            base = self._read_histograms()
            published = self.hooks.proxy_histogram
            if published is None:
                published = any(base.values())
            if published:
                self._histogram_base = base
                self.latency_source = "kube-proxy histogram"
        if self._histogram_base is None and self.hooks.programming is None:
            self.prober = Prober(fetch=self.traffic.hostname)
        source = self.hooks.cpu_source
        if source is None and self.node_access is not None:
            source = PodCpuSource(self.node_access, self.dataplane_pods, self.dataplane_pod_objects)
        if source is not None:
            self.cpu = CpuSampler(source, interval=cpu_interval)
            self.cpu.start()

    def __repr__(self) -> str:
        return f"<KubeCluster {self.provider} {self.name} namespace={self.namespace}>"

    @property
    def handle(self) -> Any:
        """``hooks.handle``: what the provider runs the cluster with (the lab: its KubeLab)."""
        return self.hooks.handle

    @property
    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)

    def _event(self, name: str, **detail: Any) -> Event:
        event = Event(name, now(), detail)
        with self._lock:
            self._events.append(event)
        return event

    def _record(self, events: list[Event]) -> None:
        with self._lock:
            self._events.extend(events)
            services = dict(self._services)
        if self.prober is None:
            return
        for event in events:
            service = services.get(str(event.detail.get("service")))
            pod = event.detail.get("pod")
            if event.name == "endpoint-added" and service is not None and pod:
                self.prober.submit(
                    Probe(
                        service.url,
                        str(pod),
                        event.time,
                        f"{service.name} {event.detail['endpoint']}",
                    )
                )

    # -- workloads --

    def deploy(
        self,
        name: str,
        replicas: int = 3,
        *,
        service_time: ServiceTime | float | str | None = None,
        port: int = 80,
    ) -> KubeService:
        check_deploy_args(name, replicas, port)
        self._drop_parked()
        parsed = ServiceTime.parse(service_time)
        if parsed is not None and self.hooks.backend != "lab":
            raise DataplaneSkip(
                f"service_time={service_time!r}: emulated service times need the lab's backend; "
                f"on {self.provider} backends are agnhost netexec, which answers at once"
            )
        with self._lock:
            if name in self._services:
                raise ValueError(f"deploy: {name!r} is already deployed; use service({name!r})")
        deployment = resources.deployment(
            name,
            self.namespace,
            replicas=replicas,
            image=self.backend_image,
            session=self.session,
            grace=DEPLOY_DRAIN,
            backend=self.hooks.backend,
            service_time=None if parsed is None else parsed.spec,
        )
        svc = resources.service(
            name,
            self.namespace,
            port=port,
            session=self.session,
            service_type=self.traffic.service_type,
        )
        self.api.create(deployment)
        created = self.api.create(svc)
        url = self._wait_url(name, created)
        service = KubeService(self, name, url, replicas)
        with self._lock:
            self._services[name] = service
        self._wait_rolled_out(name, replicas)
        self._wait_reachable(service)
        return service

    def service(self, name: str) -> KubeService:
        with self._lock:
            if name not in self._services:
                known = ", ".join(sorted(self._services)) or "none"
                raise KeyError(f"no service {name!r} on {self.name}; deployed: {known}")
            return self._services[name]

    def add_background_services(self, count: int, endpoints: int = 3) -> None:
        check_background_args(count, endpoints)
        if self.hooks.background_refusal is not None:
            raise DataplaneSkip(self.hooks.background_refusal)
        started = now()
        adopted = self._adopt_background(count, endpoints)
        start = self._background
        missing = count - adopted
        addresses = resources.background_addresses(start * endpoints, missing * endpoints)

        def create(i: int) -> None:
            name = resources.background_name(start + i)
            mine = addresses[i * endpoints : (i + 1) * endpoints]
            self.api.create(
                resources.background_service(name, self.namespace, session=self.session)
            )
            self.api.create(
                resources.background_slice(name, self.namespace, mine, session=self.session)
            )

        try:
            with ThreadPoolExecutor(max_workers=16, thread_name_prefix="dataplane-bg") as pool:
                for future in [pool.submit(create, i) for i in range(missing)]:
                    future.result()
        except BaseException:
            with self._lock:
                # Some of them exist: none is handed to the next test, whose first use of
                # the cluster deletes them all.
                self._background = start + missing
                self._background_endpoints = -1
            raise
        if missing and self.hooks.settle is not None:
            # The busy cluster the test asked for is there once the dataplane has them all:
            # what the test does next (a rollout under load) must not race their programming.
            self.hooks.settle(self.timeout)
        with self._lock:
            mixed = self._background and self._background_endpoints != endpoints
            self._background += missing
            # Services of mixed shapes are not handed to the next test (-1: mixed).
            self._background_endpoints = -1 if mixed else endpoints
        self._event(
            "background-services",
            count=count,
            endpoints=endpoints,
            total=self._background,
            reused=adopted,
            seconds=now() - started,
        )

    def _adopt_background(self, count: int, endpoints: int) -> int:
        """Take over up to ``count`` of the background services the previous test left, when
        they have ``endpoints`` endpoints each and this test has not used the cluster yet;
        delete the rest. Returns how many were taken over."""
        with self._lock:
            parked, per_service = self._parked, self._parked_endpoints
        if not parked:
            return 0
        if per_service != endpoints:
            self._drop_parked()
            return 0
        adopted = min(count, parked)
        if adopted < parked:
            self._delete_background(range(adopted, parked))
            with self._lock:
                self._parked = adopted
            self._settle_and_restart_window()
        with self._lock:
            self._parked = 0
            self._background = adopted
            self._background_endpoints = endpoints
        return adopted

    def _drop_parked(self) -> None:
        """Delete the background services the previous test left, before this test uses the
        cluster in any other way, and start its measurement window once the dataplane has
        caught up: nothing this test measures sees them."""
        with self._lock:
            parked = self._parked
        if not parked:
            return
        started = now()
        deadline = started + self.timeout
        selector = f"{resources.ROLE_LABEL}=background"
        self._delete_all("v1", "Service", selector, deadline)
        self._delete_all("discovery.k8s.io/v1", "EndpointSlice", selector, deadline)
        with self._lock:
            self._parked = 0  # only now: a failed deletion is tried again by the next use
        self._settle_and_restart_window()
        log.info(
            "%s: %d background services of an earlier test deleted in %.1f s",
            self,
            parked,
            now() - started,
        )

    def _delete_background(self, indexes: range) -> None:
        def delete(i: int) -> None:
            name = resources.background_name(i)
            self.api.delete("v1", "Service", name, self.namespace)
            self.api.delete(
                "discovery.k8s.io/v1",
                "EndpointSlice",
                resources.background_slice_name(name),
                self.namespace,
            )

        with ThreadPoolExecutor(max_workers=16, thread_name_prefix="dataplane-bg") as pool:
            for future in [pool.submit(delete, i) for i in indexes]:
                future.result()

    def apply(self, path_or_objects: str | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        objects = load_manifests(path_or_objects)
        self._drop_parked()
        applied = []
        for original in objects:
            obj = dict(original)
            meta = dict(obj.get("metadata") or {})
            if not meta.get("name"):
                raise ValueError(f"apply: {obj['kind']} without metadata.name")
            namespaced = self.api.namespaced(obj["apiVersion"], obj["kind"])
            if namespaced:
                meta.setdefault("namespace", self.namespace)
                if self.hooks.restrict_apply_to_namespace and meta["namespace"] != self.namespace:
                    raise DataplaneError(
                        f"apply: {obj['kind']} {meta['name']} targets namespace "
                        f"{meta['namespace']!r}; on an existing cluster only the session's "
                        f"namespace {self.namespace!r} is changed"
                    )
            elif self.hooks.restrict_apply_to_namespace:
                raise DataplaneError(
                    f"apply: {obj['kind']} {meta['name']} is cluster-scoped; on an existing "
                    f"cluster only the session's namespace {self.namespace!r} is changed"
                )
            obj["metadata"] = meta
            applied.append(self.api.apply(obj))
            with self._lock:
                self._applied.append(
                    (obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
                )
        return applied

    def _wait_url(self, name: str, created: Mapping[str, Any]) -> str:
        deadline = now() + self.timeout
        svc: Mapping[str, Any] = created
        while True:
            url = self.traffic.url(svc)
            if url is not None:
                return url
            if now() > deadline:
                raise DataplaneError(
                    f"service {name} got no {self.traffic.service_type} address in "
                    f"{self.timeout:g} s; {self.traffic.missing_reason}"
                )
            time.sleep(1.0)
            svc = self.api.get("v1", "Service", name, self.namespace)

    def _wait_rolled_out(self, name: str, replicas: int, *, old_pods: Iterable[str] = ()) -> None:
        deadline = now() + self.timeout
        old = set(old_pods)
        deployment: Mapping[str, Any] = {}
        while now() < deadline:
            deployment = self.api.get("apps/v1", "Deployment", name, self.namespace)
            if resources.rollout_complete(deployment):
                break
            time.sleep(0.5)
        else:
            raise DataplaneError(
                f"deployment {name} did not roll out in {self.timeout:g} s: "
                f"{resources.rollout_status(deployment)}"
            )

        def settled(ready: Mapping[str, str | None]) -> bool:
            return len(ready) == replicas and not (old & {p for p in ready.values() if p})

        if not self.tracker.wait(name, settled, max(0.0, deadline - now())):
            ready = self.tracker.ready(name)
            errors = self.watcher.errors[-3:] if self.watcher else []
            raise DataplaneError(
                f"service {name}: {len(ready)} ready endpoints after the rollout, wanted "
                f"{replicas} (recent EndpointSlice watch errors: {errors or 'none'})"
            )

    def _wait_reachable(self, service: KubeService) -> None:
        deadline = now() + min(self.timeout, 120.0)
        while now() < deadline:
            if self.traffic.hostname(service.url) is not None:
                return
            time.sleep(0.2)
        raise DataplaneError(
            f"service {service.name} at {service.url} does not answer from here; "
            f"{self.traffic.missing_reason or 'is the node address reachable from this host?'}"
        )

    def _scale(self, service: KubeService, replicas: int) -> None:
        patch = resources.scale_patch(replicas)
        self._event("scale", service=service.name, replicas=replicas, previous=service.replicas)
        self.api.patch(
            "apps/v1", "Deployment", service.name, self.namespace, patch, strategic=False
        )
        service.replicas = replicas
        self._wait_rolled_out(service.name, replicas)

    def _rollout(
        self,
        service: KubeService,
        *,
        max_surge: int | str,
        max_unavailable: int | str,
        grace: float | str,
    ) -> None:
        patch = resources.rollout_patch(
            max_surge=max_surge,
            max_unavailable=max_unavailable,
            grace=grace,
            revision=uuid.uuid4().hex[:12],
            backend=self.hooks.backend,
        )
        old = {p for p in self.tracker.ready(service.name).values() if p}
        self._event(
            "rollout-start",
            service=service.name,
            max_surge=max_surge,
            max_unavailable=max_unavailable,
            grace=parse_duration(grace, name="grace"),
        )
        self.api.patch("apps/v1", "Deployment", service.name, self.namespace, patch)
        self._wait_rolled_out(service.name, service.replicas, old_pods=old)
        self._event("rollout-end", service=service.name)

    # -- measurements --

    def dataplane_pod_objects(self) -> list[dict[str, Any]]:
        """The dataplane agent's pods (kube-proxy or cilium-agent) in kube-system."""
        items, _ = self.api.list_items(
            "v1", "Pod", "kube-system", label_selector=self.dataplane_pods.label_selector
        )
        return items

    def _require_nodes(self, what: str) -> NodeAccess:
        if self.node_access is None:
            raise DataplaneSkip(f"{what} needs node access: {self.node_access_reason}")
        return self.node_access

    def rule_count(self) -> RuleCount:
        nodes = self._require_nodes("counting rules")
        self._drop_parked()
        found = count_rules(nodes, kubelet=self.hooks.nodes_run_kubelet)
        service_map: int | None = None
        if self.hooks.service_map is not None:
            service_map = self.hooks.service_map()
        elif self.name == "ebpf" and self.dataplane_pods.cli:
            service_map = 0
            for pod in self.dataplane_pod_objects():
                done = self.api.exec(
                    "kube-system",
                    pod["metadata"]["name"],
                    self.dataplane_pods.container,
                    [self.dataplane_pods.cli, "bpf", "lb", "list"],
                    timeout=60.0,
                )
                if done.returncode != 0:
                    raise DataplaneError(
                        f"{self.dataplane_pods.cli} bpf lb list in {pod['metadata']['name']} "
                        f"failed ({done.returncode}): {done.stderr.strip()[:500]}"
                    )
                service_map += parse_lb_list(done.stdout).entries
        return summarize(
            list(found.parts),
            found.chains,
            service_map_entries=service_map,
            kubelet_parts=list(found.kubelet_parts),
        )

    def _read_histograms(self) -> dict[str, dict[float, float]]:
        nodes = self.node_access
        if nodes is None:
            return {}
        result = {}
        for node in nodes.nodes():
            try:
                result[node] = parse_histogram(nodes.run(node, metrics_script(), timeout=20.0))
            except DataplaneError as exc:
                log.info("no kube-proxy metrics on %s: %s", node, exc)
                result[node] = {}
        return result

    def programming_latencies(self) -> npt.NDArray[np.float64]:
        self._drop_parked()
        if self.hooks.programming is not None:
            changes = [e for e in self.events if e.name in _ENDPOINT_EVENTS]
            return np.asarray(self.hooks.programming.latencies(changes), dtype=np.float64)
        if self._histogram_base is not None:
            after = self._read_histograms()
            values = [
                histogram_samples(diff_histogram(self._histogram_base.get(node, {}), hist))
                for node, hist in after.items()
            ]
            return np.concatenate(values) if values else np.asarray([], dtype=np.float64)
        if self.prober is None:
            raise DataplaneError(f"{self!r} was not started: no programming-latency source")
        return np.asarray(self.prober.latencies(), dtype=np.float64)

    def cpu_seconds(self) -> CpuUsage:
        self._require_nodes("the dataplane's CPU")
        self._drop_parked()
        if self.cpu is None:
            raise DataplaneError(f"{self!r} was not started: no CPU sampler")
        end = now()
        self.cpu.sample()
        if self.cpu.unavailable:
            # A partial or empty reading would look like an idle dataplane: say so instead.
            raise DataplaneUnavailable(
                f"the dataplane's CPU cannot be read: {self.cpu.unavailable}"
            )
        samples = self.cpu.window(self._window_start)
        changes = sorted(
            (e for e in self.events if e.name in _ENDPOINT_EVENTS and e.time <= end),
            key=lambda e: e.time,
        )
        attribution = attribute_cpu(
            samples, [e.time for e in changes], start=self._window_start, end=end
        )
        described = tuple(
            f"{e.detail.get('service')}: {e.name} {e.detail.get('endpoint')}" for e in changes
        )
        detail: dict[str, float] = {"samples": float(len(samples)), "interval": self.cpu.interval}
        if attribution.background_rate is not None:
            detail["background_cpu_per_second"] = attribution.background_rate
        return CpuUsage(
            total=attribution.total,
            per_change=attribution.per_change,
            changes=described,
            detail=detail,
            times=tuple(e.time for e in changes),
        )

    def fingerprint(self) -> dict[str, Any]:
        if "kubernetes" not in self._facts:
            try:
                self._facts["kubernetes"] = self.api.server_version()
            except Exception as exc:
                self._facts["kubernetes"] = f"unknown ({type(exc).__name__})"
        return {
            "provider": self.provider,
            "dataplane": self.name,
            "programming_latency_source": self.latency_source,
            **self._facts,
        }

    # -- diagnostics --

    def diagnostics(self) -> list[tuple[str, str]]:
        """What helps explain a failure in this test's window: events, the dataplane agent's
        logs, and hubble flows when hubble is on. Each part is best effort."""
        since = max(1, math.ceil(time.time() - self._window_wall) + 5)
        sections: list[tuple[str, str]] = []
        if self.hooks.diagnostics is not None:
            try:
                sections += self.hooks.diagnostics(self._window_wall)
            except Exception as exc:
                sections.append(("dataplane", f"unavailable: {exc}"))
        for namespace in (self.namespace, "kube-system"):
            try:
                items, _ = self.api.list_items("v1", "Event", namespace)
                sections.append(
                    (f"events in {namespace}", format_events(items, since_wall=self._window_wall))
                )
            except Exception as exc:
                sections.append((f"events in {namespace}", f"unavailable: {exc}"))
        try:
            pods = self.dataplane_pod_objects()
        except Exception as exc:
            return [*sections, ("dataplane pods", f"unavailable: {exc}")]
        for pod in pods:
            name = pod["metadata"]["name"]
            try:
                text = self.api.logs(
                    "kube-system",
                    name,
                    self.dataplane_pods.container,
                    since_seconds=since,
                    tail_lines=300,
                )
            except Exception as exc:
                text = f"unavailable: {exc}"
            sections.append((f"{self.dataplane_pods.container} log {name} (last {since} s)", text))
            if self.hooks.hubble and self.name == "ebpf":
                try:
                    done = self.api.exec(
                        "kube-system",
                        name,
                        "cilium-agent",
                        [
                            "hubble",
                            "observe",
                            "--since",
                            f"{since}s",
                            "--last",
                            "500",
                            "-o",
                            "compact",
                        ],
                        timeout=60.0,
                    )
                    text = done.stdout or done.stderr
                except Exception as exc:
                    text = f"unavailable: {exc}"
                sections.append((f"hubble flows {name} (last {since} s)", text))
        return sections

    # -- reset / close --

    def reset(self) -> None:
        """Delete what the test created in the namespace, and start a new measurement window.

        Where the run owns the cluster and discards it at close (``disposable``), the test's
        pods are stopped without their drain, and its background services stay for the next
        test: creating 5,000 Services takes the API server a minute or more (its ClusterIP
        allocator counts every allocated address on each allocation), and deleting them as
        long again. The next test takes them over if its first use of the cluster is to ask
        for background services of the same shape; any other first use deletes them and waits
        for the dataplane to catch up before its window starts.
        """
        selector_workload = f"{resources.ROLE_LABEL}=workload"
        selector_background = f"{resources.ROLE_LABEL}=background"
        with self._lock:
            applied, self._applied = self._applied, []
            park = self.hooks.disposable and self._background_endpoints > 0
            if park:
                self._parked = self._background
                self._parked_endpoints = self._background_endpoints
            elif self.hooks.disposable and self._background:
                # Of mixed shapes: no test takes them over; the next one's first use of the
                # cluster deletes them.
                self._parked, self._parked_endpoints = self._background, 0
        for api_version, kind, name, namespace in reversed(applied):
            self.api.delete(api_version, kind, name, namespace)
        deadline = now() + self.timeout
        # On a disposable cluster the test's pods need not drain (DEPLOY_DRAIN is for
        # rollouts under load, an applied manifest's grace for its own reasons): Deployments
        # and ReplicaSets go first, so none makes new pods, then the pods at once (a user's
        # cluster keeps the pods' own grace).
        collections = [("apps/v1", "Deployment", selector_workload)]
        if self.hooks.disposable:
            # Every ReplicaSet and pod of the session's namespace: an applied manifest's too.
            collections += [("apps/v1", "ReplicaSet", ""), ("v1", "Pod", "")]
        collections.append(("v1", "Service", selector_workload))
        if not self.hooks.disposable:
            collections += [
                ("v1", "Service", selector_background),
                ("discovery.k8s.io/v1", "EndpointSlice", selector_background),
            ]
        for api_version, kind, selector in collections:
            self._delete_all(
                api_version,
                kind,
                selector,
                deadline,
                grace_period_seconds=0 if kind == "Pod" else None,
            )
        # Services still there but for the background ones kept for the next test.
        remaining = f"{resources.ROLE_LABEL}!=background" if self.hooks.disposable else None
        while now() < deadline:
            items, _ = self.api.list_items(
                "v1", "Service", self.namespace, label_selector=remaining
            )
            if not items:
                break
            time.sleep(0.5)
        if self.hooks.settle is not None:
            # Every pod gone (their grace periods over: an applied manifest's too) and the
            # dataplane caught up with the deletions: the next test's window must not measure
            # this one's cleanup.
            while now() < deadline:
                pods, _ = self.api.list_items("v1", "Pod", self.namespace)
                if not pods:
                    break
                time.sleep(0.2)
            self.hooks.settle(max(1.0, deadline - now()))
        with self._lock:
            self._services.clear()
            self._background = 0
            self._background_endpoints = 0
        self._restart_window()

    def _settle_and_restart_window(self) -> None:
        if self.hooks.settle is not None:
            self.hooks.settle(self.timeout)
        self._restart_window()

    def _restart_window(self) -> None:
        """Start a new measurement window: events, changes, latencies and CPU from now on."""
        with self._lock:
            self._events.clear()
        self.tracker.forget()
        self._window_start = now()
        self._window_wall = time.time()
        if self.prober is not None:
            self.prober.clear()
        if self._histogram_base is not None:
            self._histogram_base = self._read_histograms()
        if self.cpu is not None:
            self.cpu.trim(self._window_start)

    def _delete_all(
        self,
        api_version: str,
        kind: str,
        selector: str,
        deadline: float,
        *,
        grace_period_seconds: int | None = None,
    ) -> None:
        """Delete a collection; again while some is left. Deleting 5,000 Services in one
        request can outlast the API server's request timeout on a busy machine (it answers
        504 and stops part-way): what is left is deleted by the next request."""
        while True:
            try:
                self.api.delete_collection(
                    api_version,
                    kind,
                    self.namespace,
                    label_selector=selector,
                    grace_period_seconds=grace_period_seconds,
                )
            except Exception as exc:
                if getattr(exc, "status", None) != 504 or now() > deadline:
                    raise
                log.info("deleting %s %s timed out on the server; again", kind, selector)
                continue
            items, _ = self.api.list_items(
                api_version, kind, self.namespace, label_selector=selector
            )
            if not items or now() > deadline:
                return

    def close(self) -> None:
        """Stop the watch, the prober and the sampler, then let the provider clean up.

        Every step runs even when an earlier one fails; the failures are raised together as
        one DataplaneError (as the lab's clusters do).
        """
        if self._closed:
            return
        self._closed = True
        problems: list[str] = []
        for what, stop in (
            ("EndpointSlice watch", self.watcher.stop if self.watcher else None),
            ("prober", self.prober.close if self.prober else None),
            ("CPU sampler", self.cpu.stop if self.cpu else None),
            ("cleanup", self._on_close),
        ):
            if stop is None:
                continue
            try:
                stop()
            except Exception as exc:
                problems.append(f"{what}: {exc}")
        if problems:
            where = self._facts.get("cluster") or self._facts.get("context") or self.namespace
            raise DataplaneError(
                f"{self.provider} cluster {where} ({self.name}) did not close cleanly: "
                + "; ".join(problems)
            )


def format_events(items: Iterable[Mapping[str, Any]], *, since_wall: float | None = None) -> str:
    """Kubernetes Events as ``kubectl get events``-like lines, oldest first, only those last
    seen at or after ``since_wall`` (seconds since the epoch) when given."""
    from datetime import datetime

    rows = []
    for item in items:
        stamp = (
            item.get("lastTimestamp")
            or item.get("eventTime")
            or (item.get("metadata") or {}).get("creationTimestamp")
            or ""
        )
        when: float | None = None
        if stamp:
            try:
                when = datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
            except ValueError:
                when = None
        if since_wall is not None and when is not None and when < since_wall:
            continue
        involved = item.get("involvedObject") or item.get("regarding") or {}
        rows.append(
            (
                when or 0.0,
                f"{stamp}  {item.get('type', '')}  {item.get('reason', '')}  "
                f"{involved.get('kind', '')}/{involved.get('name', '')}  "
                f"{str(item.get('message') or item.get('note') or '').strip()}",
            )
        )
    rows.sort(key=lambda row: row[0])
    return "\n".join(text for _, text in rows) or "(no events)"
