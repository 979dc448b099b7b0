"""The eBPF controller's model of the cluster: Services and EndpointSlices in, the service
ports the load balancer programs out (pure: no I/O, unit-tested).

:func:`parse_service` and :func:`parse_slice` read what the controller needs of the API's
objects; :func:`service_specs` picks endpoints as kube-proxy does (ready ones;
serving-and-terminating ones when none is ready); :class:`Model` keeps both lists, knows which
service ports changed since the last programming and when each endpoint change was triggered,
and :func:`record` writes one line of ``programming.jsonl``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from .._types import Endpoint, ServiceSpec

__all__ = [
    "SERVICE_NAME_LABEL",
    "TRIGGER_ANNOTATION",
    "Model",
    "Pending",
    "PortInfo",
    "ServiceInfo",
    "SliceEndpoint",
    "SliceInfo",
    "object_key",
    "parse_service",
    "parse_slice",
    "parse_trigger",
    "record",
    "service_port_name",
    "service_specs",
]

TRIGGER_ANNOTATION: Final = "endpoints.kubernetes.io/last-change-trigger-time"
SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"
_PROTOCOLS: Final = ("TCP", "UDP")  # what the connect4 program balances
_RFC3339: Final = re.compile(
    r"(?P<base>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(?P<fraction>\d+))?"
    r"(?P<zone>[Zz]|[+-]\d\d:\d\d)"
)


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
