"""Assertion helpers that decide with confidence intervals instead of single noisy numbers.

Threshold assertions have three outcomes: **pass** when the upper confidence bound is below
the threshold, **fail** when the lower bound is above it, **inconclusive** when the interval
straddles it. Inconclusive fails by default, saying how many samples would decide;
``on_inconclusive="warn"`` or ``"pass"`` relax that. Every helper returns its
:class:`Verdict` when it does not raise.
"""

from __future__ import annotations

from ._cluster import (
    assert_dataplane_cpu_below,
    assert_kube_rules_at_most,
    assert_programming_latency_below,
)
from ._core import Verdict
from ._latency import (
    assert_error_rate_below,
    assert_p50_below,
    assert_p95_below,
    assert_p99_below,
    assert_percentile_below,
)
from ._regression import assert_no_regression, regression_advice

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
