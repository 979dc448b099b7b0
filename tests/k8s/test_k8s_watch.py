"""EndpointSlice watch handling: recorded watch events in, endpoint events out."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from pytest_dataplane.events import Event
from pytest_dataplane.providers.k8s.testing import MemoryApi
from pytest_dataplane.providers.k8s.watch import EndpointTracker, SliceWatcher, ready_endpoints


def eps(
    name: str,
    service: str,
    endpoints: list[tuple[str, str | None, bool | None]],
    *,
    role: str | None = None,
    port: int = 8080,
    trigger: str | None = None,
) -> dict[str, Any]:
    """An EndpointSlice as a watch stream's raw_object carries it."""
    labels = {
        "kubernetes.io/service-name": service,
        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
    }
    if role:
        labels["pytest-dataplane/role"] = role
    meta: dict[str, Any] = {"name": name, "namespace": "dpt-1", "labels": labels}
    if trigger:
        meta["annotations"] = {"endpoints.kubernetes.io/last-change-trigger-time": trigger}
    items = []
    for ip, pod, ready in endpoints:
        item: dict[str, Any] = {"addresses": [ip]}
        if ready is not None:
            item["conditions"] = {"ready": ready, "serving": True, "terminating": not ready}
        if pod:
            item["targetRef"] = {"kind": "Pod", "name": pod, "namespace": "dpt-1"}
        items.append(item)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": meta,
        "addressType": "IPv4",
        "endpoints": items,
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }


def names(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.name, e.detail["endpoint"]) for e in events]


def test_ready_endpoints_honours_conditions() -> None:
    obj = eps(
        "s-1",
        "web",
        [
            ("10.244.1.2", "web-a", True),
            ("10.244.1.3", "web-b", False),
            ("10.244.1.4", "web-c", None),
        ],
    )
    assert ready_endpoints(obj) == {"10.244.1.2:8080": "web-a", "10.244.1.4:8080": "web-c"}
    v6 = {
        **obj,
        "addressType": "IPv6",
        "endpoints": [{"addresses": ["fd00::5"], "conditions": {"ready": True}}],
    }
    assert ready_endpoints(v6) == {"[fd00::5]:8080": None}


def test_scale_and_rollout_sequence() -> None:
    tracker = EndpointTracker()
    added = tracker.handle("ADDED", eps("web-x", "web", [("10.0.0.1", "a", True)]), 1.0)
    assert names(added) == [("endpoint-added", "10.0.0.1:8080")]
    assert added[0].time == 1.0
    assert added[0].detail == {"service": "web", "endpoint": "10.0.0.1:8080", "pod": "a"}
    # a new pod shows up not ready, then ready
    assert (
        tracker.handle(
            "MODIFIED",
            eps("web-x", "web", [("10.0.0.1", "a", True), ("10.0.0.2", "b", False)]),
            2.0,
        )
        == []
    )
    became = tracker.handle(
        "MODIFIED",
        eps(
            "web-x",
            "web",
            [("10.0.0.1", "a", True), ("10.0.0.2", "b", True)],
            trigger="2026-01-01T00:00:03Z",
        ),
        3.0,
    )
    assert names(became) == [("endpoint-added", "10.0.0.2:8080")]
    assert became[0].detail["trigger_time"] == "2026-01-01T00:00:03Z"
    # the old pod terminates: removed while the new one stays
    swapped = tracker.handle(
        "MODIFIED", eps("web-x", "web", [("10.0.0.1", "a", False), ("10.0.0.2", "b", True)]), 4.0
    )
    assert names(swapped) == [("endpoint-removed", "10.0.0.1:8080")]
    assert tracker.ready("web") == {"10.0.0.2:8080": "b"}
    gone = tracker.handle("DELETED", eps("web-x", "web", []), 5.0)
    assert names(gone) == [("endpoint-removed", "10.0.0.2:8080")]


def test_endpoints_moving_between_slices_make_no_events() -> None:
    tracker = EndpointTracker()
    tracker.handle("ADDED", eps("web-1", "web", [("10.0.0.1", "a", True)]), 1.0)
    assert tracker.handle("ADDED", eps("web-2", "web", [("10.0.0.1", "a", True)]), 2.0) == []
    assert tracker.handle("DELETED", eps("web-1", "web", []), 3.0) == []
    assert tracker.ready("web") == {"10.0.0.1:8080": "a"}


