"""The lab's "dataplane caught up" check, on a lab of the test's own making (no root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_dataplane.errors import DataplaneError
from pytest_dataplane.providers.k8s.testing import MemoryApi
from pytest_dataplane.providers.lab.kube import access


class EbpfLab:
    """An ebpf lab whose controller drops one deleted VIP from its maps per read."""

    client_netns = "client"
    client_cgroup: Path | None = None
    runs_kube_proxy = False

    def __init__(self, vips: list[str]) -> None:
        self.node_names = ["node0"]
        self.vips = list(vips)
        self.reads = 0

    def node_netns(self, index: int = 0) -> str:
        return "node0"

    def dataplane_cgroups(self, index: int = 0) -> list[Path]:
        return []

    def proxy_metrics(self, index: int = 0) -> str:
        raise AssertionError("no kube-proxy on ebpf")

    def logs(self, lines: int = 25) -> dict[str, str]:
        return {}

    def ebpf_programmed(self) -> dict[tuple[str, int, str], list[str]]:
        self.reads += 1
        programmed = {(vip, 80, "tcp"): ["10.0.0.1:8080"] for vip in self.vips}
        if len(self.vips) > 1:
            self.vips.pop()  # the controller works through the deletions
        return programmed


def service(name: str, ip: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip, "clusterIPs": [ip]},
    }


def endpoints(name: str, *ready: bool | None) -> dict[str, object]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-x",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": name},
        },
        "endpoints": [
            {"addresses": [f"10.1.0.{i}"], "conditions": {} if r is None else {"ready": r}}
            for i, r in enumerate(ready)
        ],
    }


def test_ebpf_settles_once_the_maps_hold_only_existing_services() -> None:
    api = MemoryApi()
    api.add(service("kubernetes", "10.96.0.1"))
    lab = EbpfLab(["10.96.0.1", "10.96.0.7", "10.96.0.8"])
    access.wait_settled(lab, timeout=10, poll=0, cluster_ips=lambda: access.service_ips(api))
    assert lab.reads == 3  # two stale reads, then only the kubernetes Service


def test_ebpf_that_never_catches_up_is_an_error_naming_the_addresses() -> None:
    lab = EbpfLab(["10.96.0.9"])
    nothing = access.ServiceAddresses(frozenset(), frozenset())
    with pytest.raises(DataplaneError, match=r"serves 1 deleted services .*10\.96\.0\.9"):
        access.wait_settled(lab, timeout=0.05, poll=0.01, cluster_ips=lambda: nothing)


def test_ebpf_settles_once_the_maps_hold_every_service_with_ready_endpoints() -> None:
    api = MemoryApi()
    api.add(service("kubernetes", "10.96.0.1"), endpoints("kubernetes", True))
    api.add(service("new", "10.96.0.5"), endpoints("new", None, False))
    lab = EbpfLab(["10.96.0.1"])  # the controller has not programmed "new" yet
    with pytest.raises(DataplaneError, match=r"misses 1 services .*10\.96\.0\.5"):
        access.wait_settled(
            lab, timeout=0.05, poll=0.01, cluster_ips=lambda: access.service_ips(api)
        )
    lab.vips.append("10.96.0.5")
    access.wait_settled(lab, timeout=1, poll=0, cluster_ips=lambda: access.service_ips(api))


def test_service_addresses() -> None:
    api = MemoryApi()
    api.add(
        service("a", "10.96.0.2"),
        endpoints("a", False, True),
        service("headless", "None"),
        service("none-ready", "10.96.0.3"),
        endpoints("none-ready", False),
        service("no-slice", "10.96.0.4"),
    )
    found = access.service_ips(api)
    assert found.existing == {"10.96.0.2", "10.96.0.3", "10.96.0.4"}
    assert found.ready == {"10.96.0.2"}
