"""Two samples: the relative change of a quantile (exact bootstrap), the dependence of a
run's latencies, the regression check built from both, and the rank and KS tests (see the
package docstring for the methods)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
from scipy import stats as _st

from ._intervals import FloatArray, _check_confidence, _check_q, as_sample, check_alpha_quantile

# Past this many (baseline x candidate) support points the exact bootstrap switches to the
# normal approximation of its own moments; at that size the two agree to well under 1 %.
_EXACT_PAIR_LIMIT = 4_000_000
# Order statistics further than this many binomial standard deviations from the quantile's
# rank carry less than 1e-15 of the bootstrap mass.
_TAIL_SDS = 8.5
#: Consecutive windows a run is split into to measure the dependence of its latencies. Few
#: long windows see slow drifts (a sync lasting a second of a 3 s run) that many short ones
#: would miss; the Student-t factor pays for estimating a variance from so few. Chosen on
#: real lab runs (benchmarks/calibration.py).
DEPENDENCE_WINDOWS: Final = 10


def _order_statistic_bootstrap(sorted_sample: FloatArray, k: int) -> tuple[FloatArray, FloatArray]:
    """Support and probabilities of the resampled k-th order statistic (1-based k)."""
    n = sorted_sample.size
    sd = math.sqrt(n * (k / n) * (1 - k / n)) + 1.0
    first = max(1, math.floor(k - _TAIL_SDS * sd - 2))
    last = min(n, math.ceil(k + _TAIL_SDS * sd + 2))
    j = np.arange(first - 1, last + 1, dtype=np.float64)
    # P(X*_(k) <= x_(j)) = P(#resampled values <= x_(j) is >= k) = P(Bin(n, j/n) >= k)
    cdf = _st.binom.sf(k - 1, n, j / n)
    weights = np.diff(cdf)
    values = sorted_sample[first - 1 : last]
    total = weights.sum()
    return values, weights / total


@dataclass(frozen=True)
class RelativeChange:
    """Relative change ``candidate_q / baseline_q - 1`` of a quantile, with its CI."""

    q: float
    baseline: float
    candidate: float
    change: float
    low: float
    high: float
    confidence: float
    n_baseline: int
    n_candidate: int
    method: str


def _weighted_quantiles(
    values: FloatArray, weights: FloatArray, probs: Sequence[float]
) -> list[float]:
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    cum /= cum[-1]
    out = []
    for p in probs:
        index = int(np.searchsorted(cum, p, side="left"))
        out.append(float(values[order][min(index, values.size - 1)]))
    return out


def _positive_sorted(data: Sequence[float] | npt.ArrayLike, name: str) -> FloatArray:
    arr = np.sort(as_sample(data, name=name))
    if arr.size < 2:
        raise ValueError(f"{name}: need at least 2 values, got {arr.size}")
    if arr[0] <= 0:
        raise ValueError(f"{name}: values must be positive (latencies in seconds)")
    return arr


def _stretch(values: FloatArray, centre: float, scale: float) -> FloatArray:
    """``values`` moved ``scale`` times further from ``centre`` in log space."""
    if scale == 1.0:
        return values
    log_centre = math.log(centre)
    return np.asarray(np.exp(log_centre + scale * (np.log(values) - log_centre)), np.float64)


def _log_variance(values: FloatArray, weights: FloatArray) -> float:
    logs = np.log(values)
    mean = float(weights @ logs)
    return float(weights @ (logs - mean) ** 2)


def _relative_change(
    a: FloatArray,
    b: FloatArray,
    q: float,
    confidence: float,
    *,
    scale_a: float = 1.0,
    scale_b: float = 1.0,
    pair_scale: Callable[[float, float], float] | None = None,
    note: str = "",
) -> RelativeChange:
    """The exact bootstrap of the quantile ratio of two sorted positive samples.

    ``scale_a``/``scale_b`` stretch each side's bootstrap distribution (independent sides);
    ``pair_scale(var_a, var_b)`` instead returns one stretch of the ratio's distribution
    from the two sides' iid log variances (paired sides).
    """
    ka, kb = max(1, math.ceil(a.size * q)), max(1, math.ceil(b.size * q))
    qa, qb = float(a[ka - 1]), float(b[kb - 1])
    va, wa = _order_statistic_bootstrap(a, ka)
    vb, wb = _order_statistic_bootstrap(b, kb)
    ratio_scale = 1.0
    if pair_scale is not None:
        ratio_scale = pair_scale(_log_variance(va, wa), _log_variance(vb, wb))
    va, vb = _stretch(va, qa, scale_a), _stretch(vb, qb, scale_b)
    tail = (1.0 - confidence) / 2.0
    centre = qb / qa
    if va.size * vb.size <= _EXACT_PAIR_LIMIT:
        ratio = _stretch((vb[:, None] / va[None, :]).ravel(), centre, ratio_scale)
        weight = (wb[:, None] * wa[None, :]).ravel()
        low, high = _weighted_quantiles(ratio, weight, (tail, 1.0 - tail))
        method = "exact bootstrap of the quantile ratio (percentile interval)"
    else:
        sd = math.sqrt(_log_variance(va, wa) + _log_variance(vb, wb)) * ratio_scale
        z = float(_st.norm.ppf(1.0 - tail))
        low, high = math.exp(math.log(centre) - z * sd), math.exp(math.log(centre) + z * sd)
        method = "normal approximation of the exact bootstrap of the log quantile ratio"
    return RelativeChange(
        q=q,
        baseline=qa,
        candidate=qb,
        change=centre - 1.0,
        low=low - 1.0,
        high=high - 1.0,
        confidence=confidence,
        n_baseline=int(a.size),
        n_candidate=int(b.size),
        method=method + note,
    )


def quantile_relative_change(
    baseline: Sequence[float] | npt.ArrayLike,
    candidate: Sequence[float] | npt.ArrayLike,
    q: float,
    *,
    confidence: float = 0.95,
) -> RelativeChange:
    """Relative change of the ``q`` quantile from ``baseline`` to ``candidate``, with a CI.

    The estimate uses order statistics ``x_(ceil(nq))``; the two-sided ``confidence`` interval
    is the percentile interval of the exact bootstrap distribution of the ratio (independent
    resampling of both samples, every value independent). For a one-sided bound at level
    ``1 - alpha`` ask for ``confidence = 1 - 2 * alpha`` and read ``low``. Values must be
    positive. :func:`regression_check` widens this interval for dependent samples.
    """
    q = _check_q(q)
    confidence = _check_confidence(confidence)
    a = _positive_sorted(baseline, "baseline")
    b = _positive_sorted(candidate, "candidate")
    return _relative_change(a, b, q, confidence)


# --------------------------------------------------------------------------- dependence


@dataclass(frozen=True)
class Dependence:
    """How much the order of a sample widens the uncertainty of its quantile estimate.

    ``inflation`` (tau) is the variance of the quantile's estimate, measured by batch means
    over ``windows`` consecutive windows, divided by its variance were the values
    independent: about 1 for independent values, more when slow or fast moments cluster.
    ``n_effective`` is ``n / inflation``. For a paired comparison (two interleaved samples)
    it describes the difference of the two sides (1 when nothing common cancels).
    """

    q: float
    inflation: float
    windows: int
    n: int
    paired: bool = False

    @property
    def n_effective(self) -> float:
        """The number of independent values that would carry as much information."""
        return self.n / max(self.inflation, 1e-12)


def _check_windows(windows: int) -> int:
    if isinstance(windows, bool) or not isinstance(windows, int) or windows < 2:
        raise ValueError(f"windows: {windows!r} is not accepted; accepted: an integer >= 2")
    return windows


def _window_labels(
    n: int, windows: int, times: FloatArray | None, span: tuple[float, float] | None = None
) -> npt.NDArray[np.intp]:
    """Window of each value: equal time spans when ``times`` are given, else equal counts."""
    if times is None:
        return np.asarray(np.arange(n) * windows // max(n, 1), np.intp)
    start, end = span if span is not None else (float(times.min()), float(times.max()))
    width = (end - start) / windows
    if not width > 0:
        return np.zeros(n, np.intp)
    return np.asarray(np.clip(((times - start) / width).astype(np.intp), 0, windows - 1))


def _exceedance_totals(
    sample: FloatArray, q: float, labels: npt.NDArray[np.intp], windows: int
) -> tuple[FloatArray, float]:
    """Per window, the sum of ``1{x > q-quantile} - p``, and ``p`` (the exceedance rate)."""
    k = max(1, math.ceil(sample.size * q))
    threshold = float(np.partition(sample, k - 1)[k - 1])
    above = (sample > threshold).astype(np.float64)
    p = float(above.mean())
    totals = np.bincount(labels, weights=above - p, minlength=windows).astype(np.float64)
    return totals, p


def _as_times(
    times: Sequence[float] | npt.ArrayLike | None, n: int, name: str
) -> FloatArray | None:
    if times is None:
        return None
    array = as_sample(times, name=name)
    if array.size != n:
        raise ValueError(f"{name}: {array.size} send times for {n} latencies")
    return array


def quantile_dependence(
    data: Sequence[float] | npt.ArrayLike,
    q: float,
    *,
    windows: int = DEPENDENCE_WINDOWS,
    times: Sequence[float] | npt.ArrayLike | None = None,
) -> Dependence:
    """Variance inflation of the ``q`` quantile's estimate from the order of ``data``.

    ``data`` must be in the order measured (a LoadResult's ``latencies`` are); ``times``
    (e.g. send times) makes the windows equal spans of time instead of equal counts.
    Sorting a sample destroys what this measures: sorted data looks maximally dependent.
    """
    q = _check_q(q)
    windows = _check_windows(windows)
    sample = as_sample(data)
    n = int(sample.size)
    if n < 2 * windows:
        raise ValueError(f"data: {n} values are too few for {windows} windows (need {2 * windows})")
    labels = _window_labels(n, windows, _as_times(times, n, "times"))
    totals, p = _exceedance_totals(sample, q, labels, windows)
    if p <= 0.0 or p >= 1.0:
        return Dependence(q, 1.0, windows, n)
    # The totals sum to zero, so their squares estimate (windows - 1) / windows of the
    # variance of the whole sum.
    inflation = windows / (windows - 1) * float(totals @ totals) / (n * p * (1.0 - p))
    return Dependence(q, inflation, windows, n)


def _paired_dependence(
    a: FloatArray,
    times_a: FloatArray,
    b: FloatArray,
    times_b: FloatArray,
    q: float,
    *,
    windows: int,
    var_a: float,
    var_b: float,
) -> Dependence:
    """The inflation of the log quantile ratio's variance when both sides share windows.

    Linearised, ``log q_b - log q_a`` is a weighted sum of the two sides' exceedance
    indicators (each scaled so that its iid variance is the side's exact bootstrap variance);
    summing it per shared window keeps what both sides saw at once together, so it cancels.
    """
    start = float(min(times_a.min(), times_b.min()))
    end = float(max(times_a.max(), times_b.max()))
    totals_a, pa = _exceedance_totals(
        a, q, _window_labels(a.size, windows, times_a, (start, end)), windows
    )
    totals_b, pb = _exceedance_totals(
        b, q, _window_labels(b.size, windows, times_b, (start, end)), windows
    )
    n = int(min(a.size, b.size))
    if not (0.0 < pa < 1.0 and 0.0 < pb < 1.0) or var_a + var_b <= 0.0:
        return Dependence(q, 1.0, windows, n, paired=True)
    # The sign: a high quantile grows when more values exceed it, so both sides' exceedance
    # sums enter with the same sign as their log quantile.
    ca = math.sqrt(var_a / (a.size * pa * (1.0 - pa)))
    cb = math.sqrt(var_b / (b.size * pb * (1.0 - pb)))
    difference = cb * totals_b - ca * totals_a
    variance = windows / (windows - 1) * float(difference @ difference)
    return Dependence(q, variance / (var_a + var_b), windows, n, paired=True)


@dataclass(frozen=True)
class RegressionCheck:
    """Whether a quantile grew by more than ``max_increase`` between two samples.

    ``change`` carries the two-sided ``1 - 2·alpha`` interval, so ``change.low`` is the
    one-sided ``1 - alpha`` lower bound the decision uses; ``shift`` is a Mann-Whitney U test
    reported alongside. ``dependence`` holds what widened the interval: each side's
    :class:`Dependence` (independent runs), or one paired :class:`Dependence` (a duet); it is
    empty when the samples were taken as independent values (``dependence="none"``).
    """

    change: RelativeChange
    shift: DistributionTest
    max_increase: float
    alpha: float
    dependence: tuple[Dependence, ...] = ()

    @property
    def regressed(self) -> bool:
        """Evidence (at ``1 - alpha``) of an increase above ``max_increase``."""
        return self.change.low > self.max_increase

    @property
    def ruled_out(self) -> bool:
        """Whether an increase above ``max_increase`` is excluded (upper bound below it)."""
        return self.change.high <= self.max_increase

    @property
    def paired(self) -> bool:
        """Whether the two samples were compared window by window (a duet)."""
        return any(d.paired for d in self.dependence)


def _t_factor(alpha: float, windows: int) -> float:
    """Student-t over normal quantile: the price of a variance estimated from few windows."""
    return float(_st.t.ppf(1.0 - alpha, windows - 1) / _st.norm.ppf(1.0 - alpha))


def regression_check(
    baseline: Sequence[float] | npt.ArrayLike,
    candidate: Sequence[float] | npt.ArrayLike,
    q: float,
    *,
    max_increase: float,
    alpha: float = 0.01,
    dependence: Literal["windows", "none"] = "windows",
    windows: int = DEPENDENCE_WINDOWS,
    baseline_times: Sequence[float] | npt.ArrayLike | None = None,
    candidate_times: Sequence[float] | npt.ArrayLike | None = None,
    paired: bool = False,
) -> RegressionCheck:
    """Decide whether the ``q`` quantile grew by more than ``max_increase`` (a fraction).

    A regression needs evidence: the one-sided ``1 - alpha`` lower bound of the relative
    change above the effect-size floor ``max_increase``, so that tiny real changes on huge
    samples do not count. The bound comes from the exact bootstrap of the quantile ratio
    (:func:`quantile_relative_change`), widened for dependence (``dependence="windows"``,
    the default): samples are taken in the order measured, split into ``windows``
    consecutive windows (of equal time when ``*_times`` are given), and each side's
    distribution is stretched by the square root of its variance inflation
    (:func:`quantile_dependence`, at least 1) times the Student-t factor of ``windows - 1``
    degrees of freedom. ``paired=True`` (needs both ``*_times`` on one clock, as a duet
    gives) measures one inflation for the difference of the two sides over shared windows
    of time, so what the machine did to both at once cancels. ``dependence="none"`` takes
    every value as independent (the plain exact bootstrap).
    """
    check_alpha_quantile(alpha)
    if dependence not in ("windows", "none"):
        raise ValueError(f"dependence: {dependence!r} is not accepted; accepted: windows, none")
    q = _check_q(q)
    windows = _check_windows(windows)
    confidence = 1.0 - 2.0 * alpha
    raw_a, raw_b = as_sample(baseline, name="baseline"), as_sample(candidate, name="candidate")
    a, b = _positive_sorted(raw_a, "baseline"), _positive_sorted(raw_b, "candidate")
    shift = rank_test(raw_a, raw_b, alternative="greater")
    times_a = _as_times(baseline_times, raw_a.size, "baseline_times")
    times_b = _as_times(candidate_times, raw_b.size, "candidate_times")
    if paired and (times_a is None or times_b is None):
        raise ValueError(
            "paired: True needs baseline_times and candidate_times (send times on one clock, "
            "as a duet's two results carry)"
        )
    if dependence == "none" or min(a.size, b.size) < 2 * windows:
        if paired:
            raise ValueError(
                f"paired: needs dependence='windows' and at least {2 * windows} values per side"
            )
        change = _relative_change(a, b, q, confidence)
        return RegressionCheck(change, shift, float(max_increase), float(alpha))
    t_factor = _t_factor(alpha, windows)
    if paired and times_a is not None and times_b is not None:
        found: list[Dependence] = []
        paired_a, paired_b = times_a, times_b

        def pair_scale(var_a: float, var_b: float) -> float:
            found.append(
                _paired_dependence(
                    raw_a, paired_a, raw_b, paired_b, q, windows=windows, var_a=var_a, var_b=var_b
                )
            )
            return math.sqrt(max(found[0].inflation, 1.0)) * t_factor

        change = _relative_change(
            a,
            b,
            q,
            confidence,
            pair_scale=pair_scale,
            note=f", paired over {windows} shared time windows (Student t)",
        )
        return RegressionCheck(change, shift, float(max_increase), float(alpha), tuple(found))
    dep_a = quantile_dependence(raw_a, q, windows=windows, times=times_a)
    dep_b = quantile_dependence(raw_b, q, windows=windows, times=times_b)
    change = _relative_change(
        a,
        b,
        q,
        confidence,
        scale_a=math.sqrt(max(dep_a.inflation, 1.0)) * t_factor,
        scale_b=math.sqrt(max(dep_b.inflation, 1.0)) * t_factor,
        note=f", widened for dependence over {windows} windows (Student t)",
    )
    return RegressionCheck(change, shift, float(max_increase), float(alpha), (dep_a, dep_b))


# --------------------------------------------------------------------------- two-sample tests


@dataclass(frozen=True)
class DistributionTest:
    """Outcome of a two-sample test."""

    statistic: float
    pvalue: float
    effect: float
    alternative: str
    method: str


def rank_test(
    baseline: Sequence[float] | npt.ArrayLike,
    candidate: Sequence[float] | npt.ArrayLike,
    *,
    alternative: Literal["two-sided", "less", "greater"] = "greater",
) -> DistributionTest:
    """Mann-Whitney U test; ``alternative="greater"`` asks whether candidate values are larger.

    ``effect`` is the probability of superiority P(candidate > baseline) + ½ P(tie) (0.5 = no
    shift), the effect size a regression message can show beside the p-value.
    """
    a = as_sample(baseline, name="baseline")
    b = as_sample(candidate, name="candidate")
    if a.size == 0 or b.size == 0:
        raise ValueError("rank_test: both samples need at least one value")
    result = _st.mannwhitneyu(b, a, alternative=alternative, method="asymptotic")
    statistic = float(result.statistic)
    return DistributionTest(
        statistic=statistic,
        pvalue=float(result.pvalue),
        effect=statistic / (a.size * b.size),
        alternative=alternative,
        method="Mann-Whitney U",
    )


def ks_test(
    baseline: Sequence[float] | npt.ArrayLike,
    candidate: Sequence[float] | npt.ArrayLike,
    *,
    alternative: Literal["two-sided", "less", "greater"] = "two-sided",
) -> DistributionTest:
    """Two-sample Kolmogorov-Smirnov test; ``effect`` is the KS distance D."""
    a = as_sample(baseline, name="baseline")
    b = as_sample(candidate, name="candidate")
    if a.size == 0 or b.size == 0:
        raise ValueError("ks_test: both samples need at least one value")
    result = _st.ks_2samp(b, a, alternative=alternative)
    return DistributionTest(
        statistic=float(result.statistic),
        pvalue=float(result.pvalue),
        effect=float(result.statistic),
        alternative=alternative,
        method="two-sample Kolmogorov-Smirnov",
    )
