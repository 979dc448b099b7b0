"""Exact per-change programming latency of kube-proxy's iptables mode on the nft backend.

kube-proxy writes its iptables rules with ``iptables-nft-restore``, which commits each table
as one nftables transaction, so the kernel announces every rule of the ``ip nat`` table to
netlink listeners. ``nft -a monitor`` in a node's network namespace prints them, and this
module rebuilds, per node and per commit, which endpoints each service port's cluster IP
leads to:

- a ``KUBE-SERVICES`` rule ``ip daddr <cluster IP> ... dport <port> ... jump KUBE-SVC-X``
  (``KUBE-SVL-X`` with internalTrafficPolicy=Local) names the service port's chain; without
  one (kube-proxy drops it when the last endpoint goes) the port has no endpoints;
- that chain's ``jump KUBE-SEP-Y`` rules name the endpoint chains;
- each ``KUBE-SEP-Y`` chain's ``dnat to ip:port`` rule is the endpoint.

Why the text monitor and not ``nft -j monitor`` (recorded side by side, tests/data/README.md):
in JSON nft 1.0.6 prints iptables-nft's DNAT as an opaque ``{"xt": {"type": "target", "name":
"DNAT"}}`` (no address) and prints no commit boundaries; the text form translates DNAT to
``dnat to 10.244.1.2:8080``, ends each rule it adds with ``# handle N`` (deletes name the
handle) and closes each transaction with ``# new generation N by process P (...)``. A state is
therefore only ever read at a real commit: a chain kube-proxy flushes and refills in one
transaction never reads as empty. The kernel sends a transaction's events in one burst at its
commit, so a commit's time is when the burst's first line was read. Text output reaches the
reader line by line (nft flushes each event; checked through a pipe). ``xtables-monitor``
is not used: iptables 1.8.9's exits when a large commit overflows its netlink buffer.

kube-proxy rewrites ``KUBE-SERVICES`` on every sync but a service's own chains only when the
service or its endpoints change, so the monitor must be running before the services it is
asked about are created (with the cluster). A service's cluster IPs and ports come from
``frontends``, a callable backed by the API (:func:`service_frontends`).

The lab provider does not use this module yet: in the one main job that had it running, the
iptables figures it would measure moved out of the range of ten runs without it (README, "The
dataplanes"); kube-proxy rewrites ``KUBE-SERVICES`` on every sync, about 4,000 lines at 2,000
services for nft to format and for the reader to parse on the same cores.

When the kernel drops events (nft prints ``# ERROR: We lost some netlink events!``), the
rebuilt rules may miss a rule from then on, for as long as kube-proxy leaves that chain
alone; unlike kube-proxy's nftables mode, no later rule restores a whole service. So every
change still waiting at or after a loss raises :class:`MonitorLostEvents`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ....errors import DataplaneError, DataplaneUnavailable
from ....events import Event
from ...k8s import resources
from ...k8s.api import KubeApi, NotFound
from ._monitor import (
    LOST,
    Change,
    LossSpans,
    MonitorLostEvents,
    NftMonitorSource,
    change_latencies,
)

__all__ = [
    "Change",
    "Frontends",
    "IptProgramming",
    "MonitorLostEvents",
    "NatEvent",
    "NatRules",
    "Rule",
    "RuleHistory",
    "change_latencies",
    "parse_monitor_line",
    "service_frontends",
]

log = logging.getLogger(__name__)

Frontends = Callable[[str], Iterable[tuple[str, int]]]
"""``ns/name`` -> the service's (cluster IP, port) pairs, as its Service object says."""

SERVICES: Final = "KUBE-SERVICES"
# The chains whose rules say where a cluster IP leads (KUBE-EXT/KUBE-FW and the rest name
# no endpoint, so their many events are skipped before any regular expression runs).
_WATCHED: Final = (SERVICES, "KUBE-SVC-", "KUBE-SVL-", "KUBE-SEP-")

