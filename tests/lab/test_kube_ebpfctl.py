"""The eBPF service controller's pure part: Services and EndpointSlices -> load balancer
contents, and the endpoint changes (with their triggers) that programming them makes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_dataplane.providers.lab._types import Endpoint, SyncResult
from pytest_dataplane.providers.lab.kube.ebpfctl import (
    RECORDS_FILE,
    TRIGGER_ANNOTATION,
    Controller,
    Model,
    parse_service,
    parse_slice,
    parse_trigger,
    record,
    service_specs,
)


def service(
    name: str = "web",
    ip: str = "10.96.0.10",
    ports: list[dict[str, Any]] | None = None,
    namespace: str = "default",
    **spec: Any,
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "clusterIP": ip,
            "clusterIPs": [ip],
            "ports": ports if ports is not None else [{"port": 80, "protocol": "TCP"}],
            **spec,
        },
    }


def endpoint_slice(
    name: str,
    ips: list[str],
    *,
    service_name: str = "web",
    port: int = 8080,
    port_name: str = "",
    trigger: str | None = None,
    ready: bool | None = True,
    serving: bool | None = None,
    terminating: bool | None = None,
    address_type: str = "IPv4",
) -> dict[str, Any]:
    conditions: dict[str, bool] = {}
    for key, value in (("ready", ready), ("serving", serving), ("terminating", terminating)):
        if value is not None:
            conditions[key] = value
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "default",
        "labels": {"kubernetes.io/service-name": service_name},
    }
    if trigger is not None:
        meta["annotations"] = {TRIGGER_ANNOTATION: trigger}
    return {
        "metadata": meta,
        "addressType": address_type,
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": conditions} for ip in ips],
    }


def test_trigger_times_parse_rfc3339() -> None:
    assert parse_trigger("1970-01-01T00:00:10Z") == 10.0
    assert parse_trigger("1970-01-01T00:00:10.123456789Z") == pytest.approx(10.123456)
    assert parse_trigger("1970-01-01T01:00:10+01:00") == 10.0
    for bad in (None, "", "yesterday", 12, "1970-01-01 00:00:10"):
        assert parse_trigger(bad) is None


def test_services_without_a_balanced_cluster_ip_are_skipped() -> None:
    assert parse_service(service(ip="None")) is None  # headless
    assert parse_service(service(type="ExternalName")) is None
    assert parse_service(service(ip="fd00::1")) is None  # IPv6 only
    assert parse_service(service(ports=[{"port": 80, "protocol": "SCTP"}])) is None
    dual = service(ip="fd00::1")
    dual["spec"]["clusterIPs"] = ["fd00::1", "10.96.0.9"]
    info = parse_service(dual)
    assert info is not None and info.cluster_ip == "10.96.0.9"


def test_slices_of_other_families_or_without_a_service_are_skipped() -> None:
    assert parse_slice(endpoint_slice("a", ["fd00::2"], address_type="IPv6")) is None
    orphan = endpoint_slice("a", ["10.0.0.1"])
    del orphan["metadata"]["labels"]
    assert parse_slice(orphan) is None


def test_ready_endpoints_per_named_port_sorted_once() -> None:
    info = parse_service(
        service(
            ports=[
                {"name": "http", "port": 80, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP"},
            ]
        )
    )
    assert info is not None
    http = parse_slice(endpoint_slice("s1", ["10.0.0.3", "10.0.0.1"], port_name="http"))
    again = parse_slice(endpoint_slice("s2", ["10.0.0.1", "10.0.0.2"], port_name="http"))
    not_ready = parse_slice(
        endpoint_slice("s3", ["10.0.0.9"], port_name="http", ready=False, serving=False)
    )
    assert http and again and not_ready
    specs = service_specs(info, [http, again, not_ready])
    assert set(specs) == {"default/web:http", "default/web:dns"}
    web = specs["default/web:http"]
    assert (web.vip, web.port, web.protocol) == ("10.96.0.10", 80, "tcp")
    assert [str(e) for e in web.endpoints] == ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]
    # No slice carries the dns port: the service port exists with no endpoint.
    assert specs["default/web:dns"].endpoints == ()
    assert specs["default/web:dns"].protocol == "udp"


def test_unnamed_port_is_named_as_kube_proxy_names_it() -> None:
    info = parse_service(service())
    piece = parse_slice(endpoint_slice("s1", ["10.0.0.1"]))
    assert info and piece
    assert list(service_specs(info, [piece])) == ["default/web"]


def test_terminating_serving_endpoints_only_when_none_is_ready() -> None:
    info = parse_service(service())
    leaving = parse_slice(
        endpoint_slice("s1", ["10.0.0.1"], ready=False, serving=True, terminating=True)
    )
    gone = parse_slice(
        endpoint_slice("s2", ["10.0.0.2"], ready=False, serving=False, terminating=True)
    )
    fresh = parse_slice(endpoint_slice("s3", ["10.0.0.3"]))
    assert info and leaving and gone and fresh
    assert [str(e) for e in service_specs(info, [leaving, gone])["default/web"].endpoints] == [
        "10.0.0.1:8080"
    ]
    assert [
        str(e) for e in service_specs(info, [leaving, gone, fresh])["default/web"].endpoints
    ] == ["10.0.0.3:8080"]


def test_absent_ready_condition_counts_as_ready() -> None:
    piece = parse_slice(endpoint_slice("s1", ["10.0.0.1"], ready=None))
    assert piece is not None and piece.endpoints[0].ready


def test_model_records_each_endpoint_change_with_its_trigger() -> None:
    model = Model()
    model.service_event("ADDED", service(), seen=100.0)
    model.slice_event(
        "ADDED", endpoint_slice("s1", ["10.0.0.1"], trigger="1970-01-01T00:01:50Z"), 111.0
    )
    dirty, changes = model.take()
    assert dirty == {"default/web"}
    assert [(n, str(e), p.change, p.trigger, p.source) for n, e, p in changes] == [
        ("default/web", "10.0.0.1:8080", "added", 110.0, "annotation")
    ]
    assert model.live == {"default/web": (Endpoint("10.0.0.1", 8080),)}
    # Two updates coalesced into one programming: each endpoint keeps the trigger of the
    # event that changed it; a slice without the annotation falls back to when it was seen.
    model.slice_event(
        "MODIFIED",
        endpoint_slice("s1", ["10.0.0.1", "10.0.0.2"], trigger="1970-01-01T00:02:00Z"),
        121.0,
    )
    model.slice_event("ADDED", endpoint_slice("s2", ["10.0.0.3"]), 125.0)
    model.slice_event(
        "MODIFIED", endpoint_slice("s1", ["10.0.0.2"], trigger="1970-01-01T00:02:10Z"), 131.0
    )
    dirty, changes = model.take()
    assert dirty == {"default/web"}
    got = sorted((str(e), p.change, p.trigger, p.source) for _, e, p in changes)
    assert got == [
        ("10.0.0.1:8080", "removed", 130.0, "annotation"),
        ("10.0.0.2:8080", "added", 120.0, "annotation"),
        ("10.0.0.3:8080", "added", 125.0, "seen"),
    ]
    pending = next(p for _, e, p in changes if str(e) == "10.0.0.3:8080")
    assert record("default/web", Endpoint("10.0.0.3", 8080), pending, 125.5) == {
        "service": "default/web",
        "port": "default/web",
        "endpoint": "10.0.0.3:8080",
        "change": "added",
        "trigger": 125.0,
        "trigger_source": "seen",
        "programmed": 125.5,
        "seconds": 0.5,
    }


def test_a_change_undone_before_programming_is_no_change() -> None:
    model = Model()
    model.service_event("ADDED", service(), seen=1.0)
    model.slice_event("ADDED", endpoint_slice("s1", ["10.0.0.1"]), 2.0)
    model.take()
    model.slice_event("MODIFIED", endpoint_slice("s1", ["10.0.0.1", "10.0.0.2"]), 3.0)
    model.slice_event("MODIFIED", endpoint_slice("s1", ["10.0.0.1"]), 4.0)
    dirty, changes = model.take()
    assert changes == []
    assert dirty == {"default/web"}  # looked at again, but nothing to write


def test_deleting_the_service_or_its_slice_removes_the_endpoints() -> None:
    model = Model()
    model.service_event("ADDED", service(), seen=1.0)
    model.slice_event("ADDED", endpoint_slice("s1", ["10.0.0.1"]), 2.0)
    model.take()
    model.slice_event("DELETED", endpoint_slice("s1", ["10.0.0.1"]), 5.0)
    _, changes = model.take()
    assert [(str(e), p.change, p.trigger) for _, e, p in changes] == [
        ("10.0.0.1:8080", "removed", 5.0)
    ]
    assert model.specs["default/web"].endpoints == ()
    model.service_event("DELETED", service(), seen=6.0)
    dirty, _ = model.take()
    assert dirty == {"default/web"} and model.specs == {} and model.live == {}


def test_relist_replaces_everything_and_finds_what_changed_meanwhile() -> None:
    model = Model()
    model.replace_services([service(), service("api", "10.96.0.11")], seen=1.0)
    model.replace_slices(
        [
            endpoint_slice("s1", ["10.0.0.1"]),
            endpoint_slice("a1", ["10.0.1.1"], service_name="api"),
        ],
        seen=1.0,
    )
    model.take()
    # While the watch was down: api lost its slice, web got a second endpoint.
    model.replace_services([service(), service("api", "10.96.0.11")], seen=9.0)
    model.replace_slices([endpoint_slice("s1", ["10.0.0.1", "10.0.0.2"])], seen=9.0)
    _, changes = model.take()
    assert sorted((n, str(e), p.change) for n, e, p in changes) == [
        ("default/api", "10.0.1.1:8080", "removed"),
        ("default/web", "10.0.0.2:8080", "added"),
    ]


def test_five_thousand_services_by_three_endpoints() -> None:
    # The background services of a scale test: 5,000 services x 3 endpoints, as events.
    model = Model()
    for i in range(5000):
        ip = f"10.96.{i // 250}.{i % 250 + 1}"
        model.service_event("ADDED", service(f"bg{i}", ip), seen=float(i))
        addresses = [f"10.1.{i // 250}.{i % 250 + 1}", f"10.2.{i // 250}.{i % 250 + 1}"]
        addresses.append(f"10.3.{i // 250}.{i % 250 + 1}")
        model.slice_event("ADDED", endpoint_slice(f"bg{i}-x", addresses, service_name=f"bg{i}"), i)
    dirty, changes = model.take()
    assert len(dirty) == 5000
    assert len(changes) == 15000
    assert sum(len(s.endpoints) for s in model.specs.values()) == 15000


class FakeProxier:
    """Stands in for the BPF load balancer: remembers what each sync was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, tuple[str, ...]], set[str] | None]] = []

    def sync(self, services: Any, changed: Any) -> SyncResult:
        snapshot = {n: tuple(str(e) for e in s.endpoints) for n, s in services.items()}
        self.calls.append((snapshot, None if changed is None else set(changed)))
        return SyncResult(wall=0.001, cpu=0.001, written=1, full=changed is None)


