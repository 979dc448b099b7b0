"""Exact programming latency of the lab's iptables mode on iptables-nft, from ``nft -a
monitor`` lines (no root: the lines were recorded in a scratch namespace from kube-proxy-shaped
``iptables-nft-restore`` transactions, see tests/data/README.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest

from pytest_dataplane.errors import DataplaneError, DataplaneUnavailable
from pytest_dataplane.providers.k8s.api import KubeApi, NotFound
from pytest_dataplane.providers.lab.kube.iptmon import (
    Change,
    MonitorLostEvents,
    NatEvent,
    NatRules,
    Rule,
    RuleHistory,
    change_latencies,
    parse_monitor_line,
    service_frontends,
)

DATA = Path(__file__).parent.parent / "data"
LINES = (DATA / "nft-monitor-iptables-nft.txt").read_text().splitlines()
WEB, API = "ns1/web", "ns1/api"
FRONTENDS = {WEB: [("10.96.0.10", 80)], API: [("10.96.0.20", 443)]}
SVC_WEB = "KUBE-SVC-AAAAAAAAAAAAAAAA"


def generation(line: str) -> int:
    return int(line.split()[3])


def replay(lines: list[str], node: str = "node0") -> RuleHistory:
    """The recording fed to a history, each line read at 100 + the number of the generation it
    belongs to (so a commit's time is 100 + its generation)."""
    history = RuleHistory(lambda service: FRONTENDS.get(service, []))
    upcoming = [generation(line) for line in lines if line.startswith("# new generation")]
    for line in lines:
        history.add(node, line + "\n", 100.0 + upcoming[0])
        if line.startswith("# new generation"):
            upcoming.pop(0)
    return history


def test_rules_of_the_service_chains_are_parsed() -> None:
    by_text = {line: parse_monitor_line(line) for line in LINES}
    services = next(line for line in LINES if "ip daddr 10.96.0.20" in line)
    assert by_text[services] == NatEvent(
        "add", "ip", "KUBE-SERVICES", 14, Rule("10.96.0.20", 443, SVC_WEB.replace("A", "B"))
    )
    # nft renders iptables-nft's rule position as a stray `handle 16` after the chain name:
    # the rule's own handle is the trailing comment's.
    stray = next(line for line in LINES if f"{SVC_WEB} handle 16 " in line)
    assert by_text[stray] == NatEvent(
        "add", "ip", SVC_WEB, 17, Rule(jump="KUBE-SEP-AAAAAAAAAAAAAAAA")
    )
    dnat = next(line for line in LINES if "dnat to 10.244.2.5:8443" in line)
    assert by_text[dnat] == NatEvent(
        "add", "ip", "KUBE-SEP-EEEEEEEEEEEEEEEE", 28, Rule(dnat="10.244.2.5:8443")
    )
    assert by_text["delete rule ip nat KUBE-SVC-AAAAAAAAAAAAAAAA handle 16"] == NatEvent(
        "delete", "ip", SVC_WEB, 16
    )
    assert by_text["delete chain ip nat KUBE-SEP-CCCCCCCCCCCCCCCC"] == NatEvent(
        "delete-chain", "ip", "KUBE-SEP-CCCCCCCCCCCCCCCC"
    )
    assert by_text["# new generation 6 by process 15769 (iptables-nft-re)"] == NatEvent("commit")
    assert parse_monitor_line("# ERROR: We lost some netlink events!") == NatEvent("lost")


def test_lines_outside_the_service_chains_are_skipped() -> None:
    skipped = [
        "add table ip pytest_dataplane_probe # handle 1",
        "create chain ip nat KUBE-SEP-AAAAAAAAAAAAAAAA # handle 9",
        next(line for line in LINES if line.startswith("add rule ip nat KUBE-MARK-MASQ")),
        next(line for line in LINES if line.startswith("add rule ip filter KUBE-SERVICES")),
        "delete rule ip nat KUBE-POSTROUTING handle 5",
        "",
    ]
    for line in skipped:
        assert line in LINES or not line  # recorded lines, not made up
        assert parse_monitor_line(line) is None, line


def test_the_first_commit_gives_each_cluster_ip_its_endpoints() -> None:
    rules = NatRules()
    first = LINES[: LINES.index(next(line for line in LINES if "generation 5 " in line))]
    for line in first:
        event = parse_monitor_line(line)
        if event is not None and event.verb not in ("commit", "lost"):
            rules.apply(event)
    # The KUBE-MARK-MASQ jump of web's chain and the SEP chains' masquerade rules add nothing.
    assert rules.endpoints() == {
        ("10.96.0.10", 80): frozenset({"10.244.1.2:8080", "10.244.1.3:8080", "10.244.1.4:8080"}),
        ("10.96.0.20", 443): frozenset({"10.244.2.5:8443"}),
    }


def test_each_change_is_programmed_at_its_commit() -> None:
    history = replay(LINES)
    # generation 5: the first restore; 6: web drops .4 (its SEP chain deleted); 8: api loses
    # its last endpoint (only its KUBE-SERVICES jump is gone); 10: web gains .6.
    assert history.programmed("node0", WEB, "10.244.1.4:8080", present=True, since=0) == 105.0
    assert history.programmed("node0", WEB, "10.244.1.4:8080", present=False, since=0) == 106.0
    assert history.programmed("node0", API, "10.244.2.5:8443", present=False, since=0) == 108.0
    assert history.programmed("node0", WEB, "10.244.1.6:8080", present=True, since=0) == 110.0
    # kube-proxy flushes web's chains and refills them in one transaction (generations 6 and
    # 10): read at commits only, .2 is never out of web.
    assert history.programmed("node0", WEB, "10.244.1.2:8080", present=False, since=0) is None
    # not before the change's time, not on another node
    assert history.programmed("node0", WEB, "10.244.1.4:8080", present=True, since=105.5) is None
    assert history.programmed("node1", WEB, "10.244.1.6:8080", present=True, since=0) is None


def test_change_latencies_over_the_recording() -> None:
    history = replay(LINES)
    changes = [
        Change(WEB, "10.244.1.4:8080", False, 105.7),  # committed at 106
        Change(API, "10.244.2.5:8443", False, 107.5),  # committed at 108
        Change(WEB, "10.244.1.6:8080", True, 109.0),  # committed at 110
        Change(WEB, "10.244.1.9:8080", True, 111.0),  # never committed: a lower bound
    ]
    assert change_latencies(history, ["node0"], changes, now_wall=115.0) == pytest.approx(
        [0.3, 0.5, 1.0, 4.0]
    )


def test_lost_events_spoil_every_change_from_then_on() -> None:
    # Generations up to 8, then a loss, then generation 10's lines.
    cut = LINES.index(next(line for line in LINES if "generation 8 " in line)) + 1
    lines = [*LINES[:cut], "# ERROR: We lost some netlink events!", *LINES[cut:]]
    history = replay(lines)
    assert history.losses("node0") == [(108.0, float("inf"))]
    # committed before the loss: exact
    early = [Change(WEB, "10.244.1.4:8080", False, 105.7)]
    assert change_latencies(history, ["node0"], early, now_wall=115.0) == pytest.approx([0.3])
    # seen after the loss: the rebuilt chains may miss a rule the kernel dropped
    later = [Change(WEB, "10.244.1.6:8080", True, 109.5)]
    with pytest.raises(MonitorLostEvents, match=r"node0 lost kernel events.*10\.244\.1\.6:8080"):
        change_latencies(history, ["node0"], later, now_wall=115.0)


def test_a_service_without_a_cluster_ip_is_an_error() -> None:
    history = replay(LINES)
    with pytest.raises(DataplaneError, match="'ns1/headless' has no cluster IP"):
        history.programmed("node0", "ns1/headless", "10.244.1.2:8080", present=True, since=0)


def test_the_json_monitor_lacks_the_endpoints_and_the_commits() -> None:
    # Why this module reads the text monitor: recorded at the same time as the text lines.
    text = (DATA / "nft-monitor-iptables-nft.jsonl").read_text()
    events = [json.loads(line) for line in text.splitlines()]
    dnats = [
        item
        for event in events
        for body in event.values()
        for item in body.get("rule", {}).get("expr", [])
        if "DNAT" in json.dumps(item) or "dnat" in item
    ]
    assert dnats
    assert all(item == {"xt": {"type": "target", "name": "DNAT"}} for item in dnats)
    assert not any("generation" in json.dumps(event) for event in events)


def test_an_ipv6_udp_service_with_a_local_policy_and_affinity() -> None:
    # ip6tables-nft: the cluster IP jumps to a KUBE-SVL chain; ClientIP affinity adds a
    # `recent` jump to the same SEP chain; the DNAT renders as the watch writes IPv6 endpoints.
    lines = (DATA / "nft-monitor-ip6tables-nft.txt").read_text().splitlines()
    history = RuleHistory(lambda service: [("fd00:96::10", 53)])
    for i, line in enumerate(lines):
        history.add("node0", line, 100.0 + i)
    # the transaction's first line follows the KUBE-MARK-MASQ chain's own generation
    committed = 100.0 + lines.index(next(x for x in lines if "generation 2 " in x)) + 1
    assert (
        history.programmed("node0", "ns1/dns", "[fd00:244::5]:5353", present=True, since=0)
        == committed
    )


def test_an_nft_that_cannot_translate_dnat_is_an_error() -> None:
    # nft built without libxtables prints the xt target as such: no endpoint to read.
    opaque = [line.replace("dnat to 10.244.1.6:8080", "xt target DNAT") for line in LINES]
    history = replay(opaque)
    with pytest.raises(DataplaneError, match="without the endpoint"):
        history.programmed("node0", WEB, "10.244.1.6:8080", present=True, since=0)
    # a node whose nft translates it keeps its figures
    history.add("node1", LINES[-2], 1.0)
    assert history.programmed("node1", WEB, "10.244.1.6:8080", present=True, since=0) is None


class FakeApi:
    """The one call service_frontends makes of a KubeApi."""

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any]:
        assert (api_version, kind, name, namespace) == ("v1", "Service", "web", "ns1")
        spec = {
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10", "fd00:96::10"],
            "ports": [{"name": "http", "port": 80}, {"name": "alt", "port": 8081}],
        }
        return {"spec": spec}


