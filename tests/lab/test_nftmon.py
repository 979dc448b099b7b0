"""Exact programming latency of the lab's nftables mode, from ``nft -j monitor`` lines (no
root: the lines were recorded from the real kube-proxy, see tests/data/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_dataplane.providers.lab.kube.nftmon import (
    Change,
    MonitorLostEvents,
    RuleHistory,
    change_latencies,
    parse_monitor_line,
    service_port_of,
)

LINES = (Path(__file__).parent.parent / "data" / "nft-monitor-kube-proxy.jsonl").read_text()
CHAIN = "service-GNAJEGMH-dpt-dpl122081/backend/tcp/http"
SERVICE = "dpt-dpl122081/backend"


def recorded() -> list[str]:
    return [line for line in LINES.splitlines() if line.strip()]


def test_service_rules_give_their_endpoints() -> None:
    parsed = [parse_monitor_line(line) for line in recorded()]
    assert parsed[0] == ("add", CHAIN, frozenset({"10.100.0.2:8080", "10.100.0.3:8080"}))
    assert parsed[1] == ("delete", CHAIN, frozenset())
    assert parsed[-1] == (
        "add",
        CHAIN,
        frozenset({"10.100.0.2:8080", "10.100.0.3:8080", "10.100.0.4:8080"}),
    )
    assert service_port_of(CHAIN) == SERVICE


def test_other_lines_are_not_service_rules() -> None:
    other_table = {"add": {"rule": {"table": "filter", "chain": "service-x", "expr": []}}}
    not_a_service = {"add": {"rule": {"table": "kube-proxy", "chain": "services", "expr": []}}}
    for line in ("", "not json", json.dumps(other_table), json.dumps(not_a_service)):
        assert parse_monitor_line(line) is None


def history(times: list[float], lines: list[str]) -> RuleHistory:
    result = RuleHistory()
    for at, line in zip(times, lines, strict=True):
        result.add("node0", line, at)
    return result


def test_an_endpoint_is_programmed_when_the_rule_with_it_is_committed() -> None:
    lines = recorded()
    rules = history([101.0, 102.6, 102.6, 103.7, 103.7], lines)
    # the third replica, seen by the test's watch at 103.0, committed at 103.7
    assert (
        rules.programmed("node0", SERVICE, "10.100.0.4:8080", present=True, since=103.0 - 1.0)
        == 103.7
    )
    # a replaced rule (delete and add in one transaction) never reads as an empty chain
    assert rules.programmed("node0", SERVICE, "10.100.0.2:8080", present=False, since=0) is None
    # not on another node, not for another service
    assert rules.programmed("node1", SERVICE, "10.100.0.4:8080", present=True, since=0) is None
    assert (
        rules.programmed("node0", "dpt-x/other", "10.100.0.4:8080", present=True, since=0) is None
    )


def test_a_removed_endpoint_is_programmed_when_a_rule_without_it_is_committed() -> None:
    lines = recorded()
    three = lines[-1]
    one = three.replace('[0, {"concat": ["10.100.0.2", 8080]}], ', "").replace(
        '"mod": 3', '"mod": 2'
    )
    assert parse_monitor_line(one) is not None
    assert "10.100.0.2:8080" not in parse_monitor_line(one)[2]  # type: ignore[index]
    delete = lines[1]
    rules = history([10.0, 12.0, 12.0, 15.0], [three, delete, one, delete])
    assert rules.programmed("node0", SERVICE, "10.100.0.2:8080", present=False, since=11.0) == 12.0
    # the last delete, with no add after it, is the chain left without endpoints
    assert rules.programmed("node0", SERVICE, "10.100.0.3:8080", present=False, since=13.0) == 15.0


def rule(*endpoints: str) -> str:
    """A monitor line of the backend's service rule with these endpoints."""
    entries = [
        [i, {"concat": [e.split(":")[0], int(e.split(":")[1])]}] for i, e in enumerate(endpoints)
    ]
    dnat = {
        "family": "ip",
        "addr": {"map": {"key": {"numgen": {"mode": "random"}}, "data": {"set": entries}}},
    }
    return json.dumps(
        {"add": {"rule": {"table": "kube-proxy", "chain": CHAIN, "expr": [{"dnat": dnat}]}}}
    )


def test_a_change_kube_proxy_coalesced_away_is_left_out() -> None:
    # Recorded on the lab (2,000 background services): .5 was added by a scale-up and removed
    # by the rollout before any sync had it; the rule went from .2-.4 to .2, .4, .8-.10.
    rules = history(
        [100.0, 103.0],
        [
            rule("10.75.0.2:80", "10.75.0.3:80", "10.75.0.4:80"),
            rule("10.75.0.2:80", "10.75.0.4:80", "10.75.0.8:80"),
        ],
    )
    changes = [
        Change(SERVICE, "10.75.0.5:80", True, 101.5),  # added: never committed
        Change(SERVICE, "10.75.0.8:80", True, 102.0),  # added: committed at 103.0
        Change(SERVICE, "10.75.0.5:80", False, 102.2),  # removed: out of the rule at 103.0
        Change(SERVICE, "10.75.0.3:80", False, 102.5),  # removed: committed at 103.0
    ]
    assert change_latencies(rules, ["node0"], changes, now_wall=110.0) == pytest.approx(
        [1.0, 0.8, 0.5]
    )
    # Not superseded and not committed: the time since it was seen, a lower bound.
    waiting = [Change(SERVICE, "10.75.0.9:80", True, 104.0)]
    assert change_latencies(rules, ["node0"], waiting, now_wall=110.0) == [6.0]


LOST = "# ERROR: We lost some netlink events!"


def test_lost_events_make_the_changes_waiting_then_unknown() -> None:
    # nft prints LOST (not JSON) when the kernel dropped events; the commit that had a change
    # may be among them, so a later commit must not be reported as its time.
    rules = history(
        [100.0, 104.0, 106.0],
        [
            rule("10.75.0.2:80", "10.75.0.3:80"),
            LOST,
            rule("10.75.0.2:80", "10.75.0.3:80", "10.75.0.4:80"),
        ],
    )
    assert rules.losses("node0") == [(100.0, 104.0)]
    assert rules.losses("node1") == []
    added = [Change(SERVICE, "10.75.0.4:80", True, 102.0)]
    with pytest.raises(MonitorLostEvents, match=r"node0 lost kernel events.*10\.75\.0\.4:80"):
        change_latencies(rules, ["node0"], added, now_wall=110.0)
    # A change not committed yet is unknown too when events were lost after it was seen.
    waiting = [Change(SERVICE, "10.75.0.9:80", True, 103.0)]
    with pytest.raises(MonitorLostEvents):
        change_latencies(rules, ["node0"], waiting, now_wall=110.0)
    # A change seen after the loss, or committed before it, keeps its exact figure.
    after = [Change(SERVICE, "10.75.0.4:80", True, 105.5)]
    assert change_latencies(rules, ["node0"], after, now_wall=110.0) == pytest.approx([0.5])
    before = history(
        [100.0, 101.0, 104.0],
        [rule("10.75.0.2:80"), rule("10.75.0.2:80", "10.75.0.4:80"), LOST],
    )
    early = [Change(SERVICE, "10.75.0.4:80", True, 100.8)]
    assert change_latencies(before, ["node0"], early, now_wall=110.0) == pytest.approx([0.2])