# nft's text: `add rule ip nat CHAIN <statement> # handle N`; a mid-line `handle N` may
# appear after the chain (nft's rendering of iptables-nft's rule position), hence the anchor
# on the trailing comment.
_ADD: Final = re.compile(r"^add rule (ip6?) nat (\S+) (.*) # handle (\d+)$")
_DELETE_RULE: Final = re.compile(r"^delete rule (ip6?) nat (\S+) handle (\d+)$")
_DELETE_CHAIN: Final = re.compile(r"^delete chain (ip6?) nat (\S+)")
_DELETE_TABLE: Final = re.compile(r"^delete table (ip6?) nat\b")
_DADDR: Final = re.compile(r"\bip6? daddr (\S+)")
_DPORT: Final = re.compile(r"\b(?:tcp|udp|sctp) dport (\d+)\b")
_JUMP: Final = re.compile(r"\bjump (\S+)")
_DNAT: Final = re.compile(r"\bdnat (?:ip6? )?to (\S+)")
# How nft prints an xt target it cannot translate (nft built without libxtables): then no
# endpoint can be read from a KUBE-SEP chain.
_OPAQUE_DNAT: Final = re.compile(r"\bxt target \"?DNAT\b")
_GENERATION: Final = "# new generation "


@dataclass(frozen=True)
class Rule:
    """What one nat rule says about where traffic goes (None: it does not say)."""

    daddr: str | None = None
    dport: int | None = None
    jump: str | None = None
    dnat: str | None = None
    opaque_dnat: bool = False  # a DNAT this nft prints without its address


@dataclass(frozen=True)
class NatEvent:
    """One line of ``nft -a monitor`` that matters here.

    ``verb``: ``add`` (a rule), ``delete`` (a rule), ``delete-chain``, ``delete-table``,
    ``commit`` (the end of a transaction) or ``lost`` (the kernel dropped events).
    """

    verb: str
    family: str = ""
    chain: str = ""
    handle: int = 0
    rule: Rule | None = None


def _watched(chain: str) -> bool:
    return chain == SERVICES or chain.startswith(_WATCHED[1:])


def parse_monitor_line(line: str) -> NatEvent | None:
    """One line of ``nft -a monitor`` (no object filter, so that commits are printed): the
    event it is for kube-proxy's service chains of the ``nat`` table, None for anything
    else."""
    line = line.rstrip("\n")
    if line.startswith(_GENERATION):
        return NatEvent("commit")
    if line.startswith(LOST):
        return NatEvent("lost")
    words = line.split(" ", 5)
    if len(words) < 5 or words[3] != "nat":
        return None
    if words[1] in ("rule", "chain") and not _watched(words[4]):
        return None  # the cheap test first: most rules of a large sync are elsewhere
    if line.startswith("add rule "):
        added = _ADD.match(line)
        if added is None:
            return None
        body = added[3]
        daddr, dport = _DADDR.search(body), _DPORT.search(body)
        jump, dnat = _JUMP.search(body), _DNAT.search(body)
        rule = Rule(
            daddr=daddr[1] if daddr else None,
            dport=int(dport[1]) if dport else None,
            jump=jump[1] if jump else None,
            dnat=dnat[1] if dnat else None,
            opaque_dnat=dnat is None and _OPAQUE_DNAT.search(body) is not None,
        )
        return NatEvent("add", added[1], added[2], int(added[4]), rule)
    if line.startswith("delete rule "):
        deleted = _DELETE_RULE.match(line)
        if deleted is None:
            return None
        return NatEvent("delete", deleted[1], deleted[2], int(deleted[3]))
    if line.startswith("delete chain "):
        chain = _DELETE_CHAIN.match(line)
        if chain is None:
            return None
        return NatEvent("delete-chain", chain[1], chain[2])
    table = _DELETE_TABLE.match(line)
    return None if table is None else NatEvent("delete-table", table[1])


Endpoints = dict[tuple[str, int], frozenset[str]]


