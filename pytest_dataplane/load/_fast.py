"""The ``fast`` engine: a lean HTTP/1.1 client on asyncio protocols (uvloop when installed).

No per-request coroutine once a connection exists: the request is a precomputed byte string,
the response is parsed incrementally in ``data_received`` (by :mod:`._http1`: status line,
Content-Length, chunked or close-delimited bodies), timeouts wait in one FIFO queue watched by
a single loop timer (every request has the same timeout, so deadlines come in order; a timer
per request cost more than the rest of its bookkeeping). ``per-request`` opens a TCP
connection for every request and sends ``Connection: close`` so that the server closes first
and the TIME_WAIT state stays on its side (the client's ephemeral ports would otherwise run
out after ~28,000 connections a minute); ``pooled`` keeps connections alive and reuses them,
retrying once on a fresh connection when a reused one turns out to be closed before it
returned a byte (the keep-alive race every HTTP client handles).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Final

from ..errors import DataplaneError
from ._client import Done, EngineConfig, Target
from ._http1 import ResponseParser, build_request
from ._outcomes import (
    CONNECT_TIMEOUT,
    DROPPED,
    OTHER,
    READ_TIMEOUT,
    RESET,
    classify_exception,
    classify_status,
)

__all__ = ["FastClient"]

# How long a per-request connection waits for the server's FIN after the response.
_CLOSE_GRACE: Final = 1.0


class _Connection(asyncio.Protocol):
    __slots__ = ("client", "closing", "eof", "exchange", "lost", "parser", "timer", "transport")

    def __init__(self, client: FastClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.exchange: _Exchange | None = None
        self.parser = ResponseParser()
        self.eof = False
        self.lost = False
        self.closing = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.client.connections.add(self)

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            if not self.closing:
                self.abort()  # bytes nobody asked for: the connection cannot be reused
            return
        try:
            complete = self.parser.feed(data)
        except ValueError:
            exchange.fail(OTHER)
            return
        if complete:
            exchange.respond(self.parser.status, self.parser.keep_alive)

    def eof_received(self) -> bool:
        self.eof = True
        exchange = self.exchange
        if exchange is not None:
            if self.parser.until_close:
                exchange.respond(self.parser.status, False)
            else:
                exchange.fail(RESET, retryable=not self.parser.started)
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.client.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        exchange = self.exchange
        if exchange is not None:
            outcome = RESET if exc is None else classify_exception(exc, connecting=False)
            exchange.fail(outcome, retryable=not self.parser.started)

    def abort(self) -> None:
        self.exchange = None
        if self.transport is not None and not self.lost:
            self.transport.abort()

    def retire(self) -> None:
        """Close after a response: at once when the server already closed, else when its FIN
        arrives (so TIME_WAIT stays on the server), aborting after a grace period."""
        self.exchange = None
        if self.transport is None or self.lost:
            return
        if self.eof:
            self.transport.close()
            return
        self.closing = True
        self.timer = self.client.loop.call_later(_CLOSE_GRACE, self.abort)


class _Exchange:
    __slots__ = (
        "client",
        "connecting",
        "connection",
        "deadline",
        "done",
        "finished",
        "intended",
        "offset",
        "retried",
        "reused",
        "sent",
        "task",
    )

    def __init__(self, client: FastClient, offset: float, intended: float, done: Done) -> None:
        self.client = client
        self.offset = offset
        self.intended = intended
        self.deadline = 0.0
        self.done = done
        self.sent = 0.0
        self.connection: _Connection | None = None
        self.connecting = False
        self.reused = False
        self.retried = False
        self.finished = False
        self.task: asyncio.Task[Any] | None = None

    def start(self) -> None:
        client = self.client
        self.sent = time.monotonic()
        self.arm_timeout(self.sent)
        connection = client.take_idle()
        if connection is None:
            self.connect()
        else:
            self.reused = True
            self.send_on(connection)

    def connect(self) -> None:
        client = self.client
        self.connecting = True
        self.reused = False
        self.task = client.loop.create_task(
            client.loop.create_connection(
                lambda: _Connection(client), client.address, client.port, family=client.family
            )
        )
        self.task.add_done_callback(self.connected)

    def connected(self, task: asyncio.Task[Any]) -> None:
        self.task = None
        if task.cancelled():
            return  # timed out or stopped: already reported
        exc = task.exception()
        if exc is not None:
            if not self.finished:
                self.finish(classify_exception(exc, connecting=True))
            return
        transport, connection = task.result()
        if self.finished:
            transport.abort()
            return
        self.connecting = False
        # The connect phase had its timeout; the response gets a full one of its own.
        self.arm_timeout(time.monotonic())
        self.send_on(connection)

    def arm_timeout(self, now: float) -> None:
        self.deadline = now + self.client.timeout
        self.client.watch(self)

    def send_on(self, connection: _Connection) -> None:
        self.connection = connection
        connection.exchange = self
        connection.parser.reset()
        transport = connection.transport
        if transport is None:
            # A connection is handed out only after connection_made() set its transport.
            raise DataplaneError("fast engine: a request was sent on an unconnected connection")
        transport.write(self.client.request)

    def respond(self, status: int, keep_alive: bool) -> None:
        finished = time.monotonic()
        connection = self.connection
        self.connection = None
        if connection is not None:
            if self.client.pooled and keep_alive and not connection.eof:
                connection.exchange = None
                self.client.idle.append(connection)
            else:
                connection.retire()
        self.finish(classify_status(status), finished)

    def fail(self, outcome: int, *, retryable: bool = False) -> None:
        connection = self.connection
        self.connection = None
        if connection is not None:
            connection.abort()
        if retryable and self.reused and not self.retried and not self.finished:
            self.retried = True
            self.connect()
            return
        self.finish(outcome)

    def timed_out(self) -> None:
        if self.finished:
            return
        if self.connecting:
            if self.task is not None:
                self.task.cancel()
            self.finish(CONNECT_TIMEOUT)
        else:
            self.fail(READ_TIMEOUT)

    def cancel(self) -> None:
        if self.finished:
            return
        if self.task is not None:
            self.task.cancel()
        self.fail(OTHER)

    def finish(self, outcome: int, finished: float | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        self.client.live.discard(self)
        self.done(
            self.offset,
            self.intended,
            self.sent,
            time.monotonic() if finished is None else finished,
            outcome,
        )


class FastClient:
    """HTTP/1.1 GET client on asyncio protocols; see the module docstring."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, config: EngineConfig, target: Target
    ) -> None:
        if target.scheme != "http":
            raise ValueError(f"engine 'fast' speaks http:// only, not {target.scheme}://")
        self.loop = loop
        self.address = target.address
        self.port = target.port
        self.family = target.family
        self.timeout = config.timeout
        self.pooled = config.connection == "pooled"
        self.request = build_request(target, config.headers, close=not self.pooled)
        self.idle: list[_Connection] = []
        self.live: set[_Exchange] = set()
        self.connections: set[_Connection] = set()
        self._deadlines: deque[tuple[float, _Exchange]] = deque()
        self._checker: asyncio.TimerHandle | None = None

    def watch(self, exchange: _Exchange) -> None:
        """Time ``exchange`` out at its ``deadline`` unless it finishes first."""
        queue = self._deadlines
        while queue and queue[0][1].finished:
            queue.popleft()  # requests mostly finish in order: the queue stays short
        queue.append((exchange.deadline, exchange))
        if self._checker is None:
            self._schedule_check(time.monotonic())

    def _schedule_check(self, now: float) -> None:
        self._checker = self.loop.call_later(max(self._deadlines[0][0] - now, 0.0), self._expire)

    def _expire(self) -> None:
        self._checker = None
        now = time.monotonic()
        queue = self._deadlines
        while queue:
            deadline, exchange = queue[0]
            if exchange.finished or exchange.deadline != deadline:
                queue.popleft()  # done, or re-armed with a later deadline further back
                continue
            # Loop timers are millisecond-grained and may fire a little early (uvloop reads
            # the clock once per iteration): a timeout counts only once it has elapsed.
            if deadline > now:
                break
            queue.popleft()
            exchange.timed_out()
        if queue and self._checker is None:
            self._schedule_check(now)

    async def warm(self, count: int) -> int:
        """Open ``count`` keep-alive connections before the run (as wrk opens its connections
        up front): otherwise a fast pooled run spends its first ~100 ms opening connections
        one request at a time, late. Failures are left for the run itself to meet and count.
        Returns how many opened."""

        async def one() -> None:
            _, connection = await self.loop.create_connection(
                lambda: _Connection(self), self.address, self.port, family=self.family
            )
            self.idle.append(connection)

        attempts = [asyncio.ensure_future(one()) for _ in range(count)]
        done, pending = await asyncio.wait(attempts, timeout=self.timeout)
        for attempt in pending:
            attempt.cancel()
        if pending:
            await asyncio.wait(pending)
        for attempt in done:
            if not attempt.cancelled():
                attempt.exception()  # retrieved: a refused warm-up is not an error here
        return len(self.idle)

    def take_idle(self) -> _Connection | None:
        while self.idle:
            connection = self.idle.pop()
            if not (connection.eof or connection.lost):
                return connection
        return None

    def launch(self, offset: float, intended: float, done: Done) -> None:
        exchange = _Exchange(self, offset, intended, done)
        self.live.add(exchange)
        try:
            exchange.start()
        except OSError as exc:  # e.g. EMFILE creating the socket: never sent
            exchange.finish(classify_exception(exc, connecting=True))
        except RuntimeError:
            exchange.finish(DROPPED)

    def cancel_all(self) -> None:
        for exchange in list(self.live):
            exchange.cancel()

    async def aclose(self) -> None:
        self.cancel_all()
        if self._checker is not None:
            self._checker.cancel()
            self._checker = None
        self._deadlines.clear()
        for connection in list(self.connections):
            connection.abort()
        self.idle.clear()
        # Let the transports deliver connection_lost before the loop goes away.
        for _ in range(3):
            if not self.connections:
                break
            await asyncio.sleep(0)