def test_a_burst_of_events_is_one_programming(tmp_path: Path) -> None:
    controller = Controller("/nonexistent/kubeconfig", "/sys/fs/cgroup/x", tmp_path)
    fake = FakeProxier()
    controller.proxier = fake  # type: ignore[assignment]
    controller.events.put(("list", "services", [service()], 1.0))
    assert controller.step(0) is False  # one list of two: nothing programmed yet
    assert fake.calls == []
    controller.events.put(("list", "slices", [endpoint_slice("s1", ["10.0.0.1"])], 1.0))
    assert controller.step(0) is True
    assert fake.calls == [({"default/web": ("10.0.0.1:8080",)}, None)]  # the first is full
    # 50 services and their slices arrive while nothing is programming: one sync for all.
    for i in range(50):
        controller.events.put(("event", "services", "ADDED", service(f"s{i}", f"10.96.1.{i}"), 2.0))
        piece = endpoint_slice(f"s{i}-1", [f"10.1.0.{i}"], service_name=f"s{i}")
        controller.events.put(("event", "slices", "ADDED", piece, 3.0))
    assert controller.step(0) is True
    assert len(fake.calls) == 2
    specs, changed = fake.calls[1]
    assert changed == {f"default/s{i}" for i in range(50)}
    assert len(specs) == 51
    lines = [json.loads(x) for x in (tmp_path / RECORDS_FILE).read_text().splitlines()]
    assert len(lines) == 1 + 50
    assert {r["service"] for r in lines[1:]} == {f"default/s{i}" for i in range(50)}
    assert all(r["seconds"] == r["programmed"] - r["trigger"] for r in lines)
    # Nothing queued: no sync at all.
    assert controller.step(0) is True
    assert len(fake.calls) == 2
    # A relist after 410 Gone programs everything again (repairs drift).
    controller.events.put(("list", "services", [service()], 9.0))
    controller.step(0)
    assert fake.calls[-1][1] is None
    assert list(fake.calls[-1][0]) == ["default/web"]
