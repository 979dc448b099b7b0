"""The lab's eBPF service controller: ClusterIP Services programmed into the connect4 LB.

Run as ``python -m pytest_dataplane.providers.lab.kube.ebpfctl --kubeconfig PATH --cgroup PATH
--state-dir PATH`` (the lab starts one per cluster, in node 0's network namespace and a cgroup
of its own, as a Cilium agent runs on its node). It

- loads the lab's cgroup/connect4 load balancer (:class:`..ebpf.EbpfProxier`) and attaches it
  to ``--cgroup``, the cgroup the cluster's clients join: their ``connect()`` to a ClusterIP
  goes straight to an endpoint; nothing is written to iptables or nftables;
- watches Services and EndpointSlices (list, then watch from the list's resourceVersion,
  relisting on 410 Gone, as the node agent watches pods: :mod:`.daemon`'s client and loop);
- computes, for every ClusterIP Service port (TCP, UDP), its endpoints as kube-proxy picks
  them (ready ones; serving-and-terminating ones when none is ready) and programs the changed
  ones with batched map writes. Changes that arrive while a write runs are coalesced into the
  next one, as kube-proxy coalesces them, but without a minimum sync period: it programs at
  once;
- appends one JSON line per endpoint change to ``<state-dir>/programming.jsonl``:
  ``service`` (namespace/name), ``port`` (the service port's name as kube-proxy writes it),
  ``endpoint`` (ip:port), ``change`` (added/removed), ``trigger`` (wall seconds: the
  EndpointSlice's ``endpoints.kubernetes.io/last-change-trigger-time`` when the change came
  with one, else when this controller received the event), ``programmed`` (wall seconds when
  the map write returned) and ``seconds`` (their difference). The annotation comes from
  timestamps the API keeps to the second (a pod's condition times), so ``seconds`` may be
  up to 1 s longer than the truth where it is used; ``trigger_source`` says which applied;
- writes ``<state-dir>/ready.json`` once its first programming of both lists is done.

The computing part (:func:`parse_service`, :func:`parse_slice`, :func:`service_specs`,
:class:`Model`) is pure and unit-tested.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from ....errors import DataplaneError
from .._types import Endpoint, ServiceSpec
from .daemon import Api, list_and_watch, start_process, stop_on_signals

__all__ = [
    "Model",
    "ServiceInfo",
    "SliceInfo",
    "main",
    "parse_service",
    "parse_slice",
    "parse_trigger",
    "service_specs",
]

log = logging.getLogger("pytest_dataplane.lab.ebpfctl")

TRIGGER_ANNOTATION: Final = "endpoints.kubernetes.io/last-change-trigger-time"
SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"
READY_FILE: Final = "ready.json"
RECORDS_FILE: Final = "programming.jsonl"
SERVICES_PATH: Final = "/api/v1/services"
SLICES_PATH: Final = "/apis/discovery.k8s.io/v1/endpointslices"
_PROTOCOLS: Final = ("TCP", "UDP")  # what the connect4 program balances
_RFC3339: Final = re.compile(
    r"(?P<base>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(?P<fraction>\d+))?"
    r"(?P<zone>[Zz]|[+-]\d\d:\d\d)"
)


# ====================================================================== pure part


@dataclass(frozen=True)
class PortInfo:
    """A port of a Service (``port``: the service port) or of an EndpointSlice (the target)."""

    name: str
    port: int
    protocol: str


@dataclass(frozen=True)
class ServiceInfo:
    """What the controller needs of a Service: its IPv4 ClusterIP and its TCP/UDP ports."""

    key: str  # namespace/name
    cluster_ip: str
    ports: tuple[PortInfo, ...]


@dataclass(frozen=True)
class SliceEndpoint:
    """One address of an EndpointSlice with its conditions (absent ones defaulted as
    kube-proxy defaults them: ready true, serving as ready, terminating false)."""

    ip: str
    ready: bool
    serving: bool
    terminating: bool


@dataclass(frozen=True)
class SliceInfo:
    """What the controller needs of an IPv4 EndpointSlice."""

    key: str  # namespace/name of the slice
    service: str  # namespace/name of its Service (the kubernetes.io/service-name label)
    ports: tuple[PortInfo, ...]
    endpoints: tuple[SliceEndpoint, ...]
    trigger: float | None  # the last-change-trigger-time annotation, wall seconds


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def object_key(obj: Mapping[str, Any]) -> str:
    """``namespace/name`` of an API object."""
    meta = _meta(obj)
    return f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"


def parse_trigger(text: object) -> float | None:
    """Wall seconds of an RFC 3339 time (``2026-12-01T14:25:23Z``); None if absent or bad."""
    if not isinstance(text, str) or not text:
        return None
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        return None
    # fromisoformat takes at most 6 fraction digits (and no "Z") before Python 3.11.
    fraction = (match["fraction"] or "")[:6].ljust(6, "0")
    zone = "+00:00" if match["zone"] in ("Z", "z") else match["zone"]
    try:
        return datetime.fromisoformat(f"{match['base']}.{fraction}{zone}").timestamp()
    except ValueError:
        return None


def _is_ipv4(value: object) -> bool:
    if not isinstance(value, str):
        return False
    parts = value.split(".")
    return len(parts) == 4 and all(p.isdigit() and 0 <= int(p) <= 255 for p in parts)


def _port(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return value
    return None


def parse_service(obj: Mapping[str, Any]) -> ServiceInfo | None:
    """The ClusterIP part of a Service; None when it has none to balance (headless,
    ExternalName, IPv6-only, no TCP/UDP port)."""
    spec = obj.get("spec")
    if not isinstance(spec, Mapping) or spec.get("type") == "ExternalName":
        return None
    ips = spec.get("clusterIPs") or [spec.get("clusterIP")]
    cluster_ip = next((ip for ip in ips if _is_ipv4(ip)), None)
    if cluster_ip is None:  # "None" (headless), "" or IPv6 only
        return None
    ports = []
    for port in spec.get("ports") or ():
        if not isinstance(port, Mapping):
            continue
        protocol = str(port.get("protocol") or "TCP")
        number = _port(port.get("port"))
        if protocol in _PROTOCOLS and number is not None:
            ports.append(PortInfo(str(port.get("name") or ""), number, protocol))
    if not ports:
        return None
    return ServiceInfo(object_key(obj), cluster_ip, tuple(ports))


def parse_slice(obj: Mapping[str, Any]) -> SliceInfo | None:
    """The IPv4 endpoints and ports of an EndpointSlice; None for other address types or a
    slice that names no Service."""
    if obj.get("addressType") != "IPv4":
        return None
    meta = _meta(obj)
    labels = meta.get("labels") or {}
    service = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, Mapping) else None
    if not service:
        return None
    ports = []
    for port in obj.get("ports") or ():
        if not isinstance(port, Mapping):
            continue
        number = _port(port.get("port"))
        protocol = str(port.get("protocol") or "TCP")
        if number is not None:
            ports.append(PortInfo(str(port.get("name") or ""), number, protocol))
    endpoints = []
    for endpoint in obj.get("endpoints") or ():
        if not isinstance(endpoint, Mapping):
            continue
        conditions = endpoint.get("conditions") or {}
        ready = conditions.get("ready") is not False
        serving = conditions.get("serving")
        serving = ready if serving is None else bool(serving)
        terminating = bool(conditions.get("terminating"))
        for ip in endpoint.get("addresses") or ():
            if _is_ipv4(ip):
                endpoints.append(SliceEndpoint(str(ip), ready, serving, terminating))
    annotations = meta.get("annotations") or {}
    trigger = (
        parse_trigger(annotations.get(TRIGGER_ANNOTATION))
        if isinstance(annotations, Mapping)
        else None
    )
    return SliceInfo(
        key=object_key(obj),
        service=f"{meta.get('namespace') or ''}/{service}",
        ports=tuple(ports),
        endpoints=tuple(endpoints),
        trigger=trigger,
    )


def service_port_name(service: str, port_name: str) -> str:
    """kube-proxy's name of a service port: ``ns/name:port`` (``ns/name`` if unnamed)."""
    return f"{service}:{port_name}" if port_name else service


