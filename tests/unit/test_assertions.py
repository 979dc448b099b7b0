"""Assertion helpers: three outcomes, messages, saturation, recording, python -O."""

from __future__ import annotations

import subprocess
import sys
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import pytest

from pytest_dataplane import (
    DataplaneAssertionError,
    InsufficientDataError,
    PytestDataplaneWarning,
    _collect,
    assert_error_rate_below,
    assert_no_regression,
    assert_p50_below,
    assert_p95_below,
    assert_p99_below,
    assert_percentile_below,
)
from pytest_dataplane.load import DuetResult, LoadResult, Timeline


@pytest.fixture
def latencies() -> np.ndarray:
    rng = np.random.default_rng(42)
    return 0.010 * rng.lognormal(0.0, 0.5, 5000)


@dataclass
class FakeResult:
    latencies: np.ndarray
    completed: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    saturated: bool = False
    saturation_reason: str = ""


def test_pass_fail_inconclusive(latencies: np.ndarray) -> None:
    p95 = float(np.quantile(latencies, 0.95))
    verdict = assert_p95_below(latencies, p95 * 1.2)
    assert verdict.outcome == "pass" and verdict.high < p95 * 1.2
    with pytest.raises(DataplaneAssertionError) as failed:
        assert_p95_below(latencies, p95 * 0.8)
    assert failed.value.verdict.outcome == "fail"  # type: ignore[attr-defined]
    with pytest.raises(DataplaneAssertionError) as unsure:
        assert_p95_below(latencies, p95 * 1.005)
    assert unsure.value.verdict.outcome == "inconclusive"  # type: ignore[attr-defined]
    assert "samples to decide" in str(unsure.value)


def test_failure_message_shows_the_numbers(latencies: np.ndarray) -> None:
    with pytest.raises(DataplaneAssertionError) as excinfo:
        assert_p95_below(latencies, "10ms")
    message = str(excinfo.value)
    for expected in (
        "p95 latency is not below 10 ms",
        "ACTUAL:",
        "95% CI [",
        "n = 5,000",
        "DESIRED:   p95 < 10 ms",
        "binomial order statistics",
        "advice:",
    ):
        assert expected in message, expected
    assert isinstance(excinfo.value, AssertionError)


def test_thresholds_accept_strings_and_seconds(latencies: np.ndarray) -> None:
    assert assert_p50_below(latencies, "50ms").threshold == pytest.approx(0.05)
    assert assert_p50_below(latencies, 0.05).threshold == pytest.approx(0.05)
    assert assert_p99_below(latencies, "1s").outcome == "pass"
    assert assert_percentile_below(latencies, 90, "1s").assertion.startswith("p90 latency")


def test_on_inconclusive(latencies: np.ndarray) -> None:
    p95 = float(np.quantile(latencies, 0.95))
    with pytest.warns(PytestDataplaneWarning, match="inconclusive"):
        verdict = assert_p95_below(latencies, p95, on_inconclusive="warn")
    assert verdict.outcome == "inconclusive"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert assert_p95_below(latencies, p95, on_inconclusive="pass").outcome == "inconclusive"
    with pytest.raises(ValueError, match="on_inconclusive: 'maybe'"):
        assert_p95_below(latencies, p95, on_inconclusive="maybe")  # type: ignore[arg-type]


def test_too_few_samples() -> None:
    with pytest.raises(InsufficientDataError, match="need at least 368") as excinfo:
        assert_p99_below(np.full(100, 0.001), "1s")
    assert excinfo.value.minimum == 368 and excinfo.value.n == 100