def test_frontends_from_the_api() -> None:
    frontends = service_frontends(cast(KubeApi, FakeApi()))
    assert sorted(frontends("ns1/web")) == [
        ("10.96.0.10", 80),
        ("10.96.0.10", 8081),
        ("fd00:96::10", 80),
        ("fd00:96::10", 8081),
    ]


def test_a_commit_is_timed_by_the_first_line_of_its_burst() -> None:
    # The kernel sends a transaction's events at its commit; reading a large sync's lines
    # takes a while, so the generation line that closes it is read later than the commit.
    history = RuleHistory(lambda service: FRONTENDS.get(service, []))
    for i, line in enumerate(LINES):
        history.add("node0", line, 1000.0 + i)
    first_of_last = max(i for i, line in enumerate(LINES) if line.startswith("# new generation 9 "))
    assert (
        history.programmed("node0", WEB, "10.244.1.6:8080", present=True, since=0)
        == 1000.0 + first_of_last + 1
    )


def test_a_service_made_again_under_its_name_is_asked_anew() -> None:
    # The tests of one cluster reuse service names; a Service made again has a new cluster IP.
    answers = {WEB: [("10.96.0.99", 80)]}
    history = RuleHistory(lambda service: answers[service])
    assert history.frontends(WEB) == {("10.96.0.99", 80)}
    answers[WEB] = [("10.96.0.10", 80)]
    assert history.frontends(WEB) == {("10.96.0.99", 80)}  # asked once ...
    history.forget_frontends()
    assert history.frontends(WEB) == {("10.96.0.10", 80)}  # ... until forgotten


