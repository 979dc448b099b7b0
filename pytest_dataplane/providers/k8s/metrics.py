"""Numbers read from nodes: kube-proxy's programming-latency histogram and the dataplane
containers' CPU counters, and how CPU is attributed to endpoint changes. Pure.
"""

from __future__ import annotations

import itertools
import math
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "CGROUP_ROOT",
    "PROGRAMMING_METRIC",
    "CpuAttribution",
    "attribute_cpu",
    "cgroup_find_script",
    "cgroup_read_script",
    "container_id",
    "cpu_unavailable_reason",
    "diff_histogram",
    "histogram_samples",
    "metrics_script",
    "parse_cgroup_find",
    "parse_cgroup_read",
    "parse_histogram",
]

# kube-proxy's SLI: seconds from an endpoint change (the EndpointSlice's last-change trigger
# time) to the proxier having programmed it, one observation per change per node.
PROGRAMMING_METRIC: Final = "kubeproxy_network_programming_duration_seconds"
KUBE_PROXY_METRICS_URL: Final = "http://127.0.0.1:10249/metrics"

_BUCKET: Final = re.compile(
    rf'^{PROGRAMMING_METRIC}_bucket\{{(?:[^}}]*,)?le="(?P<le>[^"]+)"(?:,[^}}]*)?\}}\s+(?P<n>\S+)'
)


def metrics_script(url: str = KUBE_PROXY_METRICS_URL) -> str:
    """Shell run on a node: kube-proxy's histogram lines (curl, else wget)."""
    quoted = shlex.quote(url)
    return (
        f"(curl -fsS --max-time 5 {quoted} 2>/dev/null || wget -qO- -T 5 {quoted} 2>/dev/null)"
        f" | grep '^{PROGRAMMING_METRIC}_bucket' || true"
    )


def parse_histogram(text: str) -> dict[float, float]:
    """Cumulative bucket counts ``{le: count}`` of :data:`PROGRAMMING_METRIC` (``+Inf`` is
    ``math.inf``) from Prometheus text."""
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        match = _BUCKET.match(line.strip())
        if match:
            le = math.inf if match["le"] in ("+Inf", "Inf") else float(match["le"])
            buckets[le] = buckets.get(le, 0.0) + float(match["n"])
    return buckets


def diff_histogram(
    before: Mapping[float, float], after: Mapping[float, float]
) -> dict[float, float]:
    """Observations made between two snapshots, per bucket (cumulative counts subtracted).

    A counter that went down (kube-proxy restarted) counts from zero.
    """
    result: dict[float, float] = {}
    for le, count in after.items():
        previous = before.get(le, 0.0)
        result[le] = count - previous if count >= previous else count
    return result


def histogram_samples(cumulative: Mapping[float, float]) -> npt.NDArray[np.float64]:
    """One value per observation, at its bucket's upper bound (never an underestimate).

    Observations above the largest finite bucket are ``inf``: the histogram cannot say how
    slow they were, and an assertion should not pass on them.
    """
    values: list[float] = []
    below = 0.0
    for le in sorted(cumulative):
        count = cumulative[le]
        n = round(count - below)
        values += [le] * max(n, 0)
        below = max(below, count)
    return np.asarray(values, dtype=np.float64)


def container_id(container_status_id: str) -> str:
    """``containerd://0123abcd…`` -> ``0123abcd…``."""
    return container_status_id.rpartition("://")[2]


CGROUP_ROOT: Final = "/sys/fs/cgroup"
# The shell test for "this directory holds a CPU-time counter". cgroup v2's cpu.stat always
# starts with usage_usec (kernel/cgroup/rstat.c); cgroup v1 has the time in the cpuacct
# controller's cpuacct.usage (nanoseconds, kernel/sched/cpuacct.c). A v1 *cpu* controller
# directory has a cpu.stat too, but only throttling counters (nr_periods, nr_throttled,
# throttled_time: kernel/sched/core.c), so the name alone says nothing.
_HAS_V2_COUNTER: Final = "grep -qs '^usage_usec ' {d}/cpu.stat"
_HAS_V1_COUNTER: Final = "[ -f {d}/cpuacct.usage ]"


def cgroup_find_script(ids: Sequence[str], *, root: str = CGROUP_ROOT) -> str:
    """Shell run on a node: for each container id, a cgroup directory that holds its CPU
    counter (``ID PATH`` lines): cgroup v2 (``cpu.stat`` with ``usage_usec``) or v1
    (``cpuacct.usage``), on unified, hybrid and legacy hierarchies alike. An id with no such
    directory prints nothing (see :func:`cpu_unavailable_reason`)."""
    for cid in ids:
        if not re.fullmatch(r"[0-9a-f]{12,64}", cid):
            raise ValueError(f"container id: {cid!r} is not a hex container id")
    base = shlex.quote(root)
    v2 = _HAS_V2_COUNTER.format(d='"$d"')
    v1 = _HAS_V1_COUNTER.format(d='"$d"')
    lines = []
    for cid in ids:
        lines.append(
            f"for d in $(find {base} -type d -name '*{cid}*' 2>/dev/null); do "
            f'if {v2} || {v1}; then echo "{cid} $d"; break; fi; done'
        )
    return "; ".join(lines) + "; true"


