"""The saturation guard: LoadResult.build's verdict, and assertions refusing saturated runs.

The guard blames the generator only for what is its own doing (its CPU near a full core,
requests dropped for capacity, a backlog that never drained); late sends on a busy host are
reported with their cause and judged from the intended send time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from pytest_dataplane import DataplaneAssertionError, assert_error_rate_below, assert_p95_below
from pytest_dataplane.load import run
from pytest_dataplane.load._outcomes import DROPPED, OK
from pytest_dataplane.load._result import LoadResult, Timeline


def _timeline(
    n: int, *, rate: float, lag: float = 50e-6, late: int = 0, dropped: int = 0
) -> Timeline:
    send = np.arange(n) / rate
    lags = np.full(n, lag, np.float32)
    lags[:late] = 5e-3
    outcome = np.full(n, OK, np.uint8)
    outcome[n - dropped :] = DROPPED
    latency = np.full(n, 1e-3, np.float32) + lags
    latency[outcome == DROPPED] = np.nan
    lags[outcome == DROPPED] = np.nan
    return Timeline(send, latency, lags, outcome)


def _health(
    cpu: float, *, wall: float = 10.0, idle: float = 0.0, run_delay: float | None = 0.5
) -> dict[str, Any]:
    """A worker's self-measurement: ``cpu`` share of a core, evenly over ``wall`` seconds."""
    samples = [
        [t, cpu * t, idle * t / wall, None if run_delay is None else run_delay * t / wall]
        for t in np.arange(0.0, wall + 0.125, 0.25).tolist()
    ]
    return {
        "wall": wall,
        "cpu": cpu * wall,
        "idle": idle,
        "run_delay": run_delay,
        "nivcsw": 3,
        "samples": samples,
    }


def _build(
    timeline: Timeline,
    *,
    rate: float = 100.0,
    duration: float = 10.0,
    workers: Sequence[dict[str, Any]] = (),
) -> LoadResult:
    return LoadResult.build(
        timeline, start=0.0, target_rate=rate, duration=duration, workers=workers
    )


def test_a_run_that_held_its_schedule_is_not_saturated() -> None:
    # 1 % of sends 5 ms late: p99 of the lag is still the on-time value.
    result = _build(_timeline(1000, rate=100, late=9))
    assert not result.saturated
    assert result.saturation_reason == ""
    assert result.send_lag_p99 == pytest.approx(50e-6)
    assert result.achieved_rate == pytest.approx(100, rel=0.01)


def test_late_sends_on_a_busy_host_are_reported_not_refused() -> None:
    # 2 % of sends 5 ms late while the generator used 20 % of a core: the host held the CPU.
    result = _build(_timeline(1000, rate=100, late=20), workers=[_health(0.2)])
    assert not result.saturated, result.saturation_reason
    assert result.send_lag_p99 == pytest.approx(5e-3)
    generator = result.generator
    assert generator.cpu == pytest.approx(0.2)
    assert generator.run_queue_wait == pytest.approx(0.5)
    assert generator.late == pytest.approx(0.02)
    assert generator.lateness.startswith("host busy: send lag p50 0.05 ms, p99 5.00 ms")
    assert (
        "generator CPU 20 % of a core, waited 0.50 s for a CPU (5 % of its sending time)"
        in generator.lateness
    )
    figures = result.to_dict()["generator"]
    assert figures["cpu"] == pytest.approx(0.2)
    assert figures["send_lag"]["p99"] == pytest.approx(5e-3)
    assert figures["lateness"] == generator.lateness


def test_a_generator_near_a_full_core_is_the_bottleneck() -> None:
    result = _build(_timeline(1000, rate=100, late=20), workers=[_health(0.2), _health(0.93)])
    assert result.saturated
    assert "its own CPU was 93 % of a core over the run (worker 2 of 2" in result.saturation_reason
    assert result.generator.lateness.startswith("generator saturated:")


def test_the_idle_spin_is_not_counted_as_work() -> None:
    # 97 % of a core on the clock, 90 % of it spent going round the loop waiting for the
    # next send: 7 % of real work, and sends on time.
    result = _build(_timeline(1000, rate=100), workers=[_health(0.97, idle=9.0)])
    assert not result.saturated, result.saturation_reason
    assert result.generator.cpu == pytest.approx(0.07)
    assert result.generator.lateness.startswith("on time:")


def test_a_busy_window_with_late_sends_is_the_bottleneck() -> None:
    # 50 % of a core over the run, but a full core during 2-3 s, when sends were late.
    health = _health(0.5)
    for sample in health["samples"]:
        t = sample[0]
        sample[1] = 0.5 * t + 0.5 * min(max(t - 2.0, 0.0), 1.0)
    health["cpu"] = health["samples"][-1][1]
    timeline = _timeline(1000, rate=100)
    lag = timeline.lag.copy()
    lag[200:300] = 4e-3
    late = Timeline(timeline.send, timeline.latency + lag, lag, timeline.outcome)
    result = _build(late, workers=[health])
    assert result.saturated
    assert "own CPU was 100 % of a core during 2.0-3.0 s" in result.saturation_reason
    # The same busy window with sends on time: the generator kept up.
    assert not _build(timeline, workers=[health]).saturated