@pytest.mark.parametrize(
    ("data", "error"),
    [("fast", TypeError), (42, TypeError), ([0.1, float("nan")] * 50, ValueError)],
)
def test_bad_data(data: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        assert_p95_below(data, "1s")


@pytest.mark.parametrize("q", [0, 100, -1, "95", True])
def test_bad_percentile(latencies: np.ndarray, q: object) -> None:
    with pytest.raises(ValueError, match=r"q: .* strictly between 0 and 100"):
        assert_percentile_below(latencies, q, "1s")  # type: ignore[arg-type]


def test_result_objects_and_saturation(latencies: np.ndarray) -> None:
    result = FakeResult(latencies, completed=latencies.size)
    assert assert_p95_below(result, "1s").outcome == "pass"
    saturated = FakeResult(
        latencies,
        completed=latencies.size,
        saturated=True,
        saturation_reason="send lag p99 4.20 ms > 1 ms",
    )
    for check in (
        lambda: assert_p95_below(saturated, "1s"),
        lambda: assert_error_rate_below(saturated, 0.5),
        lambda: assert_no_regression(result, saturated),
    ):
        with pytest.raises(DataplaneAssertionError, match="load generator was the bottleneck"):
            check()


def test_error_rate_outcomes() -> None:
    assert assert_error_rate_below((0, 10_000), "0.1%").outcome == "pass"
    with pytest.raises(DataplaneAssertionError, match="inconclusive") as unsure:
        assert_error_rate_below((0, 1000), "0.1%")
    assert "need ≈ 3,688 requests" in str(unsure.value)
    with pytest.raises(DataplaneAssertionError, match=r"error rate is not below 0\.1%") as failed:
        assert_error_rate_below(
            FakeResult(
                np.ones(1),
                completed=9_900,
                errors=100,
                error_kinds={"connect_refused": 70, "reset": 30},
            ),
            0.001,
        )
    assert "connect_refused: 70, reset: 30" in str(failed.value)
    with pytest.raises(ValueError, match="max_rate"):
        assert_error_rate_below((0, 10), "150%")
    with pytest.raises(TypeError, match=r"\(errors, total\)"):
        assert_error_rate_below([1, 2, 3], 0.1)
    with pytest.raises(InsufficientDataError):
        assert_error_rate_below((0, 0), 0.1)


def test_no_regression_messages(latencies: np.ndarray) -> None:
    verdict = assert_no_regression(latencies, latencies * 1.01, max_increase="10%")
    assert verdict.outcome == "pass"
    with pytest.raises(DataplaneAssertionError) as excinfo:
        assert_no_regression(latencies, latencies * 1.5)
    message = str(excinfo.value)
    assert "p95 latency regressed by more than 10.0%" in message
    assert "+50.0%" in message and "Mann-Whitney U" in message and "lower bound" in message
    with pytest.raises(InsufficientDataError, match="baseline has 10 samples"):
        assert_no_regression(latencies[:10], latencies)
    with pytest.raises(ValueError, match="alpha"):
        assert_no_regression(latencies, latencies, alpha=0.7)


def test_verdicts_are_recorded_for_the_report(latencies: np.ndarray) -> None:
    record = _collect.begin()
    try:
        assert_p95_below(latencies, "1s")
        with pytest.raises(DataplaneAssertionError):
            assert_p95_below(latencies, "1ms")
        assert [v.outcome for v in record.verdicts] == ["pass", "fail"]
        assert record.verdicts[1].to_dict()["threshold"] == pytest.approx(0.001)
    finally:
        _collect.finish()


def test_assertions_survive_python_dash_O() -> None:
    code = (
        "import numpy as np\n"
        "from pytest_dataplane import assert_p95_below\n"
        "try:\n"
        "    assert_p95_below(np.full(1000, 0.5), '1ms')\n"
        "except AssertionError as e:\n"
        "    print('raised', type(e).__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-O", "-c", code], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "raised DataplaneAssertionError"


def test_helper_frames_are_hidden_from_tracebacks(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import numpy as np
        from pytest_dataplane import assert_p95_below

        def test_slow():
            assert_p95_below(np.full(1000, 0.5), "40ms")
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            '*assert_p95_below(np.full(1000, 0.5), "40ms")*',
            "E*DataplaneAssertionError: p95 latency is not below 40 ms*",
        ]
    )
    result.stdout.no_fnmatch_line("*pytest_dataplane/assertions.py*")


def _late_result(late_every: int, lag: float, *, cpu: float = 0.2) -> LoadResult:
    """2,000 requests at 100/s answering in 8-12 ms from their actual send; every
    ``late_every``-th left ``lag`` seconds late (a busy host), the generator at ``cpu``."""
    rng = np.random.default_rng(7)
    n = 2000
    send = np.arange(n) / 100.0
    lags = np.full(n, 20e-6, np.float32)
    lags[::late_every] = lag
    service = rng.uniform(8e-3, 12e-3, n).astype(np.float32)
    timeline = Timeline(send, service + lags, lags, np.zeros(n, np.uint8))
    health = {"wall": 20.0, "cpu": cpu * 20.0, "idle": 0.0, "run_delay": 2.0, "samples": []}
    return LoadResult.build(timeline, start=0.0, target_rate=100, duration=20, workers=[health])


def test_lateness_that_decides_the_verdict_is_refused() -> None:
    # 10 % of sends 30 ms late: from the intended send time the p95 is ~40 ms, from the
    # actual send ~12 ms. A 20 ms threshold is on different sides of the two.
    result = _late_result(10, 30e-3)
    assert not result.saturated
    with pytest.raises(DataplaneAssertionError) as refused:
        assert_p95_below(result, "20ms")
    message = str(refused.value)
    assert "not decided, the load generator's late sends decide it" in message
    assert "from the intended send time: p95 = 39.9 ms" in message and "-> fail" in message
    assert "from the actual send time:   p95 = 11.8 ms" in message and "-> pass" in message
    assert "host busy: send lag p50 0.02 ms, p99 30.00 ms" in message
    assert "generator CPU 20 % of a core" in message
    verdict = refused.value.verdict  # type: ignore[attr-defined]
    assert verdict.outcome == "inconclusive"
    assert "from the intended and from the actual send time" in verdict.method
    with pytest.warns(PytestDataplaneWarning, match="late sends decide it"):
        assert_p95_below(result, "20ms", on_inconclusive="warn")


