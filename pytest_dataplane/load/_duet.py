"""Duet runs: two targets driven by one schedule, interleaved request by request.

A comparison of two sequential runs also compares two moments of the machine: a sync of the
dataplane, a build on another core or a garbage collection that hits one run and not the
other is indistinguishable from a regression. A duet sends to the baseline and the candidate
alternately from **one** open-loop schedule at twice the per-target rate: the baseline gets
the even slots, the candidate the odd ones (with ``arrival="constant"`` the candidate's
request ``i`` is due half a period after the baseline's). Both therefore see the same moments
of the machine, and :func:`pytest_dataplane.assert_no_regression` can compare them paired,
window by window.

Each side runs in its own worker process(es) on the shared t=0: a slow candidate then cannot
delay a baseline send through a shared event loop (the two schedules stay open-loop and
independent), and each side keeps its own network namespace and cgroup. The split reuses the
schedule's part mechanism (:func:`~pytest_dataplane.load._schedule.offsets`): with ``p``
processes per side, the combined schedule has ``2p`` parts and side ``s`` runs parts
``2k + s``, which together are exactly the requests ``i`` with ``i % 2 == s``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .. import events
from ..errors import DataplaneError
from ..events import Event
from ._client import EngineConfig
from ._launch import START_MARGIN, Launch
from ._result import LoadResult
from ._run import LoadRun, _Background, target_url
from ._spec import LoadSpec

__all__ = ["DuetResult", "DuetRun", "duet", "duet_specs"]

SIDES = ("baseline", "candidate")


@dataclass(frozen=True, eq=False)
class DuetResult:
    """What a duet run measured: one :class:`LoadResult` per side, on one shared clock.

    ``baseline`` and ``candidate`` carry the pairing in ``extra["duet"]`` (the same ``id``,
    their ``side`` and ``slot``), so ``assert_no_regression(duet.baseline, duet.candidate)``
    is judged paired just like ``assert_no_regression(duet)``. ``rate`` is per target;
    ``offset`` is how long after a baseline slot the next candidate slot is due (half a
    period for a constant schedule; None for Poisson arrivals, whose gaps are random).
    """

    baseline: LoadResult
    candidate: LoadResult
    rate: float
    duration: float
    arrival: str
    offset: float | None
    id: str
    events: tuple[Event, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def saturated(self) -> bool:
        """Whether either side's load generator could not hold its schedule."""
        return self.baseline.saturated or self.candidate.saturated

    @property
    def saturation_reason(self) -> str:
        """Why, naming the side(s)."""
        return "; ".join(
            f"{side}: {result.saturation_reason}"
            for side, result in zip(SIDES, (self.baseline, self.candidate), strict=True)
            if result.saturated
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary of both sides and the pairing."""
        return {
            "duet": {
                "id": self.id,
                "rate": self.rate,
                "duration": self.duration,
                "arrival": self.arrival,
                "offset": self.offset,
                "slots": "baseline even, candidate odd, of one schedule at twice the rate",
            },
            "baseline": self.baseline.to_dict(),
            "candidate": self.candidate.to_dict(),
        }


def duet_specs(
    baseline_url: str,
    candidate_url: str,
    *,
    rate: float | str,
    duration: float | str,
    **options: Any,
) -> tuple[LoadSpec, LoadSpec]:
    """Validated specs of both sides (per-target ``rate``; the candidate shares the seed).

    ``netns``/``cgroup`` may be given per side as ``baseline_netns``, ``candidate_netns``,
    ``baseline_cgroup``, ``candidate_cgroup``; plain ``netns``/``cgroup`` apply to both.
    """
    per_side: dict[str, dict[str, Any]] = {side: {} for side in SIDES}
    for side in SIDES:
        for key in ("netns", "cgroup"):
            value = options.pop(f"{side}_{key}", None)
            if value is not None:
                per_side[side][key] = value
    if options.get("arrival") == "closed":
        raise ValueError(
            "arrival: 'closed' cannot be interleaved (a closed loop has no schedule of its own); "
            "accepted for a duet: constant, poisson"
        )
    base = LoadSpec.create(
        baseline_url, rate=rate, duration=duration, **{**options, **per_side["baseline"]}
    )
    cand_options = {**options, **per_side["candidate"], "seed": base.seed}
    candidate = LoadSpec.create(candidate_url, rate=rate, duration=duration, **cand_options)
    return base, candidate


def _side_configs(spec: LoadSpec, slot: int) -> list[EngineConfig]:
    """Engine configs running slot ``slot`` (0 or 1) of the combined schedule at 2x the rate."""
    parts = spec.parts
    return [
        replace(spec.engine_config(k), rate=spec.rate * 2, part=2 * k + slot, parts=2 * parts)
        for k in range(parts)
    ]


class DuetRun(_Background):
    """A duet in the background; use it as a context manager, like a :class:`LoadRun`.

    After the block, :attr:`result` is the :class:`DuetResult`; :meth:`mark` records an event
    on both sides.
    """

    _what = "duet"

    def __init__(
        self,
        baseline: object,
        candidate: object,
        specs: tuple[LoadSpec, LoadSpec],
        *,
        labels: tuple[str, str] = ("", ""),
        on_result: Callable[[LoadResult], None] | None = None,
    ) -> None:
        self.specs = specs
        self.id = secrets.token_hex(6)
        self._runs = tuple(
            LoadRun(target, spec, label=label)
            for target, spec, label in zip((baseline, candidate), specs, labels, strict=True)
        )
        self._on_result = on_result
        self._marks: list[Event] = []
        self._result: DuetResult | None = None
        self._started = False

    def __repr__(self) -> str:
        spec = self.specs[0]
        state = "finished" if self._result else ("running" if self._started else "not started")
        return (
            f"<DuetRun {spec.url} vs {self.specs[1].url} {spec.rate:g}/s each for "
            f"{spec.duration:g}s {state}>"
        )

    def start(self) -> DuetRun:
        """Start both sides on one t=0; returns once it has passed."""
        if self._started:
            raise DataplaneError("this duet was already started")
        self._started = True
        launches = [
            Launch(spec, configs=_side_configs(spec, slot)) for slot, spec in enumerate(self.specs)
        ]
        try:
            for run, launch in zip(self._runs, launches, strict=True):
                # The LoadRun builds, labels and merges events exactly as for a single run.
                run._launch = launch
                launch.prepare()
            t0 = events.now() + START_MARGIN
            for launch in launches:
                launch.begin(t0)
        except BaseException:
            for launch in launches:
                launch.close()
            raise
        delay = t0 - events.now()
        if delay > 0:
            import time

            time.sleep(delay)
        return self

    def stop(self) -> None:
        """Stop both sides now."""
        for run in self._runs:
            run.stop()

    def wait(self) -> DuetResult:
        """Wait for both sides; build, pair and record the result."""
        if self._result is not None:
            return self._result
        if not self._started:
            raise DataplaneError("this duet was never started: use it in a with block")
        try:
            results = [run.wait() for run in self._runs]
        finally:
            for run in self._runs:
                run.close()
        spec = self.specs[0]
        offset = 0.5 / spec.rate if spec.arrival == "constant" else None
        paired = []
        for slot, (side, result) in enumerate(zip(SIDES, results, strict=True)):
            info = {"id": self.id, "side": side, "slot": slot, "slots": 2, "offset": offset}
            marks = [m for m in self._marks if m not in result.events]
            merged = tuple(sorted((*result.events, *marks), key=lambda e: e.time))
            paired.append(replace(result, extra={**result.extra, "duet": info}, events=merged))
        base, cand = paired
        self._result = DuetResult(
            baseline=base,
            candidate=cand,
            rate=spec.rate,
            duration=spec.duration,
            arrival=spec.arrival,
            offset=offset,
            id=self.id,
            events=tuple(sorted(self._marks, key=lambda e: e.time)),
        )
        if self._on_result is not None:
            for result in paired:
                self._on_result(result)
        return self._result

    def close(self) -> None:
        """Stop and reap both sides if still going (the fixture's teardown)."""
        for run in self._runs:
            run.close()

    def __enter__(self) -> DuetRun:
        return self.start()

    @property
    def result(self) -> DuetResult:
        """The :class:`DuetResult`; available once the ``with`` block has ended."""
        if self._result is None:
            raise DataplaneError("the duet has not finished: read run.result after the with block")
        return self._result

    @property
    def baseline(self) -> LoadResult:
        """The baseline side's result (after the block)."""
        return self.result.baseline

    @property
    def candidate(self) -> LoadResult:
        """The candidate side's result (after the block)."""
        return self.result.candidate


def make_duet(
    baseline: object,
    candidate: object,
    *,
    rate: float | str,
    duration: float | str,
    defaults: Mapping[str, Any] | None = None,
    on_result: Callable[[LoadResult], None] | None = None,
    **kwargs: Any,
) -> DuetRun:
    """A :class:`DuetRun` of two targets (URLs or objects with ``url``, ``netns``, ``cgroup``,
    ``name``), with ``defaults`` filling the options not given."""
    options = {**(defaults or {}), **kwargs}
    for side, target in zip(SIDES, (baseline, candidate), strict=True):
        for attribute in ("netns", "cgroup"):
            if attribute in kwargs or f"{side}_{attribute}" in kwargs:
                continue
            value = getattr(target, attribute, None)
            if value is not None:
                options[f"{side}_{attribute}"] = value
    specs = duet_specs(
        target_url(baseline), target_url(candidate), rate=rate, duration=duration, **options
    )
    labels = []
    for side, target in zip(SIDES, (baseline, candidate), strict=True):
        name = getattr(target, "name", None)
        labels.append(f"{name if isinstance(name, str) else side} (duet {side})")
    return DuetRun(baseline, candidate, specs, labels=(labels[0], labels[1]), on_result=on_result)


def duet(
    baseline_url: str,
    candidate_url: str,
    *,
    rate: float | str,
    duration: float | str,
    **options: Any,
) -> DuetResult:
    """Load two URLs from one schedule, interleaved request by request; return both results.

    Blocking twin of ``load.duet``: ``rate`` is per target (the schedule runs at twice it,
    baseline on even slots, candidate on odd ones, started on one shared t=0); every other
    keyword argument is that of :func:`pytest_dataplane.load.run` (``arrival="closed"`` is
    refused: a closed loop has no schedule to interleave). ``baseline_netns`` /
    ``candidate_netns`` and ``baseline_cgroup`` / ``candidate_cgroup`` place each side on its
    own. Give the result to :func:`pytest_dataplane.assert_no_regression`, which then
    compares the two sides window by window.
    """
    run = make_duet(baseline_url, candidate_url, rate=rate, duration=duration, **options)
    run.start()
    try:
        return run.wait()
    finally:
        run.close()
