"""What the current test produced (load results, verdicts, clusters), for the report hooks.

Assertion helpers and fixtures append here; the plugin opens a record when a test starts,
notes the call phase's outcome, adds the snapshot of the test's cluster that the ``dataplane``
fixture takes at teardown, and turns the record into report properties when the teardown
report is made. Keeping this module free of pytest imports lets the assertion helpers work
outside pytest too (nothing is recorded then).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._snapshot import ClusterSnapshot


@dataclass
class TestRecord:
    verdicts: list[Any] = field(default_factory=list)
    results: list[tuple[str, Any]] = field(default_factory=list)
    # Live clusters, for the failure diagnostics of the call phase only; reports read the
    # snapshots.
    clusters: list[Any] = field(default_factory=list)
    snapshots: list[ClusterSnapshot] = field(default_factory=list)
    # The call phase's outcome and duration, once it ran (None: it did not, setup failed).
    outcome: str | None = None
    duration: float = 0.0


_current: TestRecord | None = None


def begin() -> TestRecord:
    global _current
    _current = TestRecord()
    return _current


def finish() -> TestRecord | None:
    global _current
    record, _current = _current, None
    return record


def current() -> TestRecord | None:
    return _current


def record_verdict(verdict: Any) -> None:
    if _current is not None:
        _current.verdicts.append(verdict)


def record_result(result: Any, label: str = "") -> None:
    if _current is not None and not any(r is result for _, r in _current.results):
        _current.results.append((label, result))


def record_cluster(cluster: Any) -> None:
    if _current is not None and not any(c is cluster for c in _current.clusters):
        _current.clusters.append(cluster)
