"""One sample: argument checks, quantile and proportion confidence intervals, the
percentile bootstrap and sample-size planning (see the package docstring for the methods)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import stats as _st

FloatArray = npt.NDArray[np.float64]


def check_alpha_quantile(alpha: float, quantile: float | None = None) -> None:
    """Raise ValueError, naming the value and what is accepted, unless ``0 < alpha < 0.5``
    and (when given) ``quantile`` is a percentile, ``0 < quantile < 100``.

    The one check of these arguments for every public helper that takes them.
    """
    checks: list[tuple[str, object, float, str]] = [
        ("alpha", alpha, 0.5, "a significance level, 0 < alpha < 0.5 (e.g. 0.01)")
    ]
    if quantile is not None:
        checks.insert(0, ("quantile", quantile, 100, "a percentile, 0 < quantile < 100 (e.g. 95)"))
    for name, value, upper, accepted in checks:
        # bool is a number to Python, but True as a quantile or alpha is always a mistake;
        # NaN fails the range test.
        if isinstance(value, bool) or not isinstance(value, Real) or not 0 < float(value) < upper:
            raise ValueError(f"{name}: {value!r} is not accepted; accepted: {accepted}")


def _check_q(q: float) -> float:
    q = float(q)
    if not 0.0 < q < 1.0:
        raise ValueError(
            f"q: {q!r} is not a quantile; accepted: a fraction strictly between 0 and 1"
        )
    return q


def _check_confidence(confidence: float, name: str = "confidence") -> float:
    confidence = float(confidence)
    if not 0.0 < confidence < 1.0:
        raise ValueError(
            f"{name}: {confidence!r} is not a probability; accepted: strictly between 0 and 1 "
            "(e.g. 0.95)"
        )
    return confidence


def as_sample(data: Sequence[float] | npt.ArrayLike, *, name: str = "data") -> FloatArray:
    """Return ``data`` as a 1-D float64 array, rejecting NaN and infinite values."""
    array = np.asarray(data, dtype=np.float64)
    if array.ndim != 1:
        array = array.reshape(-1)
    if array.size and not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise ValueError(f"{name}: {bad} of {array.size} values are NaN or infinite")
    return array


# --------------------------------------------------------------------------- quantiles


def _ranks(n: int, q: float, confidence: float) -> tuple[int, int]:
    """1-based ranks (l, u) of the distribution-free interval; 0 / n+1 mean unbounded."""
    tail = (1.0 - confidence) / 2.0
    binom = _st.binom(n, q)
    # K = number of samples below the true quantile ~ Binomial(n, q).
    # x_(l) <= xi  <=>  K >= l, so we need P(K <= l-1) <= tail: the largest such l.
    k = int(binom.ppf(tail))
    while k >= 0 and binom.cdf(k) > tail:
        k -= 1
    while binom.cdf(k + 1) <= tail:
        k += 1
    low_rank = k + 1
    # x_(u) >= xi  <=>  K <= u-1, so we need P(K >= u) <= tail: the smallest such u.
    k = int(binom.ppf(1.0 - tail))
    while k > 0 and binom.sf(k - 1) <= tail:
        k -= 1
    while binom.sf(k) > tail:
        k += 1
    high_rank = k + 1
    return low_rank, high_rank


def min_samples_for_quantile(q: float, confidence: float = 0.95) -> int:
    """Smallest n for which the distribution-free CI of the ``q`` quantile is bounded.

    Below it, even a sample whose every value is under a threshold cannot show, at this
    confidence, that the quantile is under it (e.g. 72 samples for p95 and 368 for p99 at 95 %).
    """
    q = _check_q(q)
    tail = (1.0 - _check_confidence(confidence)) / 2.0
    need = max(math.log(tail) / math.log(q), math.log(tail) / math.log1p(-q))
    n = max(1, math.floor(need))
    while q**n > tail or (1.0 - q) ** n > tail:
        n += 1
    return n


@dataclass(frozen=True)
class QuantileCI:
    """A quantile's point estimate and distribution-free confidence interval."""

    q: float
    estimate: float
    low: float
    high: float
    n: int
    confidence: float
    low_rank: int
    high_rank: int
    coverage: float
    method: str = "distribution-free CI from binomial order statistics"

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies inside the interval (bounds included)."""
        return self.low <= value <= self.high


def quantile_ci(
    data: Sequence[float] | npt.ArrayLike, q: float, *, confidence: float = 0.95
) -> QuantileCI:
    """Point estimate and distribution-free confidence interval of the ``q`` quantile.

    The interval is ``[x_(l), x_(u)]`` with ranks chosen so that each tail has probability at
    most ``(1 - confidence) / 2`` whatever the (continuous) distribution. Raises ValueError
    when n is below :func:`min_samples_for_quantile` (the caller turns that into an
    InsufficientDataError with the minimum).
    """
    q = _check_q(q)
    confidence = _check_confidence(confidence)
    sample = as_sample(data)
    n = int(sample.size)
    minimum = min_samples_for_quantile(q, confidence)
    if n < minimum:
        raise ValueError(
            f"n={n} is too small for a {confidence:.0%} CI of the {q:g} quantile; "
            f"need at least {minimum} samples"
        )
    low_rank, high_rank = _ranks(n, q, confidence)
    position = (n - 1) * q
    below, above = math.floor(position), math.ceil(position)
    kth = sorted({low_rank - 1, high_rank - 1, below, above})
    part = np.partition(sample, kth)
    estimate = float(part[below] + (part[above] - part[below]) * (position - below))
    binom = _st.binom(n, q)
    coverage = float(binom.cdf(high_rank - 1) - binom.cdf(low_rank - 1))
    return QuantileCI(
        q=q,
        estimate=estimate,
        low=float(part[low_rank - 1]),
        high=float(part[high_rank - 1]),
        n=n,
        confidence=confidence,
        low_rank=low_rank,
        high_rank=high_rank,
        coverage=coverage,
    )


def samples_to_decide(
    data: Sequence[float] | npt.ArrayLike,
    q: float,
    threshold: float,
    *,
    confidence: float = 0.95,
) -> int | None:
    """Approximate sample size at which the CI of the ``q`` quantile would exclude ``threshold``.

    Assumes the fraction of samples below the threshold stays what it is in ``data``. Returns
    None when that fraction equals ``q`` (the quantile sits on the threshold: no sample size
    decides it).
    """
    q = _check_q(q)
    confidence = _check_confidence(confidence)
    sample = as_sample(data)
    if sample.size == 0:
        return None
    below = float(np.count_nonzero(sample < threshold)) / sample.size
    gap = abs(below - q)
    if gap == 0.0:
        return None
    z = float(_st.norm.ppf(1.0 - (1.0 - confidence) / 2.0))
    n = math.ceil((z * math.sqrt(q * (1.0 - q)) / gap + 1.0 / math.sqrt(sample.size)) ** 2)
    return max(n, min_samples_for_quantile(q, confidence), sample.size + 1)


# --------------------------------------------------------------------------- proportions


@dataclass(frozen=True)
class BinomialCI:
    """A proportion with its Clopper-Pearson (exact) confidence interval."""

    successes: int
    n: int
    estimate: float
    low: float
    high: float
    confidence: float
    method: str = "Clopper-Pearson exact binomial CI"


def binomial_ci(successes: int, n: int, *, confidence: float = 0.95) -> BinomialCI:
    """Clopper-Pearson confidence interval for ``successes`` out of ``n`` trials."""
    confidence = _check_confidence(confidence)
    if n < 1:
        raise ValueError(f"n: {n!r} must be at least 1")
    if not 0 <= successes <= n:
        raise ValueError(f"successes: {successes!r} must be between 0 and n={n}")
    tail = (1.0 - confidence) / 2.0
    low = 0.0 if successes == 0 else float(_st.beta.ppf(tail, successes, n - successes + 1))
    high = 1.0 if successes == n else float(_st.beta.isf(tail, successes + 1, n - successes))
    return BinomialCI(successes, n, successes / n, low, high, confidence)


def binomial_samples_to_decide(
    successes: int, n: int, limit: float, *, confidence: float = 0.95
) -> int | None:
    """Trials needed for the Clopper-Pearson upper bound to fall below ``limit``.

    Assumes the observed proportion stays as it is; None when it is not below ``limit``.
    """
    confidence = _check_confidence(confidence)
    rate = successes / n if n else 0.0
    if rate >= limit:
        return None
    tail = (1.0 - confidence) / 2.0

    def upper(trials: int) -> float:
        k = rate * trials
        return float(_st.beta.isf(tail, k + 1, max(trials - k, 1e-9)))

    low, high = max(n, 1), max(n, 1) * 2
    while upper(high) >= limit:
        low, high = high, high * 2
        if high > 10**12:
            return None
    while high - low > 1:
        middle = (low + high) // 2
        if upper(middle) < limit:
            high = middle
        else:
            low = middle
    return high


# --------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class BootstrapCI:
    """A statistic and its bootstrap confidence interval."""

    estimate: float
    low: float
    high: float
    confidence: float
    n_resamples: int
    method: str


def bootstrap_ci(
    samples: Sequence[Sequence[float] | npt.ArrayLike],
    statistic: Callable[..., Any],
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    method: Literal["percentile", "basic", "BCa"] = "percentile",
    random_state: int | np.random.Generator | None = None,
) -> BootstrapCI:
    """Monte Carlo bootstrap CI of ``statistic(*samples, axis=-1)`` via ``scipy.stats.bootstrap``.

    ``statistic`` must be vectorized (accept an ``axis`` keyword); each sample is resampled
    independently. For quantile ratios prefer :func:`quantile_relative_change`, which computes
    the bootstrap distribution exactly.
    """
    confidence = _check_confidence(confidence)
    arrays = tuple(as_sample(s, name=f"samples[{i}]") for i, s in enumerate(samples))
    if not arrays or any(a.size < 2 for a in arrays):
        raise ValueError("samples: every sample needs at least 2 values for a bootstrap")
    largest = max(a.size for a in arrays)
    # Keep each vectorized batch near 16M floats (~128 MB) whatever n is.
    batch = max(1, min(n_resamples, 16_000_000 // largest))
    result = _st.bootstrap(
        arrays,
        statistic,
        vectorized=True,
        paired=False,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method=method,
        batch=batch,
        random_state=random_state,
    )
    return BootstrapCI(
        estimate=float(statistic(*arrays, axis=-1)),
        low=float(result.confidence_interval.low),
        high=float(result.confidence_interval.high),
        confidence=confidence,
        n_resamples=n_resamples,
        method=f"bootstrap ({method}, {n_resamples} resamples)",
    )