def test_a_service_gone_from_the_api_is_unavailable() -> None:
    class GoneApi:
        def get(self, *args: object, **kwargs: object) -> dict[str, Any]:
            raise NotFound('services "web" not found')

    frontends = service_frontends(cast(KubeApi, GoneApi()))
    with pytest.raises(DataplaneUnavailable, match="'ns1/web' no longer exists"):
        frontends("ns1/web")


def test_the_real_kube_proxy_recording() -> None:
    # Recorded from the lab's kube-proxy (iptables-nft) in a node namespace: a backend of 2
    # pods scaled to 4, then to 1, beside 20 background services (tests/data/README.md).
    lines = (DATA / "nft-monitor-iptables-nft-kube-proxy.txt").read_text().splitlines()
    backend = "dpt-x/backend"
    history = RuleHistory(lambda service: [("10.135.204.153", 80)] if service == backend else [])
    commits = 0
    for line in lines:
        commits += line.startswith("# new generation")
        history.add("node0", line + "\n", 100.0 + commits)  # a commit at 100 + its number

    def programmed(endpoint: str, present: bool, since: float = 0.0) -> float | None:
        return history.programmed("node0", backend, endpoint, present=present, since=since)

    pods = [f"10.71.0.{i}:8080" for i in (2, 3, 4, 5)]
    assert [programmed(pod, True) for pod in pods] == [103.0, 103.0, 107.0, 107.0]
    # scaled to 1 after the fourth pod was in: two pods out at one sync, the third at the next
    assert programmed(pods[0], False, 108.0) == programmed(pods[3], False, 108.0) == 109.0
    assert programmed(pods[2], False, 108.0) == 111.0
    assert programmed(pods[1], False, 108.0) is None  # the one left