def test_the_backlog_counts_sends_due_but_not_yet_sent() -> None:
    timeline = _timeline(1000, rate=100)
    lag = timeline.lag.copy()
    lag[500] = 0.0551  # a 55 ms stall: the next five were due before it left
    lag[501:506] = 0.0551 - np.arange(1, 6) * 0.01
    stalled = Timeline(timeline.send, timeline.latency + lag, lag, timeline.outcome)
    result = _build(stalled, workers=[_health(0.1)])
    assert result.generator.max_backlog == 5
    assert not result.saturated
    assert "backlog up to 5 sends" in result.generator.lateness


def test_dropped_requests_saturate() -> None:
    result = _build(_timeline(1000, rate=100, dropped=1))
    assert result.saturated
    assert "1 requests dropped, never sent (capacity exceeded" in result.saturation_reason
    assert result.scheduled == result.completed + result.errors + result.dropped == 1000


def test_an_open_loop_run_that_ends_late_falls_short_of_the_rate() -> None:
    timeline = _timeline(1000, rate=100)
    # The generator fell behind steadily: the last request left 1.5 s after its time.
    lag = np.linspace(0, 1.5, 1000).astype(np.float32)
    late = Timeline(timeline.send, timeline.latency + lag, lag, timeline.outcome)
    result = _build(late)
    assert result.saturated
    assert result.achieved_rate == pytest.approx(1000 / (9.99 + 1.5), rel=1e-3)
    assert "capacity exceeded: achieved 87.0/s < 99% of the schedule's rate 100.0/s" in (
        result.saturation_reason
    )


def test_a_closed_loop_is_held_to_the_target_rate() -> None:
    # A closed loop counts only what it sent: 900 sends on time in 10 s at a 100/s target.
    timeline = _timeline(900, rate=90)
    closed = LoadResult.build(
        timeline, start=0.0, target_rate=100.0, duration=10.0, arrival="closed", corrected=False
    )
    assert closed.saturated
    assert "achieved 90.0/s < 99% of the target 100.0/s" in closed.saturation_reason


def test_a_poisson_schedule_is_held_to_its_own_count() -> None:
    # A Poisson schedule drew 950 arrivals for 10 s at 100/s (1.6 sd low) and sent them all
    # on time: the generator held its schedule.
    rng = np.random.default_rng(0)
    send = np.sort(rng.uniform(0, 10, 950))
    base = _timeline(950, rate=95)
    timeline = Timeline(send, base.latency, base.lag, base.outcome)
    result = LoadResult.build(
        timeline, start=0.0, target_rate=100.0, duration=10.0, arrival="poisson"
    )
    assert not result.saturated, result.saturation_reason


def test_windows_inherit_the_verdict_of_the_whole_run() -> None:
    result = _build(_timeline(1000, rate=100, late=20), workers=[_health(0.9)])
    # The first 0.2 s hold all the late sends; the window after it has none, but the
    # generator was still the bottleneck of the run.
    window = result.window(5, 6)
    assert window.saturated and window.saturation_reason == result.saturation_reason
    # Its own lateness, the run's CPU.
    assert window.generator.lag_p99 == pytest.approx(50e-6)
    assert window.generator.cpu == pytest.approx(0.9)


def test_assertions_refuse_a_saturated_result() -> None:
    result = _build(_timeline(1000, rate=100, dropped=5))
    with pytest.raises(DataplaneAssertionError, match="the load generator was the bottleneck"):
        assert_p95_below(result, "1s")
    with pytest.raises(DataplaneAssertionError, match="dropped"):
        assert_error_rate_below(result, 0.5)
    healthy = _build(_timeline(1000, rate=100))
    assert assert_p95_below(healthy, "1s").outcome == "pass"


def test_a_rate_far_above_the_generators_capacity_is_refused_naming_its_cpu_or_backlog(
    closed_port: int,
) -> None:
    # Every connection is refused at once by the kernel, so nothing waits on a server: the
    # generator's own work (a socket, a connect, an error per request, ~40 µs) is all there
    # is, and 100,000 req/s is several times what one core can do. Its backlog runs away.
    result = run(f"http://127.0.0.1:{closed_port}/", rate=100_000, duration=0.3, timeout="5s")
    assert result.scheduled == result.completed + result.errors + result.dropped == 30_000
    assert result.error_kinds == {"connect_refused": 30_000}
    assert result.saturated
    reason = result.saturation_reason
    assert "its own CPU was" in reason or "backlog up to" in reason, reason
    assert result.generator.max_backlog > 1000
    assert result.generator.lateness.startswith("generator saturated:")
    with pytest.raises(DataplaneAssertionError, match="the load generator was the bottleneck"):
        assert_error_rate_below(result, 1.0)
