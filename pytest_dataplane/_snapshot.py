"""One reading of a cluster's figures after a test, as plain typed data for the reports.

The ``dataplane`` fixture takes the snapshot in its per-test teardown (before the cluster is
reset) with :func:`take`; the report modules compute and render from the
:class:`ClusterSnapshot` alone and never call a cluster. Reading the figures is I/O (an
``iptables-save`` in a namespace, a ``docker exec`` per node, a ``cilium-dbg`` exec), so it
happens once per test, where a failure can be reported as an error of the test's teardown
with its cause, instead of inside pytest's report hooks.

A figure a provider cannot give by design (no such method, ``NotImplementedError``,
:class:`~pytest_dataplane.errors.DataplaneUnavailable`) is None with the reason in
``unavailable``; any other exception is a failure that :func:`take` returns as one
:class:`SnapshotError` naming every figure that failed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from .errors import DataplaneError, DataplaneUnavailable
from .events import Event, now

__all__ = ["FIGURES", "ClusterSnapshot", "CpuFigures", "SnapshotError", "take"]

#: The cluster methods a snapshot reads, in the order it reads them.
FIGURES: Final = ("fingerprint", "rule_count", "programming_latencies", "cpu_seconds")
#: What ``unavailable`` says of a figure whose reading failed (the error says why, once).
FAILED: Final = "failed (reported as an error at this test's teardown)"

_T = TypeVar("_T")


@dataclass(frozen=True)
class CpuFigures:
    """The dataplane's CPU seconds over the test (see ``providers.base.CpuUsage``).

    ``times`` holds one time (on the :func:`pytest_dataplane.events.now` clock) per change,
    or is None when the provider does not say when its changes happened.
    """

    total: float
    per_change: tuple[float, ...] = ()
    changes: tuple[str, ...] = ()
    times: tuple[float, ...] | None = None
    detail: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterSnapshot:
    """What a cluster said about itself after one test.

    ``rule_count`` is the JSON form of the cluster's ``RuleCount`` (``total`` first, then its
    breakdown); ``programming_latencies`` are seconds, one per endpoint change; ``events``
    are the cluster's events (scale, rollout, endpoint changes) up to ``taken_at``. A None
    figure is explained in ``unavailable`` (figure name -> reason).
    """

    name: str
    provider: str
    taken_at: float
    fingerprint: Mapping[str, Any] | None = None
    rule_count: Mapping[str, Any] | None = None
    programming_latencies: tuple[float, ...] | None = None
    cpu: CpuFigures | None = None
    events: tuple[Event, ...] = ()
    unavailable: Mapping[str, str] = field(default_factory=dict)


class SnapshotError(DataplaneError):
    """Reading a cluster's figures after a test failed; ``figures`` names the ones that did
    (the first failure is the ``__cause__``)."""

    def __init__(self, message: str, *, figures: tuple[str, ...]) -> None:
        super().__init__(message)
        self.figures = figures


def _rule_count(count: Any) -> dict[str, Any]:
    data = dict(count.to_dict()) if hasattr(count, "to_dict") else {"total": int(count)}
    data["total"] = int(data["total"])
    return data


def _latencies(values: Any) -> tuple[float, ...]:
    # numpy arrays, lists and tuples alike; flattened as a report reads them.
    import numpy as np

    return tuple(float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1))


def _cpu(usage: Any) -> CpuFigures:
    per_change = tuple(float(v) for v in getattr(usage, "per_change", ()) or ())
    times = tuple(float(t) for t in getattr(usage, "times", None) or ())
    return CpuFigures(
        total=float(getattr(usage, "total", math.nan)),
        per_change=per_change,
        changes=tuple(str(c) for c in getattr(usage, "changes", ()) or ()),
        # A provider that gives no time per change gives no timeline (not a misplaced one).
        times=times if len(times) == len(per_change) and times else None,
        detail={str(k): float(v) for k, v in dict(getattr(usage, "detail", {}) or {}).items()},
    )


def _event(event: Any) -> Event:
    if isinstance(event, Event):
        return event
    return Event(
        str(getattr(event, "name", "?")),
        float(getattr(event, "time", math.nan)),
        dict(getattr(event, "detail", {}) or {}),
    )


def take(
    cluster: Any,
    *,
    unavailable_errors: tuple[type[BaseException], ...] = (),
) -> tuple[ClusterSnapshot, SnapshotError | None]:
    """Read ``cluster``'s figures once: the snapshot, and the error to raise if any failed.

    Every figure is read even when one fails, so the report keeps what could be read.
    ``unavailable_errors`` adds exception types that mean "not here" (the plugin passes
    pytest's skip exception, which some providers raise for a figure they cannot read).
    """
    expected: tuple[type[BaseException], ...] = (DataplaneUnavailable, *unavailable_errors)
    unavailable: dict[str, str] = {}
    failures: list[tuple[str, Exception]] = []

    def read(method: str, convert: Callable[[Any], _T]) -> _T | None:
        function = getattr(cluster, method, None)
        if function is None:
            unavailable[method] = "not provided by this provider"
            return None
        try:
            return convert(function())
        except NotImplementedError as exc:
            unavailable[method] = f"not implemented: {exc}" if str(exc) else "not implemented"
        except expected as exc:
            unavailable[method] = f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            unavailable[method] = FAILED
            failures.append((method, exc))
        return None

    fingerprint = read("fingerprint", dict)
    rule_count = read("rule_count", _rule_count)
    latencies = read("programming_latencies", _latencies)
    cpu = read("cpu_seconds", _cpu)
    taken_at = now()
    events: tuple[Event, ...] = ()
    if hasattr(cluster, "events"):
        try:
            events = tuple(_event(e) for e in cluster.events)
        except Exception as exc:
            failures.append(("events", exc))
    name = str(getattr(cluster, "name", ""))
    provider = str(getattr(cluster, "provider", ""))
    snapshot = ClusterSnapshot(
        name=name,
        provider=provider,
        taken_at=taken_at,
        fingerprint=fingerprint,
        rule_count=rule_count,
        programming_latencies=latencies,
        cpu=cpu,
        events=events,
        unavailable=unavailable,
    )
    if not failures:
        return snapshot, None
    what = "; ".join(f"{method}(): {type(exc).__name__}: {exc}" for method, exc in failures)
    error = SnapshotError(
        f"the {name or '?'} cluster ({provider or 'unknown provider'}) could not report its "
        f"figures after the test: {what}",
        figures=tuple(method for method, _ in failures),
    )
    error.__cause__ = failures[0][1]
    return snapshot, error