def parse_cgroup_find(text: str) -> dict[str, str]:
    """``{container id: cgroup directory}`` from :func:`cgroup_find_script` output."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and parts[0] not in found:
            found[parts[0]] = parts[1]
    return found


def cpu_unavailable_reason(node: str, cid: str, *, root: str = CGROUP_ROOT) -> str:
    """Why a container's CPU cannot be read: no cgroup directory with a counter found."""
    return (
        f"{node}: no cgroup of container {cid[:12]} under {root} holds a CPU-time counter "
        "(cgroup v2 cpu.stat with usage_usec, or cgroup v1 cpuacct.usage)"
    )


def cgroup_read_script(paths: Sequence[str]) -> str:
    """Shell run on a node: each directory's CPU counter, ``PATH usage_usec N`` (v2),
    ``PATH usage_ns N`` (v1), ``PATH missing`` (the cgroup is gone: the container ended) or
    ``PATH unreadable`` (the directory exists without a counter)."""
    lines = []
    for path in paths:
        quoted = shlex.quote(path)
        lines.append(
            f"if {_HAS_V2_COUNTER.format(d=quoted)}; then "
            f"echo {quoted} $(grep '^usage_usec ' {quoted}/cpu.stat); "
            f"elif {_HAS_V1_COUNTER.format(d=quoted)}; then "
            f"echo {quoted} usage_ns $(cat {quoted}/cpuacct.usage); "
            f"elif [ -d {quoted} ]; then echo {quoted} unreadable; "
            f"else echo {quoted} missing; fi"
        )
    return "; ".join(lines)


def parse_cgroup_read(text: str) -> dict[str, float | None]:
    """``{cgroup directory: CPU seconds, or None if it is gone}`` from
    :func:`cgroup_read_script` output.

    A directory that exists without a counter raises ValueError naming it: reading it as
    zero would hide the dataplane's CPU.
    """
    result: dict[str, float | None] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "usage_usec":
            result[parts[0]] = int(parts[2]) / 1e6
        elif len(parts) == 3 and parts[1] == "usage_ns":
            result[parts[0]] = int(parts[2]) / 1e9
        elif len(parts) >= 2 and parts[1] == "missing":
            result[parts[0]] = None
        elif len(parts) >= 2 and parts[1] == "unreadable":
            raise ValueError(
                f"cgroup {parts[0]}: neither cpu.stat with usage_usec (cgroup v2) nor "
                "cpuacct.usage (cgroup v1); its CPU time cannot be read"
            )
    return result


@dataclass(frozen=True)
class CpuAttribution:
    """CPU seconds per change, the window's total, and the background rate seen."""

    per_change: tuple[float, ...]
    total: float
    background_rate: float | None


def _at(samples: Sequence[tuple[float, float]], t: float) -> float:
    """Cumulative CPU at time ``t``, interpolated linearly between samples (clamped)."""
    if not samples:
        return 0.0
    if t <= samples[0][0]:
        return samples[0][1]
    for (t0, c0), (t1, c1) in itertools.pairwise(samples):
        if t0 <= t <= t1:
            return c0 if t1 == t0 else c0 + (c1 - c0) * (t - t0) / (t1 - t0)
    return samples[-1][1]


def attribute_cpu(
    samples: Sequence[tuple[float, float]],
    changes: Sequence[float],
    *,
    start: float,
    end: float,
    horizon: float = 5.0,
    group_gap: float = 0.05,
) -> CpuAttribution:
    """Attribute sampled cumulative CPU (``(time, seconds)``, sorted) to endpoint changes.

    A change owns the CPU spent from its time until the next change or ``horizon`` seconds,
    whichever comes first (the proxier's work for it ends long before that); changes closer
    than ``group_gap`` arrive in one EndpointSlice update, are applied in one sync and share
    that CPU equally. ``total`` is the CPU of the whole window ``[start, end]``, which also
    holds syncs that no change caused. ``background_rate`` is CPU seconds per second over
    the longest change-free stretch of at least 2 s (None if there is none).
    """
    ordered = sorted(t for t in changes if start <= t <= end)
    groups: list[list[float]] = []
    for t in ordered:
        if groups and t - groups[-1][-1] <= group_gap:
            groups[-1].append(t)
        else:
            groups.append([t])
    per_change: list[float] = []
    for i, group in enumerate(groups):
        begin = group[0]
        stop = min(begin + horizon, end)
        if i + 1 < len(groups):
            stop = min(stop, groups[i + 1][0])
        spent = max(0.0, _at(samples, stop) - _at(samples, begin))
        per_change += [spent / len(group)] * len(group)
    total = max(0.0, _at(samples, end) - _at(samples, start))
    edges = [start] + [g[0] for g in groups] + [end]
    rate: float | None = None
    widest = 0.0
    for left, right in itertools.pairwise(edges):
        # a stretch begins after the previous change's horizon
        quiet_start = left if left == start else left + horizon
        if right - quiet_start >= 2.0 and right - quiet_start > widest:
            widest = right - quiet_start
            rate = max(0.0, _at(samples, right) - _at(samples, quiet_start)) / widest
    return CpuAttribution(tuple(per_change), total, rate)
