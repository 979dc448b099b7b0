"""Assertion helpers that decide with confidence intervals instead of single noisy numbers.

Threshold assertions have three outcomes: **pass** when the upper confidence bound is below
the threshold, **fail** when the lower bound is above it, **inconclusive** when the interval
straddles it. Inconclusive fails by default, saying how many samples would decide;
``on_inconclusive="warn"`` or ``"pass"`` relax that. Every helper returns its
:class:`Verdict` when it does not raise.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np

from . import _collect, stats
from . import _format as fmt
from .config import parse_duration, parse_fraction
from .errors import DataplaneAssertionError, InsufficientDataError, PytestDataplaneWarning

if TYPE_CHECKING:
    # For annotations only: the load generator and the providers sit above this module (the
    # import-linter layers), and the helpers take their objects by duck typing at run time.
    import numpy.typing as npt

    from .load import DuetResult, LoadResult
    from .providers.base import Cluster, RuleCount

    #: What the latency helpers take: a load run's result, or latencies in seconds.
    Latencies: TypeAlias = LoadResult | Sequence[float] | npt.NDArray[np.floating[Any]]

__all__ = [
    "Verdict",
    "assert_dataplane_cpu_below",
    "assert_error_rate_below",
    "assert_kube_rules_at_most",
    "assert_no_regression",
    "assert_p50_below",
    "assert_p95_below",
    "assert_p99_below",
    "assert_percentile_below",
    "assert_programming_latency_below",
    "regression_advice",
]

Outcome = Literal["pass", "fail", "inconclusive"]
# A send this late is late (pytest_dataplane.load._saturation.LATE; not imported: numpy-free
# import of this module matters less than keeping the load package out of it).
_LATE = 1e-3
OnInconclusive = Literal["fail", "warn", "pass"]
_ON_INCONCLUSIVE = ("fail", "warn", "pass")


@dataclass(frozen=True)
class Verdict:
    """The numbers behind one assertion's decision.

    ``observed`` is the point estimate, ``low``/``high`` its confidence interval (None where the
    assertion has none), ``unit`` one of ``"s"``, ``"fraction"``, ``"ratio"``, ``"count"``.
    """

    assertion: str
    outcome: Outcome
    observed: float
    low: float | None
    high: float | None
    n: int
    threshold: float
    unit: str
    method: str
    confidence: float | None = None
    needed_n: int | None = None
    advice: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the verdict."""
        return asdict(self)


def _decide(low: float, high: float, threshold: float) -> Outcome:
    if high < threshold:
        return "pass"
    if low > threshold:
        return "fail"
    return "inconclusive"


def _check_on_inconclusive(value: str) -> OnInconclusive:
    if value not in _ON_INCONCLUSIVE:
        raise ValueError(
            f"on_inconclusive: {value!r} is not accepted; accepted: {', '.join(_ON_INCONCLUSIVE)}"
        )
    return value  # type: ignore[return-value]


def _conclude(verdict: Verdict, message: str, on_inconclusive: OnInconclusive) -> Verdict:
    __tracebackhide__ = True
    _collect.record_verdict(verdict)
    if verdict.outcome == "fail" or (
        verdict.outcome == "inconclusive" and on_inconclusive == "fail"
    ):
        raise DataplaneAssertionError(message, verdict=verdict)
    if verdict.outcome == "inconclusive" and on_inconclusive == "warn":
        warnings.warn(PytestDataplaneWarning(message), stacklevel=3)
    return verdict


def _reject_saturated(data: Any, assertion: str) -> None:
    __tracebackhide__ = True
    if getattr(data, "saturated", False):
        reason = getattr(data, "saturation_reason", "") or "it could not hold its schedule"
        verdict = Verdict(
            assertion=assertion,
            outcome="fail",
            observed=math.nan,
            low=None,
            high=None,
            n=int(getattr(data, "completed", 0)),
            threshold=math.nan,
            unit="",
            method="load generator saturation guard",
            advice="lower the rate, use engine='fast' (the default; a third of httpx's CPU per "
            "request), or spread the load over processes=N workers",
        )
        _collect.record_verdict(verdict)
        raise DataplaneAssertionError(
            f"{assertion}: not evaluated, the load generator was the bottleneck, not the "
            f"system under test: {reason}.\n"
            f"  advice: {verdict.advice}",
            verdict=verdict,
        )


