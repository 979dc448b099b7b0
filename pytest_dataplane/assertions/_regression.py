"""No regression between two runs (or the two sides of a duet) at a latency quantile."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _format as fmt
from .. import stats
from ..config import parse_fraction
from ..errors import InsufficientDataError
from ._core import (
    Outcome,
    Verdict,
    _conclude,
    _latencies,
    _percentile_name,
    _reject_saturated,
)

if TYPE_CHECKING:
    from ..load import DuetResult
    from ._core import Latencies


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