@dataclass
class NatRules:
    """The service chains of one node's ``ip``/``ip6 nat`` tables, as the events so far
    built them: per (family, chain), rule handle -> rule."""

    chains: dict[tuple[str, str], dict[int, Rule]] = field(default_factory=dict)

    def apply(self, event: NatEvent) -> None:
        """Take in one rule or chain event (commits and losses are the caller's)."""
        key = (event.family, event.chain)
        if event.verb == "add" and event.rule is not None:
            self.chains.setdefault(key, {})[event.handle] = event.rule
        elif event.verb == "delete":
            # A rule added before the monitor started is not known: nothing to drop.
            self.chains.get(key, {}).pop(event.handle, None)
        elif event.verb == "delete-chain":
            self.chains.pop(key, None)
        elif event.verb == "delete-table":
            for family, chain in list(self.chains):
                if family == event.family:
                    del self.chains[(family, chain)]

    def endpoints(self) -> Endpoints:
        """(cluster IP, port) -> the ``ip:port`` endpoints its rules lead to, for every
        service port that ``KUBE-SERVICES`` sends to a service chain."""
        result: dict[tuple[str, int], set[str]] = {}
        for family in {family for family, _ in self.chains}:
            for rule in self.chains.get((family, SERVICES), {}).values():
                target = rule.jump or ""
                if rule.daddr is None or rule.dport is None:
                    continue
                if not target.startswith(("KUBE-SVC-", "KUBE-SVL-")):
                    continue  # external IPs and load balancers go through KUBE-EXT chains
                found = result.setdefault((rule.daddr, rule.dport), set())
                for jump in self.chains.get((family, target), {}).values():
                    if not (jump.jump or "").startswith("KUBE-SEP-"):
                        continue  # e.g. the KUBE-MARK-MASQ rule for traffic from off-cluster
                    for sep in self.chains.get((family, jump.jump or ""), {}).values():
                        if sep.dnat is not None:
                            found.add(sep.dnat)
        return {frontend: frozenset(eps) for frontend, eps in result.items()}


class RuleHistory:
    """Per node and (cluster IP, port): the endpoint sets kube-proxy's commits gave it, from
    the monitor's lines; a :class:`~._monitor.CommitHistory` once it knows a service's
    cluster IPs and ports through ``frontends``."""

    def __init__(self, frontends: Frontends) -> None:
        self._frontends = frontends
        self._known: dict[str, frozenset[tuple[str, int]]] = {}
        self._lock = threading.Lock()
        self._rules: dict[str, NatRules] = {}
        self._current: dict[str, Endpoints] = {}
        # Whether a node's nat events since its last commit changed anything
        self._dirty: dict[str, bool] = {}
        # (commit time, endpoints) per (node, frontend), recorded when the set changes
        self._states: dict[tuple[str, tuple[str, int]], list[tuple[float, frozenset[str]]]] = {}
        self._losses = LossSpans(to_the_end=True)
        self._opaque: set[str] = set()
        # Per node: when the first line of the transaction being read was read
        self._begun: dict[str, float] = {}

    def add(self, node: str, line: str, at: float) -> None:
        """Take in one monitor line of ``node``, read at wall-clock time ``at``."""
        event = parse_monitor_line(line)
        with self._lock:
            self._losses.line(node, at, lost=event is not None and event.verb == "lost")
            # The kernel sends a transaction's events at its commit, in one burst that ends
            # with the generation line: the burst's first line is read closest to the commit
            # (its last one, after thousands of lines on a large sync, much later).
            begun = self._begun.setdefault(node, at)
            if event is not None and event.verb == "commit":
                del self._begun[node]
            if event is None:
                return
            if event.verb == "lost":
                # The rebuilt rules may be wrong from then on (see the module's docstring).
                return
            if event.verb == "commit":
                if self._dirty.pop(node, False):
                    self._commit(node, begun)
                return
            if event.rule is not None and event.rule.opaque_dnat and node not in self._opaque:
                self._opaque.add(node)
                log.warning("nft on %s prints iptables-nft's DNAT without its address", node)
            self._rules.setdefault(node, NatRules()).apply(event)
            self._dirty[node] = True

    def _commit(self, node: str, at: float) -> None:
        # The state at a commit; a frontend whose KUBE-SERVICES rule is gone has no endpoints.
        now_ = self._rules[node].endpoints()
        before = self._current.get(node, {})
        for frontend in before.keys() | now_.keys():
            endpoints = now_.get(frontend, frozenset())
            if frontend not in before or before[frontend] != endpoints:
                self._states.setdefault((node, frontend), []).append((at, endpoints))
        self._current[node] = now_

    def losses(self, node: str) -> list[tuple[float, float]]:
        """The spans of time (start, end) in which ``node``'s monitor lost events (a loss
        spoils the history to the end: the end is infinite)."""
        with self._lock:
            return self._losses.spans(node)

    def forget_frontends(self) -> None:
        """Ask ``frontends`` again: the tests of one cluster reuse service names, and a Service
        made again under an old name has a new cluster IP."""
        with self._lock:
            self._known.clear()

    def frontends(self, service: str) -> frozenset[tuple[str, int]]:
        """The (cluster IP, port) pairs of ``service`` (``ns/name``), asked once until
        :meth:`forget_frontends`."""
        known = self._known.get(service)
        if known is None:
            known = frozenset((str(ip), int(port)) for ip, port in self._frontends(service))
            if not known:
                raise DataplaneError(
                    f"service {service!r} has no cluster IP and port to follow in kube-proxy's "
                    "iptables rules (a headless service is not programmed by kube-proxy)"
                )
            self._known[service] = known
        return known

    def programmed(
        self, node: str, service: str, endpoint: str, *, present: bool, since: float
    ) -> float | None:
        """The first commit at or after ``since`` on ``node`` where ``endpoint`` (``ip:port``)
        is (``present``) or is no longer behind a cluster IP and port of ``service``."""
        frontends = self.frontends(service)
        with self._lock:
            if node in self._opaque:
                raise DataplaneError(
                    f"the nft in {node}'s namespace prints iptables-nft's DNAT targets as "
                    "'xt target DNAT', without the endpoint: kube-proxy's iptables rules "
                    "cannot be followed there (nft must be built with libxtables, as "
                    "Debian's is)"
                )
            histories = [list(self._states.get((node, frontend), ())) for frontend in frontends]
        times = [
            next(
                (at for at, eps in states if at >= since and (endpoint in eps) == present),
                None,
            )
            for states in histories
        ]
        found = [at for at in times if at is not None]
        return min(found) if found else None


