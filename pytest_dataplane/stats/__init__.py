"""Pure numerics for performance assertions: quantile CIs, bootstraps, rank tests, power.

This package imports nothing else of pytest_dataplane and does no I/O. Quantiles are given as
fractions ``q`` in (0, 1); latencies are seconds. Results are small frozen dataclasses.

Methods
-------
* Quantile confidence intervals are distribution-free: the interval between two order
  statistics ``[x_(l), x_(u)]`` whose ranks come from the Binomial(n, q) distribution of the
  number of samples below the true quantile. Each tail has probability at most
  ``(1 - confidence) / 2`` for any continuous distribution, exactly, for every n.
* The relative change of a quantile between two samples uses the *exact* bootstrap: the
  bootstrap distribution of an order statistic is known in closed form (the resampled k-th
  order statistic is ``x_(j)`` with probability ``P(Bin(n, j/n) >= k) - P(Bin(n, (j-1)/n) >= k)``),
  so no resampling noise enters the decision and the result is reproducible. Very large
  samples use the normal approximation of the same exact moments.
* Latencies of one run are not independent (bursts, syncs, garbage collections, a busy
  neighbour), and the iid bootstrap then understates the uncertainty of a quantile. The
  regression check measures the dependence from the data: the exceedance indicator
  ``1{x_t > q-quantile}`` (the quantile estimate's influence function, up to a constant) is
  summed over consecutive time windows, and the batch-means variance of those sums, divided
  by what independent values would give, is the variance inflation ``tau``
  (:func:`quantile_dependence`; ``n / tau`` is the effective sample size). Each side's exact
  bootstrap distribution is stretched by ``sqrt(max(tau, 1))`` in log space around its
  estimate and by the Student-t factor of the window count, so the decision stays exact,
  deterministic and fast. Two runs measured as a duet (one interleaved schedule) are
  compared *paired*: the same windows hold both sides' requests, and the variance of the
  windows' difference of influence sums replaces the two separate ones, so what the machine
  did to both sides at once cancels.
* Error rates use the Clopper-Pearson interval.
"""

from __future__ import annotations

from ._compare import (
    DEPENDENCE_WINDOWS,
    Dependence,
    DistributionTest,
    RegressionCheck,
    RelativeChange,
    ks_test,
    quantile_dependence,
    quantile_relative_change,
    rank_test,
    regression_check,
)
from ._intervals import (
    BinomialCI,
    BootstrapCI,
    QuantileCI,
    as_sample,
    binomial_ci,
    binomial_samples_to_decide,
    bootstrap_ci,
    check_alpha_quantile,
    min_samples_for_quantile,
    quantile_ci,
    samples_to_decide,
)

__all__ = [
    "DEPENDENCE_WINDOWS",
    "BinomialCI",
    "BootstrapCI",
    "Dependence",
    "DistributionTest",
    "QuantileCI",
    "RegressionCheck",
    "RelativeChange",
    "as_sample",
    "binomial_ci",
    "binomial_samples_to_decide",
    "bootstrap_ci",
    "check_alpha_quantile",
    "ks_test",
    "min_samples_for_quantile",
    "quantile_ci",
    "quantile_dependence",
    "quantile_relative_change",
    "rank_test",
    "regression_check",
    "samples_to_decide",
]
