"""A load run in the background (:class:`LoadRun`), and what it shares with a duet.

``with run:`` starts the run and returns once its schedule has begun (so that what the
block does happens under load); leaving the block waits for the schedule to end. If the
block raises, the run is stopped at once, its partial result is still built and recorded,
and the block's exception propagates. :mod:`._fixture` makes these for the ``load`` fixture;
:mod:`._duet` builds its two sides from them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from types import TracebackType
from typing import Any

from .. import events
from ..errors import DataplaneError
from ..events import Event
from ._launch import Launch
from ._result import LoadResult
from ._spec import LoadSpec

__all__ = ["LoadRun", "target_url"]


def target_url(target: object) -> str:
    """The URL of a load target: the string itself, or its ``url`` attribute."""
    if isinstance(target, str):
        return target
    url = getattr(target, "url", None)
    if isinstance(url, str):
        return url
    raise ValueError(
        f"service_or_url: {target!r} is neither a URL string nor an object with a .url "
        "string (a provider's Service)"
    )


class _Background:
    """The ``with`` protocol and the marks that a load run and a duet share."""

    _what = "load run"
    _marks: list[Event]

    def stop(self) -> None:
        raise NotImplementedError

    def wait(self) -> object:
        raise NotImplementedError

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.wait()
            return
        # The block failed: stop at once, keep what was measured, and let its error through.
        self.stop()
        try:
            self.wait()
        except BaseException as wait_error:
            note = f"(while stopping the {self._what}: {type(wait_error).__name__}: {wait_error})"
            if hasattr(exc, "add_note"):
                exc.add_note(note)

    def mark(self, name: str, **detail: Any) -> Event:
        """Record event ``name`` now (with ``detail`` fields); it lands in ``result.events``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"mark: event name {name!r} is not a non-empty string")
        event = Event(name, events.now(), detail)
        self._marks.append(event)
        return event


class LoadRun(_Background):
    """A load run in the background; use it as a context manager (see the module docstring).

    After the block, :attr:`result` is the :class:`LoadResult`. :meth:`mark` records an event
    (``run.mark("scale", replicas=6)``) that lands in ``result.events``, so that
    ``result.between("rollout-start", "rollout-end")`` can cut out a phase.
    """

    def __init__(
        self,
        target: object,
        spec: LoadSpec,
        *,
        label: str = "",
        on_result: Callable[[LoadResult], None] | None = None,
    ) -> None:
        self.target = target
        self.spec = spec
        self.label = label
        self._on_result = on_result
        self._marks: list[Event] = []
        self._launch: Launch | None = None
        self._result: LoadResult | None = None
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        state = "finished" if self._result else ("running" if self.running else "not started")
        return f"<LoadRun {self.spec.url} {self.spec.rate:g}/s for {self.spec.duration:g}s {state}>"

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> LoadRun:
        """Start the run; returns once its schedule's t=0 has passed."""
        if self._launch is not None:
            raise DataplaneError("this load run was already started")
        launch = Launch(self.spec)
        self._launch = launch
        t0 = launch.start()
        delay = t0 - events.now()
        if delay > 0:
            import time

            time.sleep(delay)
        return self

    @property
    def running(self) -> bool:
        """True between :meth:`start` and the end of :meth:`wait`."""
        return self._launch is not None and self._result is None and self._error is None

    def stop(self) -> None:
        """Stop sending now (requests in flight are cancelled and counted as ``other``)."""
        if self._launch is not None:
            self._launch.stop()

    def wait(self) -> LoadResult:
        """Wait for the schedule to end; build, label and record the result."""
        if self._result is not None:
            return self._result
        if self._error is not None:
            raise self._error
        launch = self._launch
        if launch is None:
            raise DataplaneError("this load run was never started: use it in a with block")
        try:
            result = launch.wait(label=self.label)
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            launch.close()
        ended = launch.ended_at if launch.ended_at is not None else events.now()
        merged = self._merge_events(result.start, ended)
        result = replace(result, events=tuple(sorted(merged, key=lambda e: e.time)))
        self._result = result
        if self._on_result is not None:
            self._on_result(result)
        return result

    def _merge_events(self, start: float, end: float) -> list[Event]:
        merged: list[Event] = list(self._marks)
        target_events = getattr(self.target, "events", None)
        if target_events is not None and not isinstance(target_events, (str, bytes)):
            for event in list(target_events):
                if not isinstance(event, Event) or not start <= event.time <= end:
                    continue
                if all(event is not other for other in merged):
                    merged.append(event)
        return merged

    def close(self) -> None:
        """Stop and reap the run if it is still going (the fixture's teardown)."""
        if self._launch is not None and self.running:
            self._launch.stop()
            try:
                self.wait()
            except BaseException:
                self._launch.close()

    def __enter__(self) -> LoadRun:
        return self.start()

    # ---------------------------------------------------------------- data

    @property
    def events(self) -> tuple[Event, ...]:
        """The events marked so far (the result also holds the target's)."""
        return tuple(self._marks)

    @property
    def result(self) -> LoadResult:
        """The run's LoadResult; available once the ``with`` block has ended."""
        if self._result is None:
            if self._error is not None:
                raise DataplaneError(f"the load run failed: {self._error}") from self._error
            raise DataplaneError(
                "the load run has not finished: read run.result after the with block"
            )
        return self._result
