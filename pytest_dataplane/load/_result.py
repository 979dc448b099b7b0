"""LoadResult: what a load run measured, in compact arrays, with phase windows.

Pure data and numerics; no I/O. Engines fill a :class:`~._timeline.Timeline` and build the
result with :meth:`LoadResult.build`, which runs the saturation guard (:mod:`._saturation`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from ..events import Event
from ._outcomes import DROPPED, ERROR_KINDS, OK, OUTCOMES
from ._saturation import Generator, assess, describe_lateness
from ._timeline import Timeline

__all__ = ["OUTCOMES", "Generator", "LoadResult", "Timeline", "assess"]

# Outcome codes stored in :attr:`Timeline.outcome` (index = code) are defined, with the rules
# that classify failures, in the light ._outcomes module that the worker process imports.


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
            lateness=describe_lateness(
                generator, [self.saturation_reason] if self.saturated else []
            ),
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
