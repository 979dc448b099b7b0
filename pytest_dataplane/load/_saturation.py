"""The saturation guard: did the load generator keep its schedule, and if not, why.

Pure numerics over a run's :class:`~._timeline.Timeline` and its workers' self-measurements
(:mod:`._health`); :meth:`~._result.LoadResult.build` calls :func:`assess` and keeps the
:class:`Generator` figures on the result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from .. import _format as fmt
from ._outcomes import DROPPED
from ._timeline import Timeline

__all__ = ["LATE", "Generator", "assess", "describe_lateness"]

# The saturation guard (see :func:`assess`). A send counts as late after LATE seconds.
LATE: Final = 1e-3
#: The generator is the bottleneck when its own work (CPU minus idle spin) takes this share
#: of a core over the sending period, per worker...
MAX_OWN_CPU: Final = 0.85
#: ... or this share within one WINDOW while its sends were late (p99 over LATE) there.
MAX_OWN_CPU_WINDOW: Final = 0.95
WINDOW: Final = 1.0
#: An open-loop run must send at this fraction of its schedule's rate at least (a backlog
#: that never drained), a closed loop at this fraction of its target.
MIN_RATE_FRACTION: Final = 0.99


@dataclass(frozen=True)
class Generator:
    """How the load generator kept its schedule: the saturation guard's figures.

    ``cpu``: the busiest worker's own work (thread CPU time minus the idle spin) as a share of
    one core over its sending period, NaN when not measured (a result built from bare arrays);
    ``cpu_peak``: the same within the busiest :data:`WINDOW`; ``cpu_seconds``: CPU time of
    all workers (spin included); ``run_queue_wait``: seconds the workers' threads waited for a
    CPU while sending (NaN where the kernel has no schedstats); ``wall``: the workers'
    sending time (seconds, summed over workers); ``lag_p50``, ``lag_p99``,
    ``lag_max``: how late requests were sent (actual minus intended send time, seconds);
    ``late``: the fraction sent more than :data:`LATE` late; ``max_backlog``: the most requests
    that were due but not yet sent at one moment; ``end_lag``: how late the last sends were;
    ``lateness``: why sends were late, in words; ``workers``: per-worker figures.
    """

    cpu: float = math.nan
    cpu_peak: float = math.nan
    cpu_seconds: float = math.nan
    run_queue_wait: float = math.nan
    wall: float = math.nan
    lag_p50: float = 0.0
    lag_p99: float = 0.0
    lag_max: float = 0.0
    late: float = 0.0
    max_backlog: int = 0
    end_lag: float = 0.0
    lateness: str = ""
    workers: tuple[Mapping[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable figures (NaN as None)."""

        def num(value: float) -> float | None:
            return None if math.isnan(value) else value

        return {
            "cpu": num(self.cpu),
            "cpu_peak": num(self.cpu_peak),
            "cpu_seconds": num(self.cpu_seconds),
            "run_queue_wait": num(self.run_queue_wait),
            "send_lag": {"p50": self.lag_p50, "p99": self.lag_p99, "max": self.lag_max},
            "late_fraction": self.late,
            "max_backlog": self.max_backlog,
            "end_lag": self.end_lag,
            "lateness": self.lateness,
        }


def _percent(value: float) -> str:
    return f"{value * 100:.0f} %"


def _ms(value: float) -> str:
    return f"{value * 1e3:.2f} ms"


_CHUNK: Final = 65_536


def _max_backlog(send: npt.NDArray[np.float64], lag: npt.NDArray[np.float32]) -> int:
    """The most requests that were due but not yet sent at the moment one of them left.

    ``send`` sorted; computed in chunks so that a million-row timeline needs no extra
    million-row arrays (the recorder's memory budget).
    """
    best = 0
    for start in range(0, send.size, _CHUNK):
        left = send[start : start + _CHUNK] + lag[start : start + _CHUNK]
        due = np.searchsorted(send, left, side="right") - 1
        behind = due - np.arange(start, start + left.size)
        best = max(best, int(behind.max()))
    return best


def _worker_cpu(health: Mapping[str, Any]) -> tuple[float, float, float]:
    """(own work as a share of a core, sending wall time, run-queue wait) of one worker."""
    wall = float(health.get("wall") or 0.0)
    if wall <= 0:
        return math.nan, math.nan, math.nan
    own = max(float(health.get("cpu", 0.0)) - float(health.get("idle", 0.0)), 0.0)
    delay = health.get("run_delay")
    return own / wall, wall, math.nan if delay is None else float(delay)


def _windows(health: Mapping[str, Any]) -> list[tuple[float, float, float]]:
    """(start, end, own-work share) per WINDOW of the worker's samples."""
    samples = health.get("samples") or []
    out = []
    i = 0
    while i < len(samples) - 1:
        j = i + 1
        while j < len(samples) - 1 and samples[j][0] - samples[i][0] < WINDOW:
            j += 1
        t0, cpu0, idle0 = samples[i][0], samples[i][1], samples[i][2]
        t1, cpu1, idle1 = samples[j][0], samples[j][1], samples[j][2]
        if t1 - t0 >= WINDOW / 2:
            out.append((t0, t1, max((cpu1 - cpu0) - (idle1 - idle0), 0.0) / (t1 - t0)))
        i = j
    return out