def _latencies(data: Any, name: str = "data") -> np.ndarray:
    if hasattr(data, "latencies"):
        _collect.record_result(data)
        data = data.latencies
    if isinstance(data, (str, bytes)) or not isinstance(data, (Sequence, np.ndarray)):
        raise TypeError(
            f"{name}: expected a LoadResult or a sequence of latencies in seconds, "
            f"got {type(data).__name__}"
        )
    return stats.as_sample(data, name=name)


def _percentile_name(q: float) -> str:
    return f"p{q:g}"


def _assert_quantile_below(
    sample: np.ndarray,
    q: float,
    limit: float,
    *,
    what: str,
    confidence: float,
    on_inconclusive: OnInconclusive,
    unit_name: str = "samples",
    from_send: np.ndarray | None = None,
    lateness: str = "",
) -> Verdict:
    """Three-outcome decision on the ``q``-th percentile (0-100) of ``sample`` (seconds).

    ``from_send``: the same requests' latencies measured from their actual send time; when
    given, the decision stands only if it is the same from both (see :func:`_lateness_split`).
    """
    __tracebackhide__ = True
    pname = _percentile_name(q)
    assertion = f"{pname} {what} below {fmt.seconds(limit)}"
    minimum = stats.min_samples_for_quantile(q / 100, confidence)
    if sample.size < minimum:
        raise InsufficientDataError(
            f"{assertion}: {sample.size} {unit_name} cannot bound the {pname} at "
            f"{confidence:.0%} confidence; need at least {minimum} (gather more, or ask for a "
            "lower percentile or confidence)",
            n=int(sample.size),
            minimum=minimum,
        )
    ci = stats.quantile_ci(sample, q / 100, confidence=confidence)
    outcome = _decide(ci.low, ci.high, limit)
    if from_send is not None:
        split = _lateness_split(
            ci, from_send, q, limit, assertion=assertion, confidence=confidence, lateness=lateness
        )
        if split is not None:
            verdict, message = split
            return _conclude(verdict, message, on_inconclusive)
    needed = (
        stats.samples_to_decide(sample, q / 100, limit, confidence=confidence)
        if outcome == "inconclusive"
        else None
    )
    if outcome == "pass":
        advice = f"the {pname} is below {fmt.seconds(limit)} at {confidence:.0%} confidence"
    elif outcome == "fail":
        advice = (
            f"even the lower bound is above the threshold: the {pname} exceeds "
            f"{fmt.seconds(limit)} at {confidence:.0%} confidence"
        )
    elif needed is None:
        advice = (
            f"the {pname} sits on the threshold; no sample size will separate them: "
            "change the threshold or the system"
        )
    else:
        advice = (
            f"need ≈ {fmt.count(needed)} {unit_name} to decide (have {fmt.count(ci.n)}): "
            "gather more (run longer or at a higher rate), or pass on_inconclusive='warn'"
        )
    verdict = Verdict(
        assertion=assertion,
        outcome=outcome,
        observed=ci.estimate,
        low=ci.low,
        high=ci.high,
        n=ci.n,
        threshold=limit,
        unit="s",
        method=ci.method,
        confidence=confidence,
        needed_n=needed,
        advice=advice,
    )
    headline = {
        "pass": f"{assertion}: pass",
        "fail": f"{pname} {what} is not below {fmt.seconds(limit)}",
        "inconclusive": (
            f"{pname} {what} vs {fmt.seconds(limit)} is inconclusive: the "
            f"{confidence:.0%} CI contains the threshold"
        ),
    }[outcome]
    message = (
        f"{headline}\n"
        f"  ACTUAL:    {pname} = {fmt.seconds(ci.estimate)}, {confidence:.0%} CI "
        f"[{fmt.seconds(ci.low)}, {fmt.seconds(ci.high)}], n = {fmt.count(ci.n)}\n"
        f"  DESIRED:   {pname} < {fmt.seconds(limit)}\n"
        f"  method:    {ci.method} (ranks {fmt.count(ci.low_rank)} and "
        f"{fmt.count(ci.high_rank)}, exact coverage {ci.coverage:.3f})\n"
        f"  advice:    {advice}"
        + (
            f"\n  lateness:  {lateness}; the verdict is the same from the actual send time"
            if lateness
            else ""
        )
    )
    return _conclude(verdict, message, on_inconclusive)