def service_specs(service: ServiceInfo, slices: Iterable[SliceInfo]) -> dict[str, ServiceSpec]:
    """What the load balancer must hold for ``service`` given its EndpointSlices: one spec per
    service port, named as kube-proxy names it, with the endpoints kube-proxy would use for
    cluster traffic (the ready ones; if none is ready, the serving terminating ones), each
    once, sorted."""
    slices = list(slices)
    specs = {}
    for port in service.ports:
        ready: set[Endpoint] = set()
        fallback: set[Endpoint] = set()
        for piece in slices:
            target = next(
                (p for p in piece.ports if p.name == port.name and p.protocol == port.protocol),
                None,
            )
            if target is None:
                continue
            for endpoint in piece.endpoints:
                if endpoint.ready:
                    ready.add(Endpoint(endpoint.ip, target.port))
                elif endpoint.serving and endpoint.terminating:
                    fallback.add(Endpoint(endpoint.ip, target.port))
        chosen = ready or fallback
        name = service_port_name(service.key, port.name)
        specs[name] = ServiceSpec(
            name=name,
            vip=service.cluster_ip,
            port=port.port,
            endpoints=tuple(sorted(chosen, key=lambda e: (e.ip, e.port))),
            protocol=port.protocol.lower(),
        )
    return specs