def assess(
    timeline: Timeline,
    *,
    workers: Sequence[Mapping[str, Any]] = (),
    dropped: int = 0,
    achieved: float = 0.0,
    expected_rate: float = 0.0,
    closed: bool = False,
) -> tuple[Generator, list[str]]:
    """The saturation guard: the generator's figures, and why it was the bottleneck (empty
    when it was not).

    The generator is the bottleneck only when it could not keep its schedule itself: requests
    dropped for capacity (``max_in_flight`` outstanding, or no sockets), its own work near a
    full core (over the run, or within a window in which its sends were late), or a backlog
    that never drained (an achieved rate under :data:`MIN_RATE_FRACTION` of the schedule's).
    Late sends while the generator had spare capacity are the host's doing (another process
    held the CPU): they are reported (``lateness``), not refused, because latency is measured
    from the intended send time and that is what a client on that host would see.
    """
    sent = (timeline.outcome != DROPPED) & np.isfinite(timeline.lag)
    send = timeline.send[sent]
    lag_all = timeline.lag[sent]
    if send.size > 1 and bool(np.any(send[1:] < send[:-1])):
        order = np.argsort(send, kind="stable")
        send, lag_all = send[order], lag_all[order]
    reasons: list[str] = []
    figures: dict[str, Any] = {}
    if lag_all.size:
        p50, p99 = np.quantile(lag_all, (0.5, 0.99))
        figures.update(
            lag_p50=float(p50),
            lag_p99=float(p99),
            lag_max=float(lag_all.max()),
            late=float(np.count_nonzero(lag_all > LATE)) / lag_all.size,
            max_backlog=_max_backlog(send, lag_all),
            end_lag=float(np.median(lag_all[-max(1, lag_all.size // 100) :])),
        )
    shares, walls, delays, peaks = [], [], [], []
    for index, health in enumerate(workers):
        share, wall, delay = _worker_cpu(health)
        shares.append(share)
        walls.append(wall)
        delays.append(delay)
        for t0, t1, busy in _windows(health):
            peaks.append(busy)
            if busy < MAX_OWN_CPU_WINDOW or not lag_all.size:
                continue
            inside = (send >= t0) & (send < t1)
            if inside.any() and float(np.quantile(lag_all[inside], 0.99)) > LATE:
                reasons.append(
                    f"its own CPU was {_percent(busy)} of a core during {t0:.1f}-{t1:.1f} s "
                    f"(worker {index + 1}) while its sends were late there"
                )
                break
    measured = [v for v in shares if not math.isnan(v)]
    if measured:
        figures["cpu"] = max(measured)
        figures["wall"] = float(sum(w for w in walls if not math.isnan(w)))
        figures["cpu_seconds"] = float(sum(float(h.get("cpu", 0.0)) for h in workers))
        figures["cpu_peak"] = max(peaks) if peaks else figures["cpu"]
        known = [d for d in delays if not math.isnan(d)]
        if known:
            figures["run_queue_wait"] = float(sum(known))
    generator = Generator(**figures, workers=tuple(workers))
    if dropped:
        reasons.insert(
            0,
            f"{dropped:,} requests dropped, never sent (capacity exceeded: max_in_flight "
            "requests outstanding, or no sockets left)",
        )
    if measured and max(measured) >= MAX_OWN_CPU:
        worst = int(np.argmax(measured))
        reasons.insert(
            0,
            f"its own CPU was {_percent(max(measured))} of a core over the run "
            f"(worker {worst + 1} of {len(workers)}; limit {_percent(MAX_OWN_CPU)})",
        )
    if expected_rate > 0 and achieved < MIN_RATE_FRACTION * expected_rate:
        what = "target" if closed else "schedule's rate"
        reasons.append(
            f"capacity exceeded: achieved {achieved:.1f}/s < {MIN_RATE_FRACTION:.0%} of the "
            f"{what} {expected_rate:.1f}/s (backlog up to {generator.max_backlog:,} sends, "
            f"the last ones {fmt.seconds(generator.end_lag)} late; {_cpu_words(generator)})"
        )
    reasons = list(dict.fromkeys(reasons))
    return replace(generator, lateness=describe_lateness(generator, reasons)), reasons


def _cpu_words(g: Generator) -> str:
    cpu = (
        "generator CPU not measured"
        if math.isnan(g.cpu)
        else f"generator CPU {_percent(g.cpu)} of a core"
    )
    if not math.isnan(g.run_queue_wait) and not math.isnan(g.wall) and g.wall > 0:
        share = _percent(g.run_queue_wait / g.wall)
        cpu += f", waited {g.run_queue_wait:.2f} s for a CPU ({share} of its sending time)"
    return cpu


def describe_lateness(g: Generator, reasons: Sequence[str]) -> str:
    """Why sends were late (or that they were not), in words, with the figures."""
    lag = f"send lag p50 {_ms(g.lag_p50)}, p99 {_ms(g.lag_p99)}, max {_ms(g.lag_max)}"
    cpu = _cpu_words(g)
    backlog = f"backlog up to {g.max_backlog:,} sends" if g.max_backlog else "no backlog"
    if reasons:
        cause = "generator saturated"
    elif g.lag_p99 <= LATE:
        cause = "on time"
    elif math.isnan(g.cpu):
        cause = "late"
    else:
        cause = "host busy"
    return f"{cause}: {lag}; {cpu}; {backlog}"
