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

import contextlib
import json
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ....errors import DataplaneError, DataplaneUnavailable
from ....events import Event, now
from .. import _proc
from .process import child_setup

__all__ = [
    "Change",
    "MonitorLostEvents",
    "NftProgramming",
    "RuleHistory",
    "change_latencies",
    "parse_monitor_line",
]

log = logging.getLogger(__name__)

TABLE: Final = "kube-proxy"
# A rule the monitor must report before it counts as listening (see _ready): a table of
# ours in the node's namespace, added and deleted at once.
_PROBE_TABLE: Final = "pytest_dataplane_probe"
_PROBE_ADD: Final = (
    f"add table ip {_PROBE_TABLE}\n"
    f"add chain ip {_PROBE_TABLE} c\n"
    f"add rule ip {_PROBE_TABLE} c counter\n"
)
_PROBE_DELETE: Final = f"delete table ip {_PROBE_TABLE}\n"
# How much earlier than the test's watch kube-proxy may commit a change (two watchers of one
# API server): commits earlier than this belong to an older change.
_WATCH_SLACK: Final = 1.0


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


# What nft prints on a line of its own when the kernel dropped events (ENOBUFS) and it goes on.
_LOST: Final = "# ERROR: We lost some netlink events"


class MonitorLostEvents(DataplaneUnavailable):
    """The monitor of a node lost kernel events while a change was waiting to be committed:
    that change's exact programming latency is unknown."""


# kube-proxy replaces a service's rule (delete, then add) in one transaction; a delete with
# an add of the same chain this soon after it is that replacement, not a chain left empty.
_REPLACEMENT: Final = 0.5


class RuleHistory:
    """Per node, per service chain: when its endpoint set changed, from the monitor's lines."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (time, endpoints, deleted) per (node, chain), in the monitor's order
        self._states: dict[tuple[str, str], list[tuple[float, frozenset[str], bool]]] = {}
        # Per node: spans (after the line before, up to the report) in which events were lost.
        self._losses: dict[str, list[tuple[float, float]]] = {}
        self._last: dict[str, float] = {}

    def add(self, node: str, line: str, at: float) -> None:
        with self._lock:
            previous = self._last.get(node, float("-inf"))
            self._last[node] = at
            if line.startswith(_LOST):
                # Lost somewhere after the line read before this one.
                self._losses.setdefault(node, []).append((previous, at))
                log.warning("nft monitor on %s lost kernel events (netlink buffer full)", node)
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
            return list(self._losses.get(node, ()))

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


@dataclass(frozen=True)
class Change:
    """An endpoint change as the test's watch saw it (``seen``: wall-clock seconds)."""

    service: str  # ns/name
    endpoint: str  # ip:port
    present: bool  # added (True) or removed
    seen: float


def change_latencies(
    history: RuleHistory, nodes: Sequence[str], changes: Sequence[Change], now_wall: float
) -> list[float]:
    """Per change (in the order seen) and node: seconds to the first commit that has the
    endpoint in (added) or out of (removed) its service's rule.

    A change no commit reflected before a later change of the same endpoint was committed
    is left out: kube-proxy coalesced it (an endpoint added and removed again between two
    syncs is never programmed), as its own SLI measures from the newest trigger time. A change
    not committed yet, and not superseded, counts as the time since it was seen: a lower
    bound, so that a dataplane that never programs it cannot pass.

    Raises :class:`MonitorLostEvents` when a node's monitor lost events between a change
    being seen and the commit found for it (or now, when none is): the first commit that had
    it may be among them.
    """
    result: list[float] = []
    for i, change in enumerate(changes):
        later = next(
            (
                c
                for c in changes[i + 1 :]
                if (c.service, c.endpoint) == (change.service, change.endpoint)
            ),
            None,
        )
        for node in nodes:
            at = history.programmed(
                node,
                change.service,
                change.endpoint,
                present=change.present,
                since=change.seen - _WATCH_SLACK,
            )
            start, end = change.seen - _WATCH_SLACK, now_wall if at is None else at
            lost = [span for span in history.losses(node) if span[1] >= start and span[0] < end]
            if lost:
                raise MonitorLostEvents(
                    f"the nft monitor on {node} lost kernel events (its netlink buffer "
                    f"overflowed) while the change of {change.endpoint} in {change.service} "
                    f"was waiting to be committed: its programming latency is unknown "
                    f"({len(lost)} loss(es), the first reported {lost[0][1] - change.seen:+.2f} s "
                    "from the change)"
                )
            if at is None and later is not None:
                superseded = history.programmed(
                    node,
                    later.service,
                    later.endpoint,
                    present=later.present,
                    since=later.seen - _WATCH_SLACK,
                )
                if superseded is not None:
                    continue
            result.append(max(0.0, (now_wall if at is None else at) - change.seen))
    return result


