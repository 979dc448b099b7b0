"""What the lab's per-change programming-latency sources share: one ``nft monitor`` per node
(started in the lab's cgroup, proven listening by a probe table of ours), the
:class:`Change` records of the test's EndpointSlice watch, and :func:`change_latencies`, which
turns a per-node history of commits into per-change latencies.

:mod:`.nftmon` (kube-proxy's nftables mode) and :mod:`.iptmon` (its iptables mode on the
nft backend) differ only in how they read the monitor's lines into that history.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from ....errors import DataplaneError, DataplaneUnavailable
from ....events import Event, now
from .. import _proc
from .process import child_setup

__all__ = [
    "LOST",
    "Change",
    "CommitHistory",
    "LossSpans",
    "MonitorLostEvents",
    "NftMonitorSource",
    "change_latencies",
]

log = logging.getLogger(__name__)

# A rule the monitor must report before it counts as listening (see _probe): a table of
# ours in the node's namespace, added and deleted at once. Neither kube-proxy nor
# iptables-nft ever touches a table of this name.
PROBE_TABLE: Final = "pytest_dataplane_probe"
_PROBE_ADD: Final = (
    f"add table ip {PROBE_TABLE}\n"
    f"add chain ip {PROBE_TABLE} c\n"
    f"add rule ip {PROBE_TABLE} c counter\n"
)
_PROBE_DELETE: Final = f"delete table ip {PROBE_TABLE}\n"
# How much earlier than the test's watch kube-proxy may commit a change (two watchers of one
# API server): commits earlier than this belong to an older change.
WATCH_SLACK: Final = 1.0
# What nft prints on a line of its own when the kernel dropped events (ENOBUFS) and it goes on
# (in text and JSON mode alike).
LOST: Final = "# ERROR: We lost some netlink events"


class MonitorLostEvents(DataplaneUnavailable):
    """The monitor of a node lost kernel events while a change was waiting to be committed:
    that change's exact programming latency is unknown."""


class LossSpans:
    """Per node: when its monitor's last line was read, and the spans of time in which its
    monitor lost kernel events (held under the owner's lock).

    A loss lies somewhere after the line read before the report. Its span ends at the report
    (``to_the_end=False``: each line stands alone, as nftmon's do) or never (``True``: the
    state rebuilt from the lines may be wrong from the loss on, as iptmon's is).
    """

    def __init__(self, *, to_the_end: bool) -> None:
        self._to_the_end = to_the_end
        self._spans: dict[str, list[tuple[float, float]]] = {}
        self._last: dict[str, float] = {}

    def line(self, node: str, at: float, *, lost: bool) -> None:
        """A line of ``node``'s monitor read at ``at``; ``lost``: it reports lost events."""
        previous = self._last.get(node, float("-inf"))
        self._last[node] = at
        if lost:
            self._spans.setdefault(node, []).append(
                (previous, float("inf") if self._to_the_end else at)
            )
            log.warning("nft monitor on %s lost kernel events (netlink buffer full)", node)

    def spans(self, node: str) -> list[tuple[float, float]]:
        return list(self._spans.get(node, ()))


@dataclass(frozen=True)
class Change:
    """An endpoint change as the test's watch saw it (``seen``: wall-clock seconds)."""

    service: str  # ns/name
    endpoint: str  # ip:port
    present: bool  # added (True) or removed
    seen: float


class CommitHistory(Protocol):
    """Per node: when kube-proxy's commits had an endpoint in or out of a service, and when
    the node's monitor lost events."""

    def programmed(
        self, node: str, service: str, endpoint: str, *, present: bool, since: float
    ) -> float | None:
        """The first commit at or after ``since`` on ``node`` where ``endpoint`` of
        ``service`` (``ns/name``) is (``present``) or is no longer programmed."""

    def losses(self, node: str) -> list[tuple[float, float]]:
        """The spans of time (start, end) in which ``node``'s monitor lost events."""


def change_latencies(
    history: CommitHistory, nodes: Sequence[str], changes: Sequence[Change], now_wall: float
) -> list[float]:
    """Per change (in the order seen) and node: seconds to the first commit that has the
    endpoint in (added) or out of (removed) its service.

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

            def first_commit(c: Change, node: str = node) -> float | None:
                return history.programmed(
                    node, c.service, c.endpoint, present=c.present, since=c.seen - WATCH_SLACK
                )

            at = first_commit(change)
            start, end = change.seen - WATCH_SLACK, now_wall if at is None else at
            lost = [span for span in history.losses(node) if span[1] >= start and span[0] < end]
            if lost:
                raise MonitorLostEvents(
                    f"the nft monitor on {node} lost kernel events (its netlink buffer "
                    f"overflowed) while the change of {change.endpoint} in {change.service} "
                    f"was waiting to be committed: its programming latency is unknown "
                    f"({len(lost)} loss(es), the first reported {lost[0][1] - change.seen:+.2f} s "
                    "from the change)"
                )
            if at is None and later is not None and first_commit(later) is not None:
                continue
            result.append(max(0.0, (now_wall if at is None else at) - change.seen))
    return result


class NftMonitorSource:
    """One ``nft monitor`` per node, read line by line into ``feed(node, line, wall_time)``
    until :meth:`close`; a :class:`~pytest_dataplane.providers.k8s.hooks.ProgrammingSource`
    once a subclass sets ``name`` and ``history``.

    The monitor runs in ``cgroup`` (the lab's own, not kube-proxy's), so its CPU is not
    counted as the dataplane's; it has a parent-death signal tied to its reader thread, which
    lives until :meth:`close`.
    """

    name: str = "nft monitor"
    history: CommitHistory

    def __init__(
        self,
        node_netns: Mapping[str, str],
        namespace: str,
        cgroup: Path | None,
        command: Sequence[str],
        feed: Callable[[str, str, float], None],
    ) -> None:
        self._namespace = namespace
        self._cgroup = cgroup
        self._command = list(command)
        self._feed = feed
        if cgroup is not None:
            cgroup.mkdir(parents=True, exist_ok=True)
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
                raise DataplaneError(f"cannot follow kube-proxy's commits on {node}: {cause}")

    def _follow(
        self, node: str, netns: str, started: threading.Event, errors: list[BaseException]
    ) -> None:
        # This thread starts the monitor and reads it until close(): the monitor's
        # parent-death signal fires when the forking thread ends.
        try:
            popen = subprocess.Popen(
                _proc.in_netns(netns, self._command),
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
                    if PROBE_TABLE in line:
                        started.set()
                    continue
                self._feed(node, line, time.time())
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
