"""The worker side of a load run: the schedule's dispatcher and the HTTP clients it drives.

Runs in a worker process (or a thread of the test process); imports no numpy. One
:class:`Engine` prepares a client, then :meth:`Engine.run` sends every request of its part of
the schedule at its intended time and reports each one exactly once to a
:class:`~._wire.RowBuffer`:

- open loop (``constant``, ``poisson``): a request whose time has come is sent, late if the
  loop was busy (its lateness is in its latency, which is measured from the intended time);
  one that cannot be sent because ``max_in_flight`` requests are outstanding is ``dropped``;
- closed loop (``closed``): ``concurrency`` requests at most are outstanding; a due request
  waits for one to finish, its latency is measured from when it was actually sent (not
  corrected for coordinated omission), and requests still waiting when the duration is over
  are never sent (the summary counts them as ``closed_unsent``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from typing import Any, Final

from ._client import Client, EngineConfig, Target
from ._health import IDLE_ITERATION, SelfMeter
from ._outcomes import DROPPED
from ._schedule import offsets
from ._timer import MonotonicTimer
from ._wire import RowBuffer

__all__ = ["Engine", "new_loop"]

NAN: Final = math.nan
# Launch at most this many requests per wake-up before letting responses be processed.
_BURST: Final = 256
# The timer wakes the loop this long before a send is due; the rest of the wait is spent
# going round the loop (handling any I/O meanwhile). The timerfd's own wake-up lag (50-150
# µs measured) then lands before the send instead of in its latency, and sends due closer
# together than this never arm the timer at all: arming costs a system call, and under a
# hypervisor a timer reprogramming (~18 µs measured), which at high rates was the
# dispatcher's largest cost. At light rates this spins ~200 µs per request (4 % of a core
# at 200 req/s).
_EARLY: Final = 200e-6


def new_loop(use_uvloop: bool = True) -> asyncio.AbstractEventLoop:
    """A fresh event loop: uvloop's when importable and wanted, else asyncio's."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