@dataclass
class Pending:
    """An endpoint change not yet programmed, and what triggered it."""

    service: str
    change: str
    trigger: float
    source: str  # "annotation" or "seen"


@dataclass
class Model:
    """Services and EndpointSlices as the controller knows them, the load balancer's desired
    contents (``specs``, by service port name), what was programmed last (``live``) and the
    endpoint changes between the two (``pending``, with their triggers)."""

    services: dict[str, ServiceInfo] = field(default_factory=dict)
    slices: dict[str, SliceInfo] = field(default_factory=dict)
    slices_of: dict[str, set[str]] = field(default_factory=dict)
    specs: dict[str, ServiceSpec] = field(default_factory=dict)
    spec_names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    live: dict[str, tuple[Endpoint, ...]] = field(default_factory=dict)
    pending: dict[str, dict[Endpoint, Pending]] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)

    # ---------------------------------------------------------------- applying events

    def service_event(self, kind: str, obj: Mapping[str, Any], seen: float) -> None:
        """Apply a Service watch event (ADDED, MODIFIED, DELETED)."""
        key = object_key(obj)
        info = None if kind == "DELETED" else parse_service(obj)
        if info is None:
            self.services.pop(key, None)
        else:
            self.services[key] = info
        self._recompute(key, seen, "seen")

    def slice_event(self, kind: str, obj: Mapping[str, Any], seen: float) -> None:
        """Apply an EndpointSlice watch event."""
        key = object_key(obj)
        old = self.slices.pop(key, None)
        if old is not None:
            self.slices_of.get(old.service, set()).discard(key)
        info = None if kind == "DELETED" else parse_slice(obj)
        if info is not None:
            self.slices[key] = info
            self.slices_of.setdefault(info.service, set()).add(key)
        trigger, source = (
            (info.trigger, "annotation") if info is not None and info.trigger else (seen, "seen")
        )
        for service in {s.service for s in (old, info) if s is not None}:
            self._recompute(service, trigger, source)

    def replace_services(self, items: Iterable[Mapping[str, Any]], seen: float) -> None:
        """A fresh list of every Service (at start and after 410 Gone)."""
        before = set(self.services)
        self.services = {}
        for obj in items:
            info = parse_service(obj)
            if info is not None:
                self.services[info.key] = info
        for key in before | set(self.services):
            self._recompute(key, seen, "seen")

    def replace_slices(self, items: Iterable[Mapping[str, Any]], seen: float) -> None:
        """A fresh list of every EndpointSlice."""
        touched = {s.service for s in self.slices.values()}
        self.slices, self.slices_of = {}, {}
        for obj in items:
            info = parse_slice(obj)
            if info is not None:
                self.slices[info.key] = info
                self.slices_of.setdefault(info.service, set()).add(info.key)
        for service in touched | set(self.slices_of):
            piece = [self.slices[k] for k in self.slices_of.get(service, ())]
            trigger = max((p.trigger for p in piece if p.trigger), default=None)
            self._recompute(service, trigger or seen, "annotation" if trigger else "seen")

    def _recompute(self, service: str, trigger: float, source: str) -> None:
        info = self.services.get(service)
        new = (
            {}
            if info is None
            else service_specs(info, (self.slices[k] for k in self.slices_of.get(service, ())))
        )
        names = set(self.spec_names.get(service, ())) | set(new)
        for name in self.spec_names.get(service, ()):
            if name not in new:
                self.specs.pop(name, None)
        self.specs.update(new)
        if new:
            self.spec_names[service] = tuple(new)
        else:
            self.spec_names.pop(service, None)
        for name in names:
            self.dirty.add(name)
            spec = new.get(name)
            wanted = set(spec.endpoints) if spec is not None else set()
            have = set(self.live.get(name, ()))
            differs = dict.fromkeys(wanted - have, "added") | dict.fromkeys(
                have - wanted, "removed"
            )
            before = self.pending.pop(name, {})
            # An endpoint keeps the trigger of the event that first made it differ; one that
            # changed and changed back before it was programmed is no change at all.
            now: dict[Endpoint, Pending] = {}
            for endpoint, change in differs.items():
                current = before.get(endpoint)
                if current is None or current.change != change:
                    current = Pending(service, change, trigger, source)
                now[endpoint] = current
            if now:
                self.pending[name] = now

    # ---------------------------------------------------------------- programming

    def take(self) -> tuple[set[str], list[tuple[str, Endpoint, Pending]]]:
        """The service port names to program and the endpoint changes that programming them
        makes; marks them programmed."""
        dirty, self.dirty = self.dirty, set()
        changes = [
            (name, endpoint, p)
            for name, endpoints in self.pending.items()
            for endpoint, p in endpoints.items()
        ]
        self.pending = {}
        for name in dirty:
            spec = self.specs.get(name)
            if spec is None:
                self.live.pop(name, None)
            else:
                self.live[name] = spec.endpoints
        return dirty, changes


