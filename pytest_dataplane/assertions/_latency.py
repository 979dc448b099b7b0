"""Latency percentiles and error rates of a load run below a limit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import _collect, stats
from .. import _format as fmt
from ..config import parse_duration, parse_fraction
from ..errors import InsufficientDataError
from ._core import (
    OnInconclusive,
    Verdict,
    _assert_quantile_below,
    _check_on_inconclusive,
    _check_percentile,
    _conclude,
    _decide,
    _from_send,
    _latencies,
    _percentile_name,
    _reject_saturated,
)

if TYPE_CHECKING:
    from ..load import LoadResult
    from ._core import Latencies


def assert_percentile_below(
    data: Latencies,
    q: float,
    threshold: float | str,
    *,
    confidence: float = 0.95,
    on_inconclusive: OnInconclusive = "fail",
) -> Verdict:
    """Assert that the ``q``-th percentile (0-100) of the latencies is below ``threshold``.

    ``data`` is a LoadResult or a sequence of latencies in seconds; ``threshold`` is seconds
    or a string such as ``"40ms"``. The decision uses a distribution-free ``confidence``
    interval of the percentile (binomial order statistics): pass when its upper bound is below
    the threshold, fail when its lower bound is above, inconclusive otherwise (then
    ``on_inconclusive`` decides: ``"fail"`` (default), ``"warn"`` or ``"pass"``).

    A LoadResult's latencies count from each request's intended send time. When its sends
    left late (a busy host: ``result.generator.lateness`` says how late and why), the decision
    is also made from the actual send times, and stands only if both agree; otherwise the
    result is inconclusive, saying that the generator's lateness decides it. A result whose
    load generator was itself the bottleneck (``result.saturated``) is refused.

    Raises :class:`~pytest_dataplane.errors.DataplaneAssertionError` on failure and
    :class:`~pytest_dataplane.errors.InsufficientDataError` when there are too few samples to
    bound the percentile at all (e.g. fewer than 72 for p95, 368 for p99, at 95 % confidence).
    """
    __tracebackhide__ = True
    on_inconclusive = _check_on_inconclusive(on_inconclusive)
    q = _check_percentile(q)
    limit = parse_duration(threshold, name="threshold")
    _reject_saturated(data, f"{_percentile_name(q)} latency below {fmt.seconds(limit)}")
    from_send, lateness = _from_send(data)
    return _assert_quantile_below(
        _latencies(data),
        q,
        limit,
        what="latency",
        confidence=confidence,
        on_inconclusive=on_inconclusive,
        from_send=from_send,
        lateness=lateness,
    )


def assert_p50_below(
    data: Latencies,
    threshold: float | str,
    *,
    confidence: float = 0.95,
    on_inconclusive: OnInconclusive = "fail",
) -> Verdict:
    """Assert the median latency is below ``threshold`` (see :func:`assert_percentile_below`)."""
    __tracebackhide__ = True
    return assert_percentile_below(
        data, 50, threshold, confidence=confidence, on_inconclusive=on_inconclusive
    )


def assert_p95_below(
    data: Latencies,
    threshold: float | str,
    *,
    confidence: float = 0.95,
    on_inconclusive: OnInconclusive = "fail",
) -> Verdict:
    """Assert the p95 latency is below ``threshold`` (see :func:`assert_percentile_below`)."""
    __tracebackhide__ = True
    return assert_percentile_below(
        data, 95, threshold, confidence=confidence, on_inconclusive=on_inconclusive
    )


def assert_p99_below(
    data: Latencies,
    threshold: float | str,
    *,
    confidence: float = 0.95,
    on_inconclusive: OnInconclusive = "fail",
) -> Verdict:
    """Assert the p99 latency is below ``threshold`` (see :func:`assert_percentile_below`)."""
    __tracebackhide__ = True
    return assert_percentile_below(
        data, 99, threshold, confidence=confidence, on_inconclusive=on_inconclusive
    )


def _error_counts(result: Any) -> tuple[int, int]:
    if isinstance(result, tuple) and len(result) == 2:
        errors, total = (int(v) for v in result)
        return errors, total
    if hasattr(result, "errors") and hasattr(result, "completed"):
        _collect.record_result(result)
        errors = int(result.errors)
        return errors, errors + int(result.completed)
    raise TypeError(
        "result: expected a LoadResult (with .errors and .completed) or an "
        f"(errors, total) tuple, got {type(result).__name__}"
    )


def assert_error_rate_below(
    result: LoadResult | tuple[int, int],
    max_rate: float | str,
    *,
    confidence: float = 0.95,
    on_inconclusive: OnInconclusive = "fail",
) -> Verdict:
    """Assert that the fraction of failed requests is below ``max_rate`` (``0.001`` or ``"0.1%"``).

    ``result`` is a LoadResult or an ``(errors, total)`` tuple. Uses the Clopper-Pearson
    ``confidence`` interval of the error rate with the same three outcomes as the percentile
    assertions: zero errors in 1,000 requests cannot show a rate below 0.1 % at 95 %
    confidence (about 3,700 requests can).
    """
    __tracebackhide__ = True
    on_inconclusive = _check_on_inconclusive(on_inconclusive)
    limit = parse_fraction(max_rate, name="max_rate", maximum=1.0)
    assertion = f"error rate below {fmt.percent(limit)}"
    _reject_saturated(result, assertion)
    errors, total = _error_counts(result)
    if total < 1:
        raise InsufficientDataError(
            f"{assertion}: no request finished, nothing to decide on", n=0, minimum=1
        )
    ci = stats.binomial_ci(errors, total, confidence=confidence)
    outcome = _decide(ci.low, ci.high, limit)
    needed: int | None = None
    kinds = getattr(result, "error_kinds", None) or {}
    breakdown = ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
    if outcome == "inconclusive":
        needed = stats.binomial_samples_to_decide(errors, total, limit, confidence=confidence)
        advice = (
            f"need ≈ {fmt.count(needed)} requests to decide (have {fmt.count(total)})"
            if needed
            else "the observed rate is at or above the limit; more requests will not help it pass"
        )
    elif outcome == "fail":
        advice = f"the error rate exceeds {fmt.percent(limit)} at {confidence:.0%} confidence"
    else:
        advice = f"the error rate is below {fmt.percent(limit)} at {confidence:.0%} confidence"
    verdict = Verdict(
        assertion=assertion,
        outcome=outcome,
        observed=ci.estimate,
        low=ci.low,
        high=ci.high,
        n=total,
        threshold=limit,
        unit="fraction",
        method=ci.method,
        confidence=confidence,
        needed_n=needed,
        advice=advice,
    )
    headline = {
        "pass": f"{assertion}: pass",
        "fail": f"error rate is not below {fmt.percent(limit)}",
        "inconclusive": f"error rate vs {fmt.percent(limit)} is inconclusive",
    }[outcome]
    message = (
        f"{headline}\n"
        f"  ACTUAL:    {errors} errors in {fmt.count(total)} requests = "
        f"{fmt.percent(ci.estimate)}, {confidence:.0%} CI "
        f"[{fmt.percent(ci.low)}, {fmt.percent(ci.high)}]"
        + (f"\n  errors:    {breakdown}" if breakdown else "")
        + f"\n  DESIRED:   error rate < {fmt.percent(limit)}\n"
        f"  method:    {ci.method}\n"
        f"  advice:    {advice}"
    )
    return _conclude(verdict, message, on_inconclusive)