def _from_send(data: Any) -> tuple[np.ndarray | None, str]:
    """Latencies from the actual send time, and why sends were late, for a LoadResult whose
    sends were late enough to matter (None otherwise: the intended time is the only one)."""
    timeline = getattr(data, "timeline", None)
    generator = getattr(data, "generator", None)
    if timeline is None or generator is None or not getattr(data, "corrected", True):
        return None, ""
    if not float(getattr(generator, "lag_max", 0.0)) > 0:
        return None, ""
    ok = np.asarray(timeline.outcome) == 0
    latency = np.asarray(timeline.latency, dtype=np.float64)[ok]
    lag = np.asarray(timeline.lag, dtype=np.float64)[ok]
    from_send = np.maximum(latency - lag, 0.0)
    late = float(getattr(generator, "lag_p99", 0.0)) > _LATE
    return from_send, (str(getattr(generator, "lateness", "")) if late else "")


def _lateness_split(
    ci: stats.QuantileCI,
    from_send: np.ndarray,
    q: float,
    limit: float,
    *,
    assertion: str,
    confidence: float,
    lateness: str,
) -> tuple[Verdict, str] | None:
    """The refusal when the generator's lateness decides the verdict, else None.

    Latency counts from the intended send time (a late send is what a client on that busy
    host would see). But where the generator's own lateness could decide the outcome — the
    same percentile from the actual send time lands on the other side — no verdict is given:
    the run cannot tell the system's latency from the client's delay.
    """
    if from_send.size != ci.n:
        return None
    other = stats.quantile_ci(from_send, q / 100, confidence=confidence)
    outcome, alternative = _decide(ci.low, ci.high, limit), _decide(other.low, other.high, limit)
    if outcome == alternative:
        return None
    pname = _percentile_name(q)
    advice = (
        "give the load generator a CPU of its own (fewer parallel jobs on the machine), "
        "or set the threshold where the late sends cannot move the verdict"
    )
    verdict = Verdict(
        assertion=assertion,
        outcome="inconclusive",
        observed=ci.estimate,
        low=min(ci.low, other.low),
        high=max(ci.high, other.high),
        n=ci.n,
        threshold=limit,
        unit="s",
        method=f"{ci.method}, from the intended and from the actual send time",
        confidence=confidence,
        advice=advice,
    )

    def line(c: stats.QuantileCI, decided: str) -> str:
        return (
            f"{pname} = {fmt.seconds(c.estimate)}, {confidence:.0%} CI "
            f"[{fmt.seconds(c.low)}, {fmt.seconds(c.high)}] -> {decided}"
        )

    message = (
        f"{assertion}: not decided, the load generator's late sends decide it\n"
        f"  from the intended send time: {line(ci, outcome)}\n"
        f"  from the actual send time:   {line(other, alternative)}\n"
        f"  lateness:  {lateness or 'sends were late'}\n"
        f"  DESIRED:   {pname} < {fmt.seconds(limit)}, n = {fmt.count(ci.n)}\n"
        f"  advice:    {advice}"
    )
    return verdict, message


def _check_percentile(q: object, name: str = "q") -> float:
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q < 100:
        raise ValueError(
            f"{name}: {q!r} is not a percentile; accepted: a number strictly between 0 and 100"
        )
    return float(q)


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


def regression_advice(check: stats.RegressionCheck, pname: str) -> str:
    """What a regression check found, in words: the advice line of
    :func:`assert_no_regression`'s message and the reason of a
    :func:`pytest_dataplane.baseline.compare` pair. ``pname`` names the quantile (``"p95"``).
    """
    change, floor = check.change, check.max_increase
    if check.regressed:
        return (
            f"the {pname} grew by at least {fmt.percent(change.low)} at "
            f"{1 - check.alpha:.0%} confidence, more than the allowed {fmt.percent(floor)}"
        )
    if not check.ruled_out:
        return (
            f"no evidence of an increase above {fmt.percent(floor)}, but the data cannot rule "
            f"one out either (upper bound {fmt.percent(change.high)}); "
            "more samples would tighten it"
        )
    return f"any increase of the {pname} is below {fmt.percent(floor)}"


def _pairing(baseline: Any, candidate: Any) -> tuple[Any, Any, str | None]:
    """``(baseline, candidate, duet id)``: a duet result is split into its sides; two sides
    of one duet are recognised by their shared id (None for independent runs)."""
    if candidate is None:
        if hasattr(baseline, "baseline") and hasattr(baseline, "candidate"):
            return baseline.baseline, baseline.candidate, str(getattr(baseline, "id", "duet"))
        raise TypeError(
            "candidate: missing; pass two results (or latency sequences), or one duet result "
            f"(load.duet(...)'s run.result), not a {type(baseline).__name__} alone"
        )
    ids = []
    for side in (baseline, candidate):
        extra = getattr(side, "extra", None)
        duet = extra.get("duet") if isinstance(extra, dict) else None
        ids.append(duet.get("id") if isinstance(duet, dict) else None)
    paired = ids[0] if ids[0] is not None and ids[0] == ids[1] else None
    return baseline, candidate, paired