def record(name: str, endpoint: Endpoint, pending: Pending, programmed: float) -> dict[str, Any]:
    """One line of ``programming.jsonl``."""
    return {
        "service": pending.service,
        "port": name,
        "endpoint": str(endpoint),
        "change": pending.change,
        "trigger": pending.trigger,
        "trigger_source": pending.source,
        "programmed": programmed,
        "seconds": programmed - pending.trigger,
    }


# ====================================================================== the process


class Controller:
    """The controller process: two watch threads feed one programming loop."""

    def __init__(
        self, kubeconfig: str, cgroup: str, state_dir: Path, cache_dir: Path | None = None
    ) -> None:
        from ..ebpf import EbpfProxier

        self.kubeconfig = kubeconfig
        self.state_dir = state_dir
        self.proxier = EbpfProxier(
            cgroup=cgroup, state_dir=state_dir, node_netns=None, cache_dir=cache_dir
        )
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.stopping = threading.Event()
        self.model = Model()
        self.listed: set[str] = set()
        self.full_sync = True
        self.records = state_dir / RECORDS_FILE

    def _watch(self, kind: str, path: str) -> None:
        def listed(data: dict[str, Any]) -> None:
            self.events.put(("list", kind, data.get("items") or [], time.time()))

        def changed(etype: str, obj: dict[str, Any]) -> None:
            self.events.put(("event", kind, etype, obj, time.time()))

        api = Api(self.kubeconfig, kind, program="pytest-dataplane-lab-ebpfctl")
        list_and_watch(
            api,
            path,
            stopping=self.stopping,
            on_list=listed,
            on_event=changed,
            what=kind,
            log=log,
            list_timeout=(5.0, 120.0),
        )

    def _apply(self, message: tuple[Any, ...]) -> None:
        if message[0] == "list":
            _, kind, items, seen = message
            if kind == "services":
                self.model.replace_services(items, seen)
            else:
                self.model.replace_slices(items, seen)
            if kind in self.listed:
                self.full_sync = True  # a relist: repair whatever drifted meanwhile
            self.listed.add(kind)
        else:
            _, kind, etype, obj, seen = message
            if kind == "services":
                self.model.service_event(etype, obj, seen)
            else:
                self.model.slice_event(etype, obj, seen)

    def _program(self) -> None:
        dirty, changes = self.model.take()
        full = self.full_sync
        self.full_sync = False
        try:
            result = self.proxier.sync(self.model.specs, None if full else dirty)
        except ValueError as exc:  # data the load balancer cannot hold; keep serving the rest
            log.error("programming failed: %s", exc)
            return
        programmed = time.time()
        if changes:
            lines = "".join(
                json.dumps(record(name, endpoint, pending, programmed)) + "\n"
                for name, endpoint, pending in changes
            )
            with self.records.open("a") as out:
                out.write(lines)
        log.info(
            "programmed %d service ports (%s), %d endpoint changes in %.1f ms: %s",
            len(self.model.specs) if full else len(dirty),
            "full" if full else "changed",
            len(changes),
            result.wall * 1000,
            result.detail,
        )

    def step(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for an event, take it and every other one queued, and
        program what they changed; returns whether both lists have been applied (until then
        nothing is programmed: a half-known cluster would remove the other half's services).
        """
        try:
            message = self.events.get(timeout=timeout)
        except queue.Empty:
            return len(self.listed) == 2
        self._apply(message)
        # Whatever else arrived meanwhile goes into the same programming: a burst of changes
        # costs one batched write, not one per event.
        while True:
            try:
                self._apply(self.events.get_nowait())
            except queue.Empty:
                break
        if len(self.listed) < 2:
            return False
        if self.model.dirty or self.full_sync:
            self._program()
        return True

    def run(self) -> int:
        """Attach the load balancer, watch, program until :meth:`stop`; 0 on a clean exit."""
        began = time.monotonic()
        self.proxier.start()
        try:
            for kind, path in (("services", SERVICES_PATH), ("slices", SLICES_PATH)):
                threading.Thread(
                    target=self._watch, args=(kind, path), name=f"watch-{kind}", daemon=True
                ).start()
            ready = False
            while not self.stopping.is_set():
                if self.step(0.5) and not ready:
                    ready = True
                    self._write_ready(time.monotonic() - began)
        finally:
            self.proxier.close()
        return 0

    def _write_ready(self, seconds: float) -> None:
        body = {
            "pid": os.getpid(),
            "ready_at": time.time(),
            "start_seconds": seconds,
            "service_ports": len(self.model.specs),
            "prog_id": self.proxier.prog_id,
        }
        temp = self.state_dir / f".{READY_FILE}.tmp"
        temp.write_text(json.dumps(body))
        temp.replace(self.state_dir / READY_FILE)  # atomic: a reader sees all of it or nothing
        log.info("ready in %.2f s: %d service ports programmed", seconds, len(self.model.specs))

    def stop(self) -> None:
        """Ask :meth:`run` to detach the load balancer and return."""
        self.stopping.set()


def main(argv: list[str] | None = None) -> int:
    """The controller's command line."""
    parser = argparse.ArgumentParser(description="pytest-dataplane lab eBPF service controller")
    parser.add_argument("--kubeconfig", required=True, help="Kubeconfig of the controller")
    parser.add_argument("--cgroup", required=True, help="cgroup v2 dir of the clients")
    parser.add_argument("--state-dir", required=True, help="Dir for bpffs, records, ready.json")
    parser.add_argument("--cache-dir", default=None, help="Cache of the compiled BPF object")
    parser.add_argument("--log-level", default="INFO", help="Logging level (default INFO)")
    args = parser.parse_args(argv)
    # SIGTERM when the lab's owner dies: the controller then detaches and unmounts.
    start_process(args.log_level)
    state_dir = Path(args.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    controller = Controller(
        args.kubeconfig,
        args.cgroup,
        state_dir,
        None if args.cache_dir is None else Path(args.cache_dir),
    )
    stop_on_signals(controller.stop)
    try:
        return controller.run()
    except DataplaneError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
