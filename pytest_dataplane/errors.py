"""Exceptions and warnings raised by pytest-dataplane.

Everything the plugin raises on purpose derives from :class:`DataplaneError`, except failed
assertions, which raise :class:`DataplaneAssertionError` so that pytest reports them as test
failures (it is an :class:`AssertionError`) and ``python -O`` cannot strip them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "DataplaneAssertionError",
    "DataplaneError",
    "DataplaneSkip",
    "DataplaneUnavailable",
    "InsufficientDataError",
    "PytestDataplaneWarning",
]


class DataplaneError(Exception):
    """Root of the errors pytest-dataplane raises for reasons other than a failed assertion."""


class DataplaneUnavailable(DataplaneError):
    """A dataplane or provider cannot run here; the message says what is missing and the fix."""


class DataplaneSkip(DataplaneUnavailable):
    """What the test asks for does not exist on this cluster (node access refused, the lab's
    emulated service times on kind, background services on a shared cluster): the plugin
    reports the test as skipped with this message, as ``pytest.skip`` would. Providers raise
    it instead of calling pytest, which they do not import."""


class InsufficientDataError(DataplaneError, ValueError):
    """Too few samples to compute the requested statistic at the requested confidence.

    ``minimum`` is the smallest sample size that would make the statistic computable.
    """

    def __init__(self, message: str, *, n: int, minimum: int) -> None:
        super().__init__(message)
        self.n = n
        self.minimum = minimum


class DataplaneAssertionError(AssertionError):
    """A performance assertion failed (or was inconclusive and configured to fail).

    ``verdict`` carries the numbers behind the decision (see
    :class:`pytest_dataplane.assertions.Verdict`) so that tools can read them without parsing
    the message.
    """

    def __init__(self, message: str, *, verdict: object | None = None) -> None:
        super().__init__(message)
        self.verdict = verdict


if TYPE_CHECKING:
    import pytest

    class PytestDataplaneWarning(pytest.PytestWarning):
        """Warnings from pytest-dataplane (inconclusive assertions set to warn)."""


def _warning_class() -> type[Warning]:
    import pytest

    class PytestDataplaneWarning(pytest.PytestWarning):
        """Warnings from pytest-dataplane (inconclusive assertions set to warn, skipped
        comparisons)."""

    PytestDataplaneWarning.__module__ = __name__
    return PytestDataplaneWarning


def __getattr__(name: str) -> Any:
    # The warning derives from pytest's; creating it on first use keeps processes that never
    # warn (lab backends, load workers) from importing pytest.
    if name == "PytestDataplaneWarning":
        cls = _warning_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