def _send_times(data: Any) -> np.ndarray:
    """Intended send times of a LoadResult's completed requests (aligned with .latencies)."""
    timeline = data.timeline
    ok = np.asarray(timeline.outcome) == 0
    send: np.ndarray = np.asarray(timeline.send, dtype=np.float64)[ok]
    return send


def _dependence_note(check: stats.RegressionCheck) -> str:
    if not check.dependence:
        return ""
    if check.paired:
        d = check.dependence[0]
        return (
            f"; paired duet, variance inflation of the difference {d.inflation:.2f} over "
            f"{d.windows} shared windows"
        )
    a, b = check.dependence
    return (
        f"; variance inflation {a.inflation:.2f} / {b.inflation:.2f} over {a.windows} windows "
        f"(effective n {fmt.count(round(min(a.n_effective, a.n)))} / "
        f"{fmt.count(round(min(b.n_effective, b.n)))})"
    )


def assert_no_regression(
    baseline: Latencies | DuetResult,
    candidate: Latencies | None = None,
    *,
    quantile: float = 95,
    max_increase: float | str = 0.10,
    alpha: float = 0.01,
) -> Verdict:
    """Assert that the candidate's latency quantile grew by at most ``max_increase``.

    Fails only on evidence: when the one-sided ``1 - alpha`` lower confidence bound of the
    relative change ``candidate_q / baseline_q - 1`` exceeds ``max_increase`` (``0.10`` or
    ``"10%"``). The effect-size floor keeps tiny real differences on huge samples from failing
    builds; the bound comes from the exact bootstrap of the quantile ratio, widened by how
    dependent each run's latencies are (bursts, syncs, a busy machine: measured over 10
    consecutive windows of the run, see :func:`pytest_dataplane.stats.regression_check`), so
    that two runs of the same thing do not fail more often than ``alpha`` promises. A
    Mann-Whitney U test is reported alongside as supporting evidence of a shift.

    ``baseline`` and ``candidate`` are LoadResults or latency sequences in the order measured.
    A duet (``load.duet(...)``) is compared *paired*, window by window of its shared
    schedule: pass its result alone (``assert_no_regression(run.result)``) or its two sides.
    """
    __tracebackhide__ = True
    stats.check_alpha_quantile(alpha, quantile)
    floor = parse_fraction(max_increase, name="max_increase")
    pname = _percentile_name(quantile)
    assertion = f"no {pname} regression above {fmt.percent(floor)}"
    baseline, candidate, duet_id = _pairing(baseline, candidate)
    _reject_saturated(baseline, assertion)
    _reject_saturated(candidate, assertion)
    a = _latencies(baseline, "baseline")
    b = _latencies(candidate, "candidate")
    minimum = stats.min_samples_for_quantile(quantile / 100, 1 - 2 * alpha)
    for name, sample in (("baseline", a), ("candidate", b)):
        if sample.size < minimum:
            raise InsufficientDataError(
                f"{assertion}: {name} has {sample.size} samples; the {pname} needs at least "
                f"{minimum} for a one-sided bound at alpha={alpha:g}",
                n=int(sample.size),
                minimum=minimum,
            )
    if duet_id is not None:
        check = stats.regression_check(
            a,
            b,
            quantile / 100,
            max_increase=floor,
            alpha=alpha,
            baseline_times=_send_times(baseline),
            candidate_times=_send_times(candidate),
            paired=True,
        )
    else:
        check = stats.regression_check(a, b, quantile / 100, max_increase=floor, alpha=alpha)
    change, shift = check.change, check.shift
    outcome: Outcome = "fail" if check.regressed else "pass"
    advice = regression_advice(check, pname)
    if (
        not check.regressed
        and not check.paired
        and check.dependence
        and max(d.inflation for d in check.dependence) > 2
    ):
        advice += (
            "; the runs' latencies cluster in time (inflation above 2): a duet "
            "(load.duet(baseline, candidate, ...)) compares both on the same moments"
        )
    method = change.method + _dependence_note(check)
    verdict = Verdict(
        assertion=assertion,
        outcome=outcome,
        observed=change.change,
        low=change.low,
        high=change.high,
        n=min(change.n_baseline, change.n_candidate),
        threshold=floor,
        unit="ratio",
        method=method,
        confidence=1 - 2 * alpha,
        advice=advice,
    )
    message = (
        f"{pname} latency regressed by more than {fmt.percent(floor)}\n"
        f"  ACTUAL:    {pname} {fmt.seconds(change.baseline)} -> {fmt.seconds(change.candidate)} "
        f"({change.change:+.1%}); one-sided {1 - alpha:.0%} lower bound {change.low:+.1%} "
        f"(two-sided {1 - 2 * alpha:.0%} CI [{change.low:+.1%}, {change.high:+.1%}]), "
        f"n = {fmt.count(change.n_baseline)} / {fmt.count(change.n_candidate)}\n"
        f"  DESIRED:   increase <= {fmt.percent(floor)}\n"
        f"  method:    {method}; {shift.method} p = {shift.pvalue:.2g}, "
        f"P(candidate > baseline) = {shift.effect:.3f}\n"
        f"  advice:    {advice}"
    )
    return _conclude(verdict, message, "fail")