class IptProgramming(NftMonitorSource):
    """:class:`~pytest_dataplane.providers.k8s.hooks.ProgrammingSource` for the lab's
    iptables mode on the nft backend: one ``nft -a monitor`` per node (see the module's
    docstring). ``frontends`` gives a service's (cluster IP, port) pairs; it is asked from
    :meth:`latencies`, once per service."""

    name = "nft monitor of kube-proxy's iptables-nft commits (per change, per node)"
    history: RuleHistory

    def __init__(
        self,
        node_netns: Mapping[str, str],
        namespace: str,
        cgroup: Path | None,
        frontends: Frontends,
    ) -> None:
        self.history = RuleHistory(frontends)
        super().__init__(node_netns, namespace, cgroup, ["nft", "-a", "monitor"], self.history.add)

    def latencies(self, changes: Sequence[Event]) -> list[float]:
        """As :meth:`NftMonitorSource.latencies`, with each service's cluster IPs read anew
        (the Service of a name may have been made again since the last reading)."""
        self.history.forget_frontends()
        return super().latencies(changes)


def service_frontends(api: KubeApi) -> Frontends:
    """:data:`Frontends` from the API: each cluster IP (both families on a dual-stack
    service) with each port of the Service ``ns/name``."""

    def frontends(service: str) -> list[tuple[str, int]]:
        namespace, _, name = service.partition("/")
        try:
            svc = api.get("v1", "Service", name, namespace)
        except NotFound as exc:
            raise DataplaneUnavailable(
                f"service {service!r} no longer exists: its cluster IP, by which its "
                "iptables rules are followed, is unknown"
            ) from exc
        spec = svc.get("spec") or {}
        addresses = resources.cluster_ips(svc)
        ports = [int(port["port"]) for port in spec.get("ports") or [] if port.get("port")]
        return [(address, port) for address in sorted(addresses) for port in ports]

    return frontends
