"""EndpointSlice watch handling: turns watch events into ``endpoint-added`` /
``endpoint-removed`` events, as the dataplane sees the endpoints change.

:class:`EndpointTracker` is pure state (feed it recorded watch events in tests);
:class:`SliceWatcher` is the thin thread that lists, watches and re-lists through a
:class:`~pytest_dataplane.providers.k8s.api.KubeApi`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from ...events import Event, now
from .resources import ROLE_LABEL

__all__ = ["EndpointTracker", "SliceWatcher", "ready_endpoints"]

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"
TRIGGER_ANNOTATION: Final = "endpoints.kubernetes.io/last-change-trigger-time"


def ready_endpoints(slice_obj: Mapping[str, Any]) -> dict[str, str | None]:
    """Ready endpoints of one EndpointSlice as ``{"ip:port": pod name or None}``.

    A missing ``ready`` condition counts as ready, as the API documents for consumers; an
    endpoint that is terminating is not ready even while it still serves.
    """
    ports = slice_obj.get("ports") or []
    port = ports[0].get("port") if ports else None
    family = slice_obj.get("addressType", "IPv4")
    result: dict[str, str | None] = {}
    for endpoint in slice_obj.get("endpoints") or []:
        conditions = endpoint.get("conditions") or {}
        if conditions.get("ready") is False:
            continue
        target = endpoint.get("targetRef") or {}
        pod = target.get("name") if target.get("kind", "Pod") == "Pod" else None
        for address in endpoint.get("addresses") or []:
            host = f"[{address}]" if family == "IPv6" else address
            result[f"{host}:{port}" if port is not None else host] = pod
    return result


class EndpointTracker:
    """Ready endpoints per service, from EndpointSlices, and the events their changes make.

    Slices labelled with the background role are ignored: they never change after creation
    and thousands of them would only flood the event list.
    """

    def __init__(self, *, ignore_roles: Iterable[str] = ("background",)) -> None:
        self._ignore = frozenset(ignore_roles)
        self._slices: dict[str, tuple[str, dict[str, str | None]]] = {}
        self._changed = threading.Condition()

    def _key(self, obj: Mapping[str, Any]) -> str:
        meta = obj.get("metadata") or {}
        return f"{meta.get('namespace', '')}/{meta.get('name', '')}"

    def _accept(self, obj: Mapping[str, Any]) -> str | None:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if labels.get(ROLE_LABEL) in self._ignore:
            return None
        service = labels.get(SERVICE_NAME_LABEL)
        return str(service) if service else None

    def _service_view(self, service: str) -> dict[str, str | None]:
        view: dict[str, str | None] = {}
        for owner, endpoints in self._slices.values():
            if owner == service:
                view.update(endpoints)
        return view

    @staticmethod
    def _diff(
        service: str,
        before: Mapping[str, str | None],
        after: Mapping[str, str | None],
        at: float,
        extra: Mapping[str, Any],
    ) -> list[Event]:
        events = [
            Event(
                "endpoint-removed",
                at,
                {"service": service, "endpoint": ep, "pod": before[ep], **extra},
            )
            for ep in sorted(set(before) - set(after))
        ]
        events += [
            Event(
                "endpoint-added",
                at,
                {"service": service, "endpoint": ep, "pod": after[ep], **extra},
            )
            for ep in sorted(set(after) - set(before))
        ]
        return events

    def handle(self, event_type: str, obj: Mapping[str, Any], at: float) -> list[Event]:
        """Apply one watch event (``ADDED``, ``MODIFIED``, ``DELETED``); returns the endpoint
        events it causes, stamped ``at``. Other event types change nothing."""
        if event_type not in ("ADDED", "MODIFIED", "DELETED"):
            return []
        service = self._accept(obj)
        if service is None:
            return []
        key = self._key(obj)
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        extra = (
            {"trigger_time": annotations[TRIGGER_ANNOTATION]}
            if TRIGGER_ANNOTATION in annotations
            else {}
        )
        with self._changed:
            before = self._service_view(service)
            if event_type == "DELETED":
                self._slices.pop(key, None)
            else:
                self._slices[key] = (service, ready_endpoints(obj))
            after = self._service_view(service)
            events = self._diff(service, before, after, at, extra)
            self._changed.notify_all()
        return events

    def replace(self, slices: Iterable[Mapping[str, Any]], at: float) -> list[Event]:
        """Replace the whole state with a fresh list (after a watch expired); returns the
        events for what changed in between."""
        fresh: dict[str, tuple[str, dict[str, str | None]]] = {}
        for obj in slices:
            service = self._accept(obj)
            if service is not None:
                fresh[self._key(obj)] = (service, ready_endpoints(obj))
        with self._changed:
            services = {owner for owner, _ in self._slices.values()}
            services |= {owner for owner, _ in fresh.values()}
            before = {name: self._service_view(name) for name in services}
            self._slices = fresh
            events: list[Event] = []
            for name in sorted(services):
                events += self._diff(name, before[name], self._service_view(name), at, {})
            self._changed.notify_all()
        return events

    def ready(self, service: str) -> dict[str, str | None]:
        """Ready endpoints of ``service`` now: ``{"ip:port": pod}``."""
        with self._changed:
            return self._service_view(service)

    def wait(
        self,
        service: str,
        predicate: Callable[[Mapping[str, str | None]], bool],
        timeout: float,
    ) -> bool:
        """Block until ``predicate(ready endpoints)`` holds (True) or ``timeout`` passes."""
        with self._changed:
            return self._changed.wait_for(
                lambda: predicate(self._service_view(service)), timeout=timeout
            )

    def forget(self, service: str | None = None) -> None:
        """Drop the state of ``service`` (None: of every service) without making events."""
        with self._changed:
            self._slices = {
                k: v for k, v in self._slices.items() if service is not None and v[0] != service
            }


class SliceWatcher:
    """Watches a namespace's EndpointSlices in a daemon thread and reports endpoint events.

    Lists first (a silent seed), then watches from that list's resourceVersion; when the
    watch ends or fails (e.g. 410 Gone) it lists again and reports what changed meanwhile.
    """

    def __init__(
        self,
        api: Any,
        namespace: str,
        tracker: EndpointTracker,
        on_events: Callable[[list[Event]], None],
        *,
        watch_timeout: float = 10.0,
        label_selector: str | None = f"{ROLE_LABEL}!=background",
    ) -> None:
        self.api = api
        # Background slices never change; leaving them to the server keeps re-lists small.
        self.label_selector = label_selector
        self.namespace = namespace
        self.tracker = tracker
        self.on_events = on_events
        self.watch_timeout = watch_timeout
        self._stop = threading.Event()
        self._seeded = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []

    def start(self, *, timeout: float = 30.0) -> None:
        """Start watching; returns once the initial list is in."""
        self._thread = threading.Thread(
            target=self._run, name=f"dataplane-slices-{self.namespace}", daemon=True
        )
        self._thread.start()
        self._seeded.wait(timeout)

    def stop(self) -> None:
        """Stop watching: the watch in progress is ended at once, not at its timeout."""
        self._stop.set()
        self.api.stop_watches()
        if self._thread is not None:
            self._thread.join(self.watch_timeout + 5.0)

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                items, version = self.api.list_items(
                    "discovery.k8s.io/v1",
                    "EndpointSlice",
                    self.namespace,
                    label_selector=self.label_selector,
                )
                events = self.tracker.replace(items, now())
                if not first and events:
                    self.on_events(events)
                first = False
                self._seeded.set()
                for event_type, obj in self.api.watch(
                    "discovery.k8s.io/v1",
                    "EndpointSlice",
                    self.namespace,
                    resource_version=version,
                    timeout=self.watch_timeout,
                    label_selector=self.label_selector,
                ):
                    if self._stop.is_set():
                        return
                    if event_type == "ERROR":
                        break  # typically 410 Gone: list again
                    events = self.tracker.handle(event_type, obj, now())
                    if events:
                        self.on_events(events)
            except Exception as exc:  # keep watching through API hiccups, but say so
                if self._stop.is_set():
                    return  # stop() ended the stream under the read
                self.errors.append(f"{type(exc).__name__}: {exc}")
                log.warning("EndpointSlice watch in %s failed: %s", self.namespace, exc)
                self._stop.wait(1.0)