def _rule_count(cluster_or_count: Any) -> tuple[int, str]:
    if isinstance(cluster_or_count, bool):
        raise TypeError("cluster_or_count: expected a cluster, a RuleCount or an int, got bool")
    if isinstance(cluster_or_count, int):
        return cluster_or_count, ""
    count = cluster_or_count
    if hasattr(count, "rule_count"):
        _collect.record_cluster(count)
        count = count.rule_count()
    if hasattr(count, "total"):
        describe = getattr(count, "describe", None)
        return int(count.total), describe() if callable(describe) else ""
    raise TypeError(
        "cluster_or_count: expected a cluster (with rule_count()), a RuleCount or an int, "
        f"got {type(cluster_or_count).__name__}"
    )


def assert_kube_rules_at_most(cluster_or_count: Cluster | RuleCount | int, n: int) -> Verdict:
    """Assert that the dataplane holds at most ``n`` ``KUBE-`` rule lines.

    Counts what the motivating story counts: ``iptables-save`` lines (nat and filter, legacy
    and nft backends) containing ``KUBE-``, plus the lines of the ``kube-proxy`` nftables
    table, summed over nodes. ``cluster_or_count`` is a cluster, a RuleCount or an int; the
    failure message shows the breakdown by node, backend and table and the largest chains.

    Only what the dataplane wrote counts: on nodes that run a kubelet (kind, existing
    clusters), the lines of kubelet's own chains (``KUBE-FIREWALL`` with its DROP rule,
    ``KUBE-KUBELET-CANARY`` and the jumps to them, about six per node whatever the dataplane)
    are excluded by name, not by subtracting a baseline taken after the cluster was created,
    and shown apart in the breakdown (``RuleCount.kubelet_parts``).
    """
    __tracebackhide__ = True
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: {n!r} is not accepted; accepted: an integer >= 0")
    total, breakdown = _rule_count(cluster_or_count)
    outcome: Outcome = "pass" if total <= n else "fail"
    verdict = Verdict(
        assertion=f"KUBE- rule lines at most {n:,}",
        outcome=outcome,
        observed=float(total),
        low=None,
        high=None,
        n=1,
        threshold=float(n),
        unit="count",
        method="iptables-save lines containing KUBE- plus kube-proxy nftables table lines",
        advice=""
        if outcome == "pass"
        else "a dataplane without per-service rules (eBPF) keeps this flat as services grow",
    )
    message = (
        f"the dataplane holds more KUBE- rule lines than allowed\n"
        f"  ACTUAL:    {total:,} KUBE- rule lines\n"
        f"  DESIRED:   at most {n:,}\n"
        + (
            f"  breakdown: {breakdown.replace(chr(10), chr(10) + '             ')}\n"
            if breakdown
            else ""
        )
        + f"  method:    {verdict.method}"
    )
    return _conclude(verdict, message, "fail")


def _cluster_sample(cluster: Any, method: str) -> np.ndarray:
    if not hasattr(cluster, method):
        raise TypeError(
            f"cluster: expected a cluster with {method}(), got {type(cluster).__name__}"
        )
    _collect.record_cluster(cluster)
    return stats.as_sample(getattr(cluster, method)(), name=method)


