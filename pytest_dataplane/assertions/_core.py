"""The decision every helper shares: the :class:`Verdict`, its three outcomes, and a
quantile held below a limit (with the load generator's lateness taken into account)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .. import _collect, stats
from .. import _format as fmt
from ..errors import DataplaneAssertionError, InsufficientDataError, PytestDataplaneWarning

if TYPE_CHECKING:
    # For annotations only: the load generator and the providers sit above this package (the
    # import-linter layers), and the helpers take their objects by duck typing at run time.
    from typing import TypeAlias

    import numpy.typing as npt

    from ..load import LoadResult

    #: What the latency helpers take: a load run's result, or latencies in seconds.
    Latencies: TypeAlias = LoadResult | Sequence[float] | npt.NDArray[np.floating[Any]]


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
