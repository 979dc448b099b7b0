"""LoadResult: what a load run measured, in compact arrays, with phase windows.

Pure data and numerics; no I/O. Engines fill a :class:`Timeline` and build the result with
:meth:`LoadResult.build`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from .. import _format as fmt
from ..events import Event
from ._outcomes import DROPPED, ERROR_KINDS, OK, OUTCOMES

__all__ = ["OUTCOMES", "Generator", "LoadResult", "Timeline", "assess"]

# Outcome codes stored in :attr:`Timeline.outcome` (index = code) are defined, with the rules
# that classify failures, in the light ._outcomes module that the worker process imports.

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
    return replace(generator, lateness=_lateness(generator, reasons)), reasons


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


def _lateness(g: Generator, reasons: Sequence[str]) -> str:
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


@dataclass(frozen=True, eq=False)
class Timeline:
    """One row per scheduled request, in intended-send order.

    ``send``: intended send time, seconds since the run's start; ``latency``: seconds from the
    intended send time to the response (or to the error; NaN for dropped requests);
    ``lag``: actual minus intended send time (NaN for dropped); ``outcome``: index into
    :data:`OUTCOMES`.
    """

    send: npt.NDArray[np.float64]
    latency: npt.NDArray[np.float32]
    lag: npt.NDArray[np.float32]
    outcome: npt.NDArray[np.uint8]

    def __post_init__(self) -> None:
        sizes = {self.send.size, self.latency.size, self.lag.size, self.outcome.size}
        if len(sizes) != 1:
            raise ValueError(f"timeline arrays differ in length: {sorted(sizes)}")

    def __len__(self) -> int:
        return int(self.send.size)

    @classmethod
    def empty(cls) -> Timeline:
        return cls(
            np.empty(0, np.float64),
            np.empty(0, np.float32),
            np.empty(0, np.float32),
            np.empty(0, np.uint8),
        )

    def select(self, mask: npt.NDArray[np.bool_]) -> Timeline:
        return Timeline(self.send[mask], self.latency[mask], self.lag[mask], self.outcome[mask])

    def outcome_names(self) -> list[str]:
        """Outcome of each request as a string (for reports; allocates)."""
        names = np.array(OUTCOMES, dtype=object)
        return list(names[self.outcome])


@dataclass(frozen=True, eq=False)
class LoadResult:
    """What a load run measured.

    Latencies are seconds, measured from each request's *intended* send time, so a stalled
    server or a late client shows up in the percentiles (coordinated omission corrected),
    except in closed-loop runs (``corrected`` is False there). Invariant:
    ``scheduled == completed + errors + dropped``.

    ``saturated`` (with ``saturation_reason``) is the saturation guard's verdict: the load
    generator itself could not keep its schedule, and the assertion helpers refuse the result.
    ``generator`` holds the guard's figures: the generator's own CPU, how late it sent and
    why (``generator.lateness``). Late sends on a busy host with a generator that had spare
    capacity do not saturate a run; the assertions then decide only where the latency from the
    intended and from the actual send time give the same verdict.

    When a run was too long to keep every row, ``timeline`` holds a uniform random subsample
    (``sampled`` is True) and the counters still count every request; ``histogram`` (an HDR
    histogram of every completed request's latency in microseconds) then gives exact-to-3-digits
    percentiles via :meth:`percentile`.
    """

    timeline: Timeline
    start: float
    target_rate: float
    duration: float
    scheduled: int
    completed: int
    errors: int
    dropped: int
    error_kinds: Mapping[str, int]
    achieved_rate: float
    send_lag_p99: float
    saturated: bool
    saturation_reason: str = ""
    generator: Generator = field(default_factory=Generator)
    events: tuple[Event, ...] = ()
    url: str = ""
    engine: str = ""
    arrival: str = ""
    connection: str = ""
    corrected: bool = True
    sampled: bool = False
    histogram: Any = None
    label: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.scheduled != self.completed + self.errors + self.dropped:
            raise ValueError(
                f"accounting broken: scheduled={self.scheduled} != completed={self.completed} "
                f"+ errors={self.errors} + dropped={self.dropped}"
            )

    # ------------------------------------------------------------------ construction

    @classmethod
    def build(
        cls,
        timeline: Timeline,
        *,
        start: float,
        target_rate: float,
        duration: float,
        counts: Mapping[str, int] | None = None,
        events: Sequence[Event] = (),
        check_saturation: bool = True,
        origin: float = 0.0,
        workers: Sequence[Mapping[str, Any]] = (),
        **fields: Any,
    ) -> LoadResult:
        """Derive counters, rates and the saturation verdict from a timeline.

        ``counts`` (outcome name -> count) overrides the timeline's own counts when the
        timeline is a subsample of a longer run; ``origin`` is where the timeline's period
        begins (a window's start), so that rates are per second of that period; ``workers``
        are the engines' self-measurements (``summary()["health"]`` of each), see
        :func:`assess`.
        """
        if counts is None:
            per_code = np.bincount(timeline.outcome, minlength=len(OUTCOMES))
            counts = {name: int(per_code[i]) for i, name in enumerate(OUTCOMES)}
        completed = int(counts.get("ok", 0))
        dropped = int(counts.get("dropped", 0))
        error_kinds = {k: int(counts[k]) for k in ERROR_KINDS if counts.get(k)}
        errors = sum(error_kinds.values())
        scheduled = completed + errors + dropped
        sent = timeline.outcome != DROPPED
        lags = timeline.lag[sent]
        if lags.size:
            last_send = float(np.nanmax(timeline.send[sent] + lags.astype(np.float64)))
            window = max(duration, last_send - origin)
        else:
            window = duration
        sent_total = completed + errors
        achieved = sent_total / window if window > 0 else 0.0
        # The rate to hold: an open-loop schedule's own rate (a Poisson schedule draws a
        # random count, so comparing with target_rate would flag honest runs); a closed loop
        # counts only what it sent, so it is held to the target itself.
        closed = fields.get("arrival") == "closed"
        if closed:
            expected_rate = target_rate
        else:
            # Dropped requests are refused on their own count; the rate is that of the rest.
            expected_rate = (scheduled - dropped) / duration if duration > 0 else 0.0
        generator, reasons = assess(
            timeline,
            workers=workers,
            dropped=dropped,
            achieved=achieved,
            expected_rate=expected_rate if check_saturation and scheduled else 0.0,
            closed=closed,
        )
        if not (check_saturation and scheduled):
            reasons = []
        return cls(
            timeline=timeline,
            start=start,
            target_rate=target_rate,
            duration=duration,
            scheduled=scheduled,
            completed=completed,
            errors=errors,
            dropped=dropped,
            error_kinds=error_kinds,
            achieved_rate=achieved,
            send_lag_p99=generator.lag_p99,
            saturated=bool(reasons),
            saturation_reason="; ".join(reasons),
            generator=generator,
            events=tuple(sorted(events, key=lambda e: e.time)),
            **fields,
        )

    # ------------------------------------------------------------------ views

    @property
    def latencies(self) -> npt.NDArray[np.float64]:
        """Latency in seconds of every completed request (subsampled when ``sampled``)."""
        cached: npt.NDArray[np.float64] | None = self.__dict__.get("_latencies")
        if cached is None:
            cached = self.timeline.latency[self.timeline.outcome == OK].astype(np.float64)
            object.__setattr__(self, "_latencies", cached)
        return cached

    @property
    def error_rate(self) -> float:
        """errors / (completed + errors); 0.0 when nothing was sent."""
        sent = self.completed + self.errors
        return self.errors / sent if sent else 0.0

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100) of the latencies, in seconds (NaN if none completed)."""
        if not 0 <= q <= 100:
            raise ValueError(f"q: {q!r} is not a percentile; accepted: 0 to 100")
        if self.histogram is not None and self.sampled:
            return float(self.histogram.get_value_at_percentile(q)) / 1e6
        if self.latencies.size == 0:
            return math.nan
        return float(np.percentile(self.latencies, q))

    def event_times(self, name: str) -> list[float]:
        """Offsets (seconds since the run's start) of the events called ``name``."""
        return [e.time - self.start for e in self.events if e.name == name]

    def window(self, t0: float, t1: float) -> LoadResult:
        """The sub-result of requests whose intended send time is in ``[t0, t1)`` (seconds
        since the start). Saturation is inherited from the whole run."""
        if not t1 > t0:
            raise ValueError(f"window: t1={t1!r} must be after t0={t0!r}")
        mask = (self.timeline.send >= t0) & (self.timeline.send < t1)
        sub = self.timeline.select(mask)
        lo, hi = max(t0, 0.0), min(t1, self.duration)
        # Events at the window's end belong to it (a "rollout-end" closes the rollout window).
        events = [e for e in self.events if t0 <= e.time - self.start <= t1]
        result = LoadResult.build(
            sub,
            start=self.start,
            workers=self.generator.workers,
            target_rate=self.target_rate,
            duration=max(hi - lo, 0.0),
            events=events,
            check_saturation=False,
            origin=lo,
            url=self.url,
            engine=self.engine,
            arrival=self.arrival,
            connection=self.connection,
            corrected=self.corrected,
            sampled=self.sampled,
            label=self.label,
            extra={**self.extra, "window": [t0, t1]},
        )
        # The window's own lateness figures, but the run's CPU and verdict: a worker's CPU is
        # sampled per quarter second, not per request.
        whole = self.generator
        generator = replace(
            result.generator,
            cpu=whole.cpu,
            cpu_peak=whole.cpu_peak,
            cpu_seconds=whole.cpu_seconds,
            run_queue_wait=whole.run_queue_wait,
            wall=whole.wall,
        )
        generator = replace(
            generator,
            lateness=_lateness(generator, [self.saturation_reason] if self.saturated else []),
        )
        return replace(
            result,
            saturated=self.saturated,
            saturation_reason=self.saturation_reason,
            generator=generator,
        )

    def between(self, start_event: str, end_event: str) -> LoadResult:
        """The sub-result between the first ``start_event`` and the next ``end_event``.

        Raises KeyError naming the events that exist when either is missing.
        """
        starts = self.event_times(start_event)
        known = sorted({e.name for e in self.events})
        if not starts:
            raise KeyError(f"no {start_event!r} event in this run; events: {known}")
        t0 = starts[0]
        ends = [t for t in self.event_times(end_event) if t >= t0]
        if not ends:
            raise KeyError(f"no {end_event!r} event after {start_event!r}; events: {known}")
        window = self.window(t0, max(ends[0], t0 + 1e-9))
        return replace(window, extra={**window.extra, "between": [start_event, end_event]})

    def to_dict(self, *, timeline: bool = False) -> dict[str, Any]:
        """JSON-serialisable summary (and the per-request timeline when asked)."""
        percentiles = {
            f"p{q:g}": (self.percentile(q) if self.completed else None)
            for q in (50, 90, 95, 99, 99.9)
        }
        data: dict[str, Any] = {
            "label": self.label,
            "url": self.url,
            "engine": self.engine,
            "arrival": self.arrival,
            "connection": self.connection,
            "corrected": self.corrected,
            "target_rate": self.target_rate,
            "achieved_rate": self.achieved_rate,
            "duration": self.duration,
            "scheduled": self.scheduled,
            "completed": self.completed,
            "errors": self.errors,
            "dropped": self.dropped,
            "error_kinds": dict(self.error_kinds),
            "send_lag_p99": self.send_lag_p99,
            "saturated": self.saturated,
            "saturation_reason": self.saturation_reason,
            "generator": self.generator.to_dict(),
            "sampled": self.sampled,
            "latency": percentiles,
            "events": [e.to_dict(self.start) for e in self.events],
        }
        if timeline:
            data["timeline"] = {
                "send": self.timeline.send.tolist(),
                "latency": [None if math.isnan(v) else v for v in self.timeline.latency.tolist()],
                "outcome": self.timeline.outcome_names(),
            }
        return data