def _assert_every_below(
    sample: np.ndarray, limit: float, *, what: str, unit_name: str, labels: Any = None
) -> Verdict:
    __tracebackhide__ = True
    if sample.size == 0:
        raise InsufficientDataError(f"{what}: no {unit_name} recorded", n=0, minimum=1)
    worst = int(np.argmax(sample))
    outcome: Outcome = "pass" if sample[worst] < limit else "fail"
    over = int(np.count_nonzero(sample >= limit))
    verdict = Verdict(
        assertion=f"every {what} below {fmt.seconds(limit)}",
        outcome=outcome,
        observed=float(sample[worst]),
        low=None,
        high=None,
        n=int(sample.size),
        threshold=limit,
        unit="s",
        method=f"maximum over the {unit_name} observed (quantile=100)",
    )
    name = f" ({labels[worst]})" if labels is not None and len(labels) > worst else ""
    message = (
        f"{over} of {sample.size} {unit_name} took {fmt.seconds(limit)} or more\n"
        f"  ACTUAL:    max {what} = {fmt.seconds(float(sample[worst]))}{name}\n"
        f"  DESIRED:   every {what} < {fmt.seconds(limit)}\n"
        f"  method:    {verdict.method}"
    )
    return _conclude(verdict, message, "fail")


def assert_programming_latency_below(
    cluster: Cluster,
    threshold: float | str,
    *,
    quantile: float = 95,
    confidence: float = 0.95,
    on_inconclusive: OnInconclusive = "fail",
) -> Verdict:
    """Assert that network-programming latency stays below ``threshold``.

    Programming latency is measured per endpoint change, as in Kubernetes' SLI: from the
    change to the moment the dataplane reflects it. The ``quantile`` (0-100) is decided with
    the same distribution-free CI and three outcomes as the latency assertions, which needs
    enough changes (72 for the p95); ``quantile=100`` instead checks every observed change
    (the maximum), with no statistical claim beyond the changes seen.
    """
    __tracebackhide__ = True
    on_inconclusive = _check_on_inconclusive(on_inconclusive)
    limit = parse_duration(threshold, name="threshold")
    sample = _cluster_sample(cluster, "programming_latencies")
    if quantile == 100:
        return _assert_every_below(
            sample, limit, what="network-programming latency", unit_name="endpoint changes"
        )
    return _assert_quantile_below(
        sample,
        _check_percentile(quantile, "quantile"),
        limit,
        what="network-programming latency",
        confidence=confidence,
        on_inconclusive=on_inconclusive,
        unit_name="endpoint changes",
    )


def assert_dataplane_cpu_below(
    cluster: Cluster,
    seconds_per_change: float | str,
    *,
    quantile: float = 95,
    confidence: float = 0.95,
    on_inconclusive: OnInconclusive = "fail",
) -> Verdict:
    """Assert that applying an endpoint change costs the dataplane less than
    ``seconds_per_change`` of CPU (user + system) at the given ``quantile``.

    The CPU comes from ``cluster.cpu_seconds()``: in the lab, the rusage of every
    iptables-restore / nft / bpftool run plus the proxier's own work, attributed to the
    changes each sync carried; on kind, the kube-proxy or cilium-agent container's cgroup.
    Same three outcomes as the latency assertions; ``quantile=100`` checks every change. A
    failure names the heaviest changes.
    """
    __tracebackhide__ = True
    on_inconclusive = _check_on_inconclusive(on_inconclusive)
    limit = parse_duration(seconds_per_change, name="seconds_per_change")
    if not hasattr(cluster, "cpu_seconds"):
        raise TypeError(
            f"cluster: expected a cluster with cpu_seconds(), got {type(cluster).__name__}"
        )
    _collect.record_cluster(cluster)
    usage = cluster.cpu_seconds()
    sample = stats.as_sample(usage.per_change, name="cpu per change")
    labels = list(usage.changes)
    try:
        if quantile == 100:
            return _assert_every_below(
                sample,
                limit,
                what="CPU per endpoint change",
                unit_name="endpoint changes",
                labels=labels,
            )
        return _assert_quantile_below(
            sample,
            _check_percentile(quantile, "quantile"),
            limit,
            what="dataplane CPU per endpoint change",
            confidence=confidence,
            on_inconclusive=on_inconclusive,
            unit_name="endpoint changes",
        )
    except DataplaneAssertionError as exc:
        order = np.argsort(sample)[::-1][:3]
        heaviest = ", ".join(
            f"{labels[i] if i < len(labels) else f'change {i}'} ({fmt.seconds(float(sample[i]))})"
            for i in order
        )
        raise DataplaneAssertionError(
            f"{exc}\n  heaviest:  {heaviest}\n  total:     {fmt.seconds(usage.total)} of CPU "
            f"over {len(sample)} changes and every sync",
            verdict=exc.verdict,
        ) from None