def test_lateness_that_cannot_change_the_verdict_is_reported_with_it() -> None:
    result = _late_result(10, 30e-3)
    # Both sides agree: a pass at 100 ms and a fail at 5 ms, judged from the intended time.
    assert assert_p95_below(result, "100ms").outcome == "pass"
    with pytest.raises(DataplaneAssertionError) as failed:
        assert_p95_below(result, "5ms")
    message = str(failed.value)
    assert "p95 latency is not below 5 ms" in message
    assert "lateness:  host busy" in message
    assert "the verdict is the same from the actual send time" in message
    # Sends on time: no lateness line at all.
    on_time = _late_result(10, 50e-6)
    with pytest.raises(DataplaneAssertionError) as strict:
        assert_p95_below(on_time, "5ms")
    assert "lateness" not in str(strict.value)


def test_a_really_saturated_generator_is_refused_naming_its_cpu() -> None:
    result = _late_result(10, 30e-3, cpu=0.97)
    assert result.saturated
    with pytest.raises(DataplaneAssertionError, match="the load generator was the bottleneck") as e:
        assert_p95_below(result, "100ms")
    assert "its own CPU was 97 % of a core over the run" in str(e.value)


# --------------------------------------------------------------------------- duets


def _side(latency: np.ndarray, send: np.ndarray, duet_id: str, side: str) -> LoadResult:
    timeline = Timeline(
        send.astype(np.float64),
        latency.astype(np.float32),
        np.zeros(latency.size, np.float32),
        np.zeros(latency.size, np.uint8),
    )
    result = LoadResult.build(timeline, start=0.0, target_rate=300.0, duration=5.0)
    info = {"id": duet_id, "side": side, "slot": int(side == "candidate"), "slots": 2}
    return replace(result, extra={**result.extra, "duet": info}, saturated=False)


def _duet(slowdown: float, *, seed: int = 7, duet_id: str = "d1") -> DuetResult:
    """Both sides of one 300 + 300 req/s schedule through the same stalls."""
    rng = np.random.default_rng(seed)
    n = 1500
    stall = np.ones(2 * n)
    stall[600:900] = 3.0  # a second-long sync that both sides sit through
    send = np.arange(2 * n) / 600.0
    base = 0.010 * rng.lognormal(0.0, 0.4, n) * stall[0::2]
    cand = 0.010 * rng.lognormal(0.0, 0.4, n) * stall[1::2] * slowdown
    return DuetResult(
        baseline=_side(base, send[0::2], duet_id, "baseline"),
        candidate=_side(cand, send[1::2], duet_id, "candidate"),
        rate=300.0,
        duration=5.0,
        arrival="constant",
        offset=1 / 600,
        id=duet_id,
    )


def test_a_duet_is_compared_paired() -> None:
    same = _duet(1.0)
    verdict = assert_no_regression(same)
    assert verdict.outcome == "pass"
    assert "paired duet" in verdict.method
    # Its two sides, passed apart, are recognised by their shared id.
    assert assert_no_regression(same.baseline, same.candidate) == verdict
    with pytest.raises(DataplaneAssertionError) as excinfo:
        assert_no_regression(_duet(1.6, seed=8))
    message = str(excinfo.value)
    for part in ("ACTUAL:", "DESIRED:   increase <= 10.0%", "paired duet", "advice:", "n = 1,500"):
        assert part in message


def test_sides_of_different_runs_are_not_paired() -> None:
    one, other = _duet(1.0, duet_id="d1"), _duet(1.0, seed=9, duet_id="d2")
    verdict = assert_no_regression(one.baseline, other.candidate)
    assert "paired" not in verdict.method and "variance inflation" in verdict.method


def test_clustered_runs_get_the_duet_advice() -> None:
    sides = _duet(1.0)
    # The same stall in one run only: the windows see it, widen the interval, and say why.
    rng = np.random.default_rng(3)
    calm = 0.010 * rng.lognormal(0.0, 0.4, 1500)
    verdict = assert_no_regression(calm, sides.candidate.latencies)
    assert verdict.outcome == "pass"
    assert "a duet" in verdict.advice and "inflation" in verdict.method


def test_a_lone_result_is_not_a_comparison(latencies: np.ndarray) -> None:
    with pytest.raises(TypeError, match="candidate: missing"):
        assert_no_regression(latencies)
