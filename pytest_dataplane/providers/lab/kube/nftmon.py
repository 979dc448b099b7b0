"""Exact per-change programming latency of kube-proxy's nftables mode in the lab.

kube-proxy commits each service port's endpoints as one rule of its ``service-...`` chain in
table ``ip kube-proxy`` (a ``dnat`` through a ``numgen`` map of ``address . port``). The
kernel announces every committed rule to netlink listeners, so ``nft -j monitor rules`` in a
node's network namespace sees the moment a change reaches the dataplane, with no polling of
a 20,000-line ruleset. For each endpoint change the test's EndpointSlice watch saw, the
latency is from that moment to the first commit of the service's rule with (added) or
without (removed) the endpoint, on every node.

The monitor runs in the lab's own cgroup, not kube-proxy's, so its CPU is not counted as the
dataplane's; it has a parent-death signal tied to its reader thread, which lives until
:meth:`NftProgramming.close`.

When kube-proxy commits more at once than the monitor's netlink buffer holds (nft asks for
16 MiB; a full resync of a large ruleset can exceed it), the kernel drops events and the
monitor says so on a line of its own. A change whose span of time holds such a loss has no
exact figure (the commit that had it may be among the lost events): reading it raises
:class:`MonitorLostEvents` instead of reporting a later commit as its time.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from ._monitor import LOST as _LOST
from ._monitor import Change, LossSpans, MonitorLostEvents, NftMonitorSource, change_latencies

__all__ = [
    "Change",
    "MonitorLostEvents",
    "NftProgramming",
    "RuleHistory",
    "change_latencies",
    "parse_monitor_line",
]


TABLE: Final = "kube-proxy"


def _endpoints(expr: Sequence[Any]) -> frozenset[str] | None:
    """The ``address:port`` set of a service rule's ``dnat ... numgen ... map`` (None when the
    rule has no such map)."""
    for item in expr:
        dnat = item.get("dnat") if isinstance(item, Mapping) else None
        if not isinstance(dnat, Mapping):
            continue
        addr = dnat.get("addr")
        mapping = addr.get("map") if isinstance(addr, Mapping) else None
        if not isinstance(mapping, Mapping):
            continue
        entries = ((mapping.get("data") or {}).get("set")) or []
        found = set()
        for entry in entries:
            if not isinstance(entry, list) or len(entry) != 2:
                continue
            value = entry[1]
            concat = value.get("concat") if isinstance(value, Mapping) else None
            if isinstance(concat, list) and len(concat) == 2:
                found.add(f"{concat[0]}:{concat[1]}")
        return frozenset(found)
    return None


def parse_monitor_line(line: str) -> tuple[str, str, frozenset[str]] | None:
    """One line of ``nft -j monitor rules``: ``(verb, chain, endpoints)`` for a rule of a
    ``service-...`` chain of kube-proxy's table (a deleted rule has no endpoints left), None
    for anything else."""
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if not isinstance(message, dict) or len(message) != 1:
        return None
    verb, body = next(iter(message.items()))
    rule = body.get("rule") if isinstance(body, dict) else None
    if verb not in ("add", "delete") or not isinstance(rule, dict):
        return None
    chain = str(rule.get("chain") or "")
    if rule.get("table") != TABLE or not chain.startswith("service-"):
        return None
    if verb == "delete":
        return verb, chain, frozenset()
    endpoints = _endpoints(rule.get("expr") or [])
    return None if endpoints is None else (verb, chain, endpoints)


def service_port_of(chain: str) -> str:
    """``service-HASH-ns/name/tcp/port`` -> ``ns/name``."""
    parts = chain.split("-", 2)[-1].split("/")
    return "/".join(parts[:2])


# kube-proxy replaces a service's rule (delete, then add) in one transaction; a delete with
# an add of the same chain this soon after it is that replacement, not a chain left empty.
_REPLACEMENT: Final = 0.5


class RuleHistory:
    """Per node, per service chain: when its endpoint set changed, from the monitor's lines."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (time, endpoints, deleted) per (node, chain), in the monitor's order
        self._states: dict[tuple[str, str], list[tuple[float, frozenset[str], bool]]] = {}
        self._losses = LossSpans(to_the_end=False)

    def add(self, node: str, line: str, at: float) -> None:
        with self._lock:
            lost = line.startswith(_LOST)
            self._losses.line(node, at, lost=lost)
            if lost:
                return
        parsed = parse_monitor_line(line)
        if parsed is None:
            return
        verb, chain, endpoints = parsed
        with self._lock:
            self._states.setdefault((node, chain), []).append((at, endpoints, verb == "delete"))

    def losses(self, node: str) -> list[tuple[float, float]]:
        """The spans of time (start, end) in which ``node``'s monitor lost events."""
        with self._lock:
            return self._losses.spans(node)

    def programmed(
        self, node: str, service: str, endpoint: str, *, present: bool, since: float
    ) -> float | None:
        """The first commit at or after ``since`` on ``node`` where ``endpoint`` of
        ``service`` (``ns/name``) is (``present``) or is no longer in its rule."""
        with self._lock:
            chains = [
                list(states)
                for (where, chain), states in self._states.items()
                if where == node and service_port_of(chain) == service
            ]
        times = []
        for states in chains:
            for i, (at, endpoints, deleted) in enumerate(states):
                if at < since or (endpoint in endpoints) != present:
                    continue
                following = states[i + 1] if i + 1 < len(states) else None
                if deleted and following is not None and following[0] - at < _REPLACEMENT:
                    continue  # replaced in the same transaction: its add says what holds
                times.append(at)
                break
        return min(times) if times else None


class NftProgramming(NftMonitorSource):
    """:class:`~pytest_dataplane.providers.k8s.hooks.ProgrammingSource` for the lab's
    nftables mode: one ``nft -j monitor rules`` per node (see the module's docstring)."""

    name = "nft monitor of kube-proxy's commits (per change, per node)"

    def __init__(self, node_netns: Mapping[str, str], namespace: str, cgroup: Path | None) -> None:
        self.history = RuleHistory()
        super().__init__(
            node_netns, namespace, cgroup, ["nft", "-j", "monitor", "rules"], self.history.add
        )
