"""pytest-dataplane: network-performance assertions for end-to-end tests.

Public API: the ``assert_*`` helpers, :class:`Verdict`, :class:`LoadResult`,
:class:`ServiceTime` and the error types. Names are imported on first use, so that loading
the pytest plugin (which imports this package) does not pull in numpy and scipy.

The library raises explicit exceptions and has no bare asserts: PYTEST_DONT_REWRITE.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import ServiceTime
from .errors import (
    DataplaneAssertionError,
    DataplaneError,
    DataplaneSkip,
    DataplaneUnavailable,
    InsufficientDataError,
)

if TYPE_CHECKING:
    from .assertions import (
        Verdict,
        assert_dataplane_cpu_below,
        assert_error_rate_below,
        assert_kube_rules_at_most,
        assert_no_regression,
        assert_p50_below,
        assert_p95_below,
        assert_p99_below,
        assert_percentile_below,
        assert_programming_latency_below,
    )
    from .errors import PytestDataplaneWarning
    from .load import LoadResult

__version__ = "0.1.0"

_LAZY = {
    "PytestDataplaneWarning": ".errors",
    "Verdict": ".assertions",
    "assert_dataplane_cpu_below": ".assertions",
    "assert_error_rate_below": ".assertions",
    "assert_kube_rules_at_most": ".assertions",
    "assert_programming_latency_below": ".assertions",
    "assert_no_regression": ".assertions",
    "assert_p50_below": ".assertions",
    "assert_p95_below": ".assertions",
    "assert_p99_below": ".assertions",
    "assert_percentile_below": ".assertions",
    "LoadResult": ".load",
}

__all__ = [
    "DataplaneAssertionError",
    "DataplaneError",
    "DataplaneSkip",
    "DataplaneUnavailable",
    "InsufficientDataError",
    "LoadResult",
    "PytestDataplaneWarning",
    "ServiceTime",
    "Verdict",
    "__version__",
    "assert_dataplane_cpu_below",
    "assert_error_rate_below",
    "assert_kube_rules_at_most",
    "assert_no_regression",
    "assert_p50_below",
    "assert_p95_below",
    "assert_p99_below",
    "assert_percentile_below",
    "assert_programming_latency_below",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_dataplane' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