class Engine:
    """One worker's engine: :meth:`prepare` once, then :meth:`run` at a start time."""

    def __init__(self, config: EngineConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.loop = loop
        self.target: Target | None = None
        self._client: Client | None = None
        self._dispatch: _Dispatcher | None = None
        self._stop_requested = False

    async def prepare(self) -> None:
        """Resolve the target and build the client (before the schedule's start)."""
        self.target = Target.resolve(self.config.url)
        config = self.config
        if config.engine == "fast":
            from ._fast import FastClient

            client = FastClient(self.loop, config, self.target)
            self._client = client
            if config.connection == "pooled" and config.arrival != "closed":
                # Enough connections for a millisecond's worth of requests, and one spare:
                # with fewer, a start a little late sends a burst that finds the pool empty,
                # and opening connections mid-burst made the first ~30 ms of a 60,000 req/s
                # run late.
                share = config.rate / config.parts
                await client.warm(min(math.ceil(share / 1000) + 1, config.max_in_flight))
        else:
            from ._httpx import HttpxClient

            self._client = HttpxClient(self.loop, self.config, self.target)

    def stop(self) -> None:
        """Stop sending and cancel what is in flight (call from the loop's thread)."""
        self._stop_requested = True
        if self._dispatch is not None:
            self._dispatch.stop()

    async def run(self, t0: float, rows: RowBuffer) -> dict[str, Any]:
        """Send this part of the schedule starting at ``t0`` (a monotonic time); return a
        summary once every request has been reported to ``rows`` and flushed."""
        if self._client is None:
            raise RuntimeError("Engine.run before Engine.prepare")
        dispatch = _Dispatcher(self.loop, self.config, self._client, rows, t0)
        self._dispatch = dispatch
        if self._stop_requested:
            dispatch.stop()
        try:
            await dispatch.run()
        finally:
            dispatch.close()
            rows.flush()
        return dispatch.summary()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class _Dispatcher:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        config: EngineConfig,
        client: Client,
        rows: RowBuffer,
        t0: float,
    ) -> None:
        self.loop = loop
        self.client = client
        self.rows = rows
        self.t0 = t0
        self.closed_loop = config.arrival == "closed"
        self.limit = config.concurrency if self.closed_loop else config.max_in_flight
        self.end = t0 + config.duration
        # Rows go to the parent in batches of flush_rows, written right after a response
        # is handled; a time-based flush was tried and its pipe write (waking the parent)
        # showed up as periodic ~0.5 ms send lag on a busy 2-core machine.
        self.flush_rows = config.flush_rows
        self.schedule: Iterator[float] = offsets(
            config.arrival,
            config.rate,
            config.duration,
            seed=config.seed,
            part=config.part,
            parts=config.parts,
        )
        self.next: float | None = next(self.schedule, None)
        self.in_flight = 0
        self.waiting = False
        self.stopped = False
        self.cancelled = 0
        self.closed_unsent = 0
        self.launched = 0
        self.finished: asyncio.Future[None] = loop.create_future()
        self._soon = False
        self._dispatching = False
        self.timer = MonotonicTimer(loop, self._due)
        self.precise_timer = self.timer.precise
        # Self-measurement for the saturation guard (see ._health): completions count the
        # work between spin iterations, so that only the empty ones count as idle.
        self.meter = SelfMeter()
        self.completions = 0
        self._spin_at: float | None = None
        self._spin_completions = 0

    async def run(self) -> None:
        self.meter.start(self.t0)
        if self.next is None:
            self._maybe_finish()
        else:
            self.timer.arm(self.t0 + self.next)
        await self.finished

    def _due(self) -> None:
        # Entry from the timer and from the loop's ready queue.
        self._soon = False
        self._dispatch()

    def _again_soon(self) -> None:
        if not self._soon:
            self._soon = True
            self.loop.call_soon(self._due)

    def _dispatch(self) -> None:
        if self._dispatching:
            return  # re-entered through a request that failed synchronously
        self._dispatching = True
        try:
            self._dispatch_due()
        finally:
            self._dispatching = False

    def _dispatch_due(self) -> None:
        now = time.monotonic()
        if self._spin_at is not None:
            # The loop went round once since the spin began: idle if nothing completed and
            # the round was short (a long one did I/O or was preempted).
            if self.completions == self._spin_completions and now - self._spin_at < IDLE_ITERATION:
                self.meter.idle += now - self._spin_at
            self._spin_at = None
        if now >= self.meter.next_sample:
            self.meter.sample(now)
        burst = 0
        while self.next is not None:
            intended = self.t0 + self.next
            if intended > now:
                if intended - now <= _EARLY:
                    self._spin_at = now
                    self._spin_completions = self.completions
                    self._again_soon()
                else:
                    self.timer.arm(intended - _EARLY)
                return
            if self.closed_loop and now >= self.end:
                # The closed loop's duration is over: what is still waiting is never sent.
                self.closed_unsent += 1 + sum(1 for _ in self.schedule)
                self.next = None
                self.meter.finish()
                break
            if self.in_flight >= self.limit:
                if self.closed_loop:
                    self.waiting = True  # resumed by the next completion
                    return
                self.rows.add(self.next, NAN, NAN, DROPPED)
            else:
                self.in_flight += 1
                self.launched += 1
                self.client.launch(self.next, intended, self._done)
            self.next = next(self.schedule, None)
            if self.next is None:
                self.meter.finish()
            burst += 1
            if burst >= _BURST:
                # Yield to the loop so responses are timed promptly, then carry on.
                self._again_soon()
                return
            now = time.monotonic()
        self._maybe_finish()

    def _done(
        self, offset: float, intended: float, sent: float, finished: float, outcome: int
    ) -> None:
        self.in_flight -= 1
        self.completions += 1
        start = sent if self.closed_loop else intended
        rows = self.rows
        rows.add(offset, finished - start, sent - intended, outcome)
        if len(rows.outcome) >= self.flush_rows:
            rows.flush()
        if self.waiting and not self.stopped:
            self.waiting = False
            self._again_soon()
        if self.next is None and self.in_flight == 0:
            self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.next is None and self.in_flight == 0 and not self.finished.done():
            self.finished.set_result(None)

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.next = None
        self.meter.finish()
        self.waiting = False
        # Every request still in flight is cancelled and reported as "other".
        self.cancelled = self.in_flight
        self.client.cancel_all()
        self._maybe_finish()

    def close(self) -> None:
        self.timer.close()
        self.meter.close()

    def summary(self) -> dict[str, Any]:
        return {
            "rows": self.rows.written,
            "counts": list(self.rows.counts),
            "launched": self.launched,
            "stopped": self.stopped,
            "cancelled": self.cancelled,
            "closed_unsent": self.closed_unsent,
            "precise_timer": self.precise_timer,
            "health": self.meter.summary(),
        }