def test_background_slices_bookmarks_and_foreign_slices_are_ignored() -> None:
    tracker = EndpointTracker()
    bg = eps("dpt-bg-00000-1", "dpt-bg-00000", [("198.18.0.1", None, True)], role="background")
    assert tracker.handle("ADDED", bg, 1.0) == []
    assert tracker.handle("BOOKMARK", {"metadata": {"resourceVersion": "9"}}, 1.0) == []
    no_owner = eps("x", "web", [("10.0.0.9", None, True)])
    del no_owner["metadata"]["labels"]["kubernetes.io/service-name"]
    assert tracker.handle("ADDED", no_owner, 1.0) == []
    assert tracker.ready("dpt-bg-00000") == {}


def test_relist_reports_what_changed_meanwhile() -> None:
    tracker = EndpointTracker()
    tracker.handle("ADDED", eps("web-1", "web", [("10.0.0.1", "a", True)]), 1.0)
    tracker.handle("ADDED", eps("api-1", "api", [("10.0.0.7", "p", True)]), 1.0)
    events = tracker.replace(
        [
            eps("web-1", "web", [("10.0.0.2", "b", True)]),
            eps("api-1", "api", [("10.0.0.7", "p", True)]),
        ],
        9.0,
    )
    assert [(e.name, e.detail["service"], e.detail["endpoint"]) for e in events] == [
        ("endpoint-removed", "web", "10.0.0.1:8080"),
        ("endpoint-added", "web", "10.0.0.2:8080"),
    ]
    tracker.forget("web")
    assert tracker.ready("web") == {}
    assert tracker.ready("api") == {"10.0.0.7:8080": "p"}
    tracker.forget()
    assert tracker.ready("api") == {}


def test_wait_wakes_on_change() -> None:
    tracker = EndpointTracker()
    timer = threading.Timer(
        0.05, lambda: tracker.handle("ADDED", eps("w", "web", [("10.0.0.1", "a", True)]), 1.0)
    )
    timer.start()
    try:
        assert tracker.wait("web", lambda ready: len(ready) == 1, timeout=5.0)
        assert not tracker.wait("web", lambda ready: len(ready) == 2, timeout=0.05)
    finally:
        timer.cancel()


def test_slice_watcher_seeds_silently_then_reports_watch_events() -> None:
    api = MemoryApi()
    api.add(eps("web-1", "web", [("10.0.0.1", "a", True)]))
    api.watch_script = [
        ("ADDED", eps("web-2", "web", [("10.0.0.2", "b", True)])),
        ("MODIFIED", eps("web-1", "web", [("10.0.0.1", "a", False)])),
    ]
    received: list[Event] = []
    tracker = EndpointTracker()
    watcher = SliceWatcher(api, "dpt-1", tracker, received.extend, watch_timeout=0.1)
    started = time.monotonic()
    watcher.start()
    try:
        assert tracker.wait("web", lambda r: set(r) == {"10.0.0.2:8080"}, timeout=5.0)
        time.sleep(0.3)  # several re-lists: they must find nothing new
    finally:
        watcher.stop()
    assert names(received) == [
        ("endpoint-added", "10.0.0.2:8080"),
        ("endpoint-removed", "10.0.0.1:8080"),
    ]
    assert all(started <= e.time <= time.monotonic() for e in received)
    # list first, then watch from that list's resourceVersion
    assert api.verbs("EndpointSlice")[:2] == ["list", "watch"]
    # background slices are left out by the server, not fetched and dropped
    assert api.calls[0].body == "pytest-dataplane/role!=background"
    assert watcher.errors == []


class _QuietWatchApi(MemoryApi):
    """A server whose watch stays silent until its timeout, unless the watch is stopped."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped = threading.Event()
        self.ended: list[str] = []

    def watch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        *,
        resource_version: str,
        timeout: float,
        label_selector: str | None = None,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        ended_by_stop = self.stopped.wait(timeout)
        self.ended.append("stopped" if ended_by_stop else "timeout")
        if ended_by_stop:
            # What the real client does when its stream's socket is shut under the read.
            raise ConnectionError("Response ended prematurely")
        return iter(())

    def stop_watches(self) -> None:
        self.stopped.set()


def test_slice_watcher_stop_ends_a_quiet_watch_at_once() -> None:
    api = _QuietWatchApi()
    watcher = SliceWatcher(api, "dpt-1", EndpointTracker(), lambda events: None, watch_timeout=600)
    watcher.start()
    watcher.stop()
    assert api.ended == ["stopped"]
    assert watcher.errors == []  # an ending we asked for is no failure
    assert watcher._thread is not None and not watcher._thread.is_alive()