class NftProgramming:
    """:class:`~pytest_dataplane.providers.k8s.hooks.ProgrammingSource` for the lab's
    nftables mode: one ``nft -j monitor rules`` per node (see the module's docstring)."""

    name = "nft monitor of kube-proxy's commits (per change, per node)"

    def __init__(self, node_netns: Mapping[str, str], namespace: str, cgroup: Path | None) -> None:
        self._namespace = namespace
        self._cgroup = cgroup
        if cgroup is not None:
            cgroup.mkdir(parents=True, exist_ok=True)
        self.history = RuleHistory()
        self._stop = threading.Event()
        self._popens: dict[str, subprocess.Popen[str]] = {}
        self._threads: list[threading.Thread] = []
        self._nodes = dict(node_netns)
        ready = []
        for node, netns in self._nodes.items():
            started = threading.Event()
            errors: list[BaseException] = []
            thread = threading.Thread(
                target=self._follow,
                args=(node, netns, started, errors),
                name=f"lab-nft-monitor-{node}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
            ready.append((node, started, errors))
        for node, started, errors in ready:
            if not started.wait(30.0) or errors:
                self.close()
                cause = errors[0] if errors else "no answer in 30 s"
                raise DataplaneError(f"cannot follow kube-proxy's nftables on {node}: {cause}")

    def _follow(
        self, node: str, netns: str, started: threading.Event, errors: list[BaseException]
    ) -> None:
        # This thread starts the monitor and reads it until close(): the monitor's
        # parent-death signal fires when the forking thread ends.
        try:
            popen = subprocess.Popen(
                _proc.in_netns(netns, ["nft", "-j", "monitor", "rules"]),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                bufsize=1,
                start_new_session=True,
                preexec_fn=child_setup(self._cgroup, signal.SIGKILL),  # noqa: PLW1509 - our own long-lived thread
            )
        except OSError as exc:
            errors.append(exc)
            started.set()
            return
        self._popens[node] = popen
        stdout = popen.stdout
        if stdout is None:  # for the type checker: stdout=PIPE
            errors.append(DataplaneError("nft monitor has no output"))
            started.set()
            return
        probing = threading.Thread(
            target=self._probe, args=(netns, started), name=f"lab-nft-probe-{node}", daemon=True
        )
        probing.start()
        try:
            # Listening once it reports a rule of our own probe table.
            for line in stdout:
                if not started.is_set():
                    if _PROBE_TABLE in line:
                        started.set()
                    continue
                self.history.add(node, line, time.time())
        except Exception as exc:  # the monitor is the latency source: say why it stopped
            errors.append(exc)
            if not self._stop.is_set():
                log.warning("nft monitor on %s stopped: %s", node, exc)
        finally:
            started.set()
            with contextlib.suppress(ProcessLookupError):
                popen.kill()
            popen.wait()
            stdout.close()

    def _probe(self, netns: str, started: threading.Event) -> None:
        # The monitor subscribes some time after it starts: commit the probe table until it
        # has reported one (the reader sets ``started``).
        deadline = time.monotonic() + 30.0
        while not started.is_set() and time.monotonic() < deadline:
            _proc.run(["nft", "-f", "-"], netns=netns, input=_PROBE_ADD, check=False)
            started.wait(0.2)
        _proc.run(["nft", "-f", "-"], netns=netns, input=_PROBE_DELETE, check=False)

    def latencies(self, changes: Sequence[Event]) -> list[float]:
        """Per change and node: seconds from the test's watch seeing it to kube-proxy's
        commit of it (see :func:`change_latencies`)."""
        offset = time.time() - now()  # monotonic event times to wall time
        wanted = [
            Change(
                f"{self._namespace}/{event.detail.get('service')}",
                str(event.detail.get("endpoint")),
                event.name == "endpoint-added",
                event.time + offset,
            )
            for event in changes
        ]
        return change_latencies(self.history, list(self._nodes), wanted, time.time())

    def close(self) -> None:
        """Stop every monitor and reap it."""
        self._stop.set()
        for popen in list(self._popens.values()):
            with contextlib.suppress(ProcessLookupError):
                popen.kill()
        for thread in self._threads:
            thread.join(10)
        if self._cgroup is not None:
            with contextlib.suppress(OSError):
                self._cgroup.rmdir()
