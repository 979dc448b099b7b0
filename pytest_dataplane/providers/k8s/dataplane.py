"""The dataplane's agent on a Kubernetes cluster (kube-proxy, or cilium-agent for ebpf): which
pods it runs in, and the CPU it spends, sampled once per interval.

Where the CPU counters come from is a :class:`CpuSource`: on kind and an existing cluster the
dataplane containers' cgroups, found on each node from the pods' container ids
(:class:`PodCpuSource`); the lab reads the cgroups of its own processes directly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ...events import now
from .metrics import (
    cgroup_find_script,
    cgroup_read_script,
    container_id,
    cpu_unavailable_reason,
    parse_cgroup_find,
    parse_cgroup_read,
)
from .nodes import NodeAccess

__all__ = ["CpuReading", "CpuSampler", "CpuSource", "DataplanePods", "PodCpuSource"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataplanePods:
    """Where the dataplane's agent runs: kube-proxy, or cilium-agent for ebpf."""

    label_selector: str
    container: str
    cli: str | None = None  # the Cilium debug CLI inside the container, for ebpf

    @classmethod
    def for_dataplane(cls, dataplane: str, cilium_cli: str | None = None) -> DataplanePods:
        """kube-proxy for the kube-proxy modes, the Cilium agent for ebpf."""
        if dataplane == "ebpf":
            return cls("k8s-app=cilium", "cilium-agent", cilium_cli or "cilium-dbg")
        return cls("k8s-app=kube-proxy", "kube-proxy")


@dataclass(frozen=True)
class CpuReading:
    """Cumulative CPU counters (seconds) keyed by where they were read (node and cgroup),
    and why the dataplane's CPU cannot be read in full (None when it can)."""

    counters: dict[str, float]
    unavailable: str | None = None


class CpuSource(Protocol):
    """Reads the dataplane's cumulative CPU counters."""

    def read(self) -> CpuReading:
        """The counters now; a counter that restarts from zero is a restarted process."""


@dataclass
class PodCpuSource:
    """The dataplane containers' cgroups on each node: ``pods`` lists the dataplane agent's
    pods (their container ids say which cgroups to read); the counters are read on each node
    through ``nodes``."""

    nodes: NodeAccess
    dataplane: DataplanePods
    pods: Callable[[], list[dict[str, Any]]]
    _paths: dict[str, dict[str, str]] = field(default_factory=dict)  # node -> id -> cgroup

    def _resolve(self) -> dict[str, list[str]]:
        wanted: dict[str, list[str]] = {}
        for pod in self.pods():
            node = pod.get("spec", {}).get("nodeName")
            for status in pod.get("status", {}).get("containerStatuses") or []:
                if status.get("name") == self.dataplane.container and status.get("containerID"):
                    wanted.setdefault(node, []).append(container_id(status["containerID"]))
        return wanted

    def read(self) -> CpuReading:
        nodes = self.nodes
        wanted = self._resolve()
        counters: dict[str, float] = {}
        problems: list[str] = []
        if not wanted:
            pods = self.dataplane
            problems.append(
                f"no running {pods.container} container found (pods {pods.label_selector} "
                "in kube-system)"
            )
        for node, ids in wanted.items():
            known = self._paths.setdefault(node, {})
            missing = [cid for cid in ids if cid not in known]
            if missing:
                known.update(parse_cgroup_find(nodes.run(node, cgroup_find_script(missing))))
            problems += [cpu_unavailable_reason(node, cid) for cid in ids if cid not in known]
            paths = [known[cid] for cid in ids if cid in known]
            if not paths:
                continue
            for path, value in parse_cgroup_read(
                nodes.run(node, cgroup_read_script(paths))
            ).items():
                if value is not None:
                    counters[f"{node}:{path}"] = value
        return CpuReading(counters, "; ".join(problems) or None)


@dataclass
class CpuSampler:
    """Samples the dataplane's cumulative CPU from ``source`` once per interval, summing
    the increments of every counter (a counter that went down restarted from zero)."""

    source: CpuSource
    interval: float = 1.0
    samples: list[tuple[float, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _last: dict[str, float] = field(default_factory=dict)
    unavailable: str | None = None
    _total: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sample_lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Sample in a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="dataplane-cpu", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling (waits for the thread to end)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 30.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                log.warning("CPU sampling failed: %s", exc)
            self._stop.wait(self.interval)

    def sample(self) -> float:
        """Take one sample now; returns the cumulative CPU seconds.

        :attr:`unavailable` then says why the dataplane's CPU cannot be read in full, or is
        None.
        """
        # One sample at a time: the thread and a caller's sample() must not both difference
        # against the same previous counters.
        with self._sample_lock:
            reading = self.source.read()
            taken = now()
            increment = 0.0
            for key, value in reading.counters.items():
                previous = self._last.get(key)
                if previous is not None:
                    increment += value - previous if value >= previous else value
                self._last[key] = value
            with self._lock:
                self.unavailable = reading.unavailable
                self._total += increment
                self.samples.append((taken, self._total))
                return self._total

    def window(self, start: float) -> list[tuple[float, float]]:
        """Samples from ``start`` on, with the last one before it (to difference against)."""
        with self._lock:
            before = [s for s in self.samples if s[0] < start]
            inside = [s for s in self.samples if s[0] >= start]
            return before[-1:] + inside

    def trim(self, start: float) -> None:
        """Forget samples before ``start`` but the last one (a new measurement window)."""
        with self._lock:
            before = [s for s in self.samples if s[0] < start]
            self.samples = before[-1:] + [s for s in self.samples if s[0] >= start]
