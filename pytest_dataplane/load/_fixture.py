"""The machinery behind the ``load`` fixture: a factory of background load runs.

``with load(target, rate=..., duration=...) as run:`` runs a :class:`~._run.LoadRun` in the
background for the block (see :mod:`._run`); ``load.duet(...)`` a :class:`~._duet.DuetRun`.

``target`` is a URL or any object with a ``url`` attribute; ``netns``, ``cgroup`` (where a
client must run to reach it), ``name`` (the result's label) and ``events`` (a list of
:class:`~pytest_dataplane.events.Event`, e.g. a lab service's ``endpoint-added``) are used when
present. Duck typing only: this package knows nothing of providers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .. import _collect
from ._duet import DuetRun, make_duet
from ._result import LoadResult
from ._run import LoadRun, target_url
from ._spec import LoadSpec

__all__ = ["LoadFactory"]


class LoadFactory:
    """What the ``load`` fixture returns: call it to make a :class:`LoadRun`.

    ``load(service_or_url, rate=..., duration=..., **kwargs)`` takes the keyword arguments of
    :func:`pytest_dataplane.load.run`; ``defaults`` (e.g. the engine chosen with
    ``--dataplane-load-engine``) fill those not given. Results are recorded for the report.
    """

    def __init__(
        self,
        *,
        defaults: Mapping[str, Any] | None = None,
        record: Callable[[LoadResult, str], None] | None = _collect.record_result,
    ) -> None:
        self.defaults = dict(defaults or {})
        self._record = record
        self.runs: list[LoadRun | DuetRun] = []

    def __call__(
        self, service_or_url: object, *, rate: float | str, duration: float | str, **kwargs: Any
    ) -> LoadRun:
        url = target_url(service_or_url)
        options = {**self.defaults, **kwargs}
        for attribute in ("netns", "cgroup"):
            if attribute not in kwargs:
                value = getattr(service_or_url, attribute, None)
                if value is not None:
                    options[attribute] = value
        name = getattr(service_or_url, "name", None)
        label = name if isinstance(name, str) else ""
        spec = LoadSpec.create(url, rate=rate, duration=duration, **options)
        record = self._record
        run = LoadRun(
            service_or_url,
            spec,
            label=label,
            on_result=(lambda result: record(result, result.label)) if record else None,
        )
        self.runs.append(run)
        return run

    def duet(
        self,
        baseline: object,
        candidate: object,
        *,
        rate: float | str,
        duration: float | str,
        **kwargs: Any,
    ) -> DuetRun:
        """Drive two targets from one schedule, interleaved request by request.

        ``with load.duet(baseline, candidate, rate=300, duration="10s") as run: ...``;
        ``rate`` is per target, the other keyword arguments are those of a single run.
        ``run.result`` is a :class:`~pytest_dataplane.load.DuetResult` that
        ``assert_no_regression`` compares paired (see :mod:`pytest_dataplane.load._duet`).
        """
        record = self._record
        run = make_duet(
            baseline,
            candidate,
            rate=rate,
            duration=duration,
            defaults=self.defaults,
            on_result=(lambda result: record(result, result.label)) if record else None,
            **kwargs,
        )
        self.runs.append(run)
        return run

    def close(self) -> None:
        """Stop and reap every run still going."""
        for run in self.runs:
            run.close()
