"""The ``fast`` engine: a lean HTTP/1.1 client on asyncio protocols (uvloop when installed).

No per-request coroutine once a connection exists: the request is a precomputed byte string,
the response is parsed incrementally in ``data_received`` (status line, Content-Length,
chunked or close-delimited bodies), timeouts wait in one FIFO queue watched by a single
loop timer (every request has the same timeout, so deadlines come in order; a timer per
request cost more than the rest of its bookkeeping). ``per-request`` opens a TCP
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
from ._outcomes import (
    CONNECT_TIMEOUT,
    DROPPED,
    OTHER,
    READ_TIMEOUT,
    RESET,
    classify_exception,
    classify_status,
)

__all__ = ["FastClient", "ResponseParser", "build_request"]

_MAX_HEAD: Final = 64 * 1024
# How long a per-request connection waits for the server's FIN after the response.
_CLOSE_GRACE: Final = 1.0

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _TRAILER, _UNTIL_CLOSE, _DONE = range(7)
# Parsed response heads: head bytes -> (status, keep_alive, state, remaining).
_HEADS: dict[bytes, tuple[int, bool, int, int]] = {}
_HEADS_MAX: Final = 64


def build_request(target: Target, headers: tuple[tuple[str, str], ...], *, close: bool) -> bytes:
    """The bytes of one GET request for ``target``."""
    lines = [f"GET {target.path} HTTP/1.1", f"Host: {target.host_header}"]
    names = {name.lower() for name, _ in headers}
    if "user-agent" not in names:
        lines.append("User-Agent: pytest-dataplane")
    if close and "connection" not in names:
        lines.append("Connection: close")
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _first_line(head: bytes) -> bytes:
    return head.split(b"\r\n", 1)[0][:80]


def _header_value(lower: bytes, start: int) -> bytes:
    end = lower.find(b"\r\n", start)
    return (lower[start:] if end < 0 else lower[start:end]).strip()


class ResponseParser:
    """Incremental HTTP/1.x response parser: feed bytes, learn when the response is complete.

    Keeps no body bytes. Raises ValueError on a malformed response.
    """

    __slots__ = ("_buf", "_remaining", "_state", "keep_alive", "status")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._state = _HEAD
        self._remaining = 0
        self.status = 0
        self.keep_alive = True

    @property
    def started(self) -> bool:
        return self._state != _HEAD or bool(self._buf)

    @property
    def until_close(self) -> bool:
        """The body runs to the end of the connection (no length, not chunked)."""
        return self._state == _UNTIL_CLOSE

    def reset(self) -> None:
        self._buf.clear()
        self._state = _HEAD
        self._remaining = 0
        self.status = 0
        self.keep_alive = True

    def feed(self, data: bytes) -> bool:
        """Add bytes; True once the response is complete."""
        buf = self._buf
        if self._state == _HEAD and not buf:
            # Fast path: the whole head (usually the whole response) in one read, parsed
            # without copying it through the buffer.
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                self._head(data[:end])
                rest = len(data) - end - 4
                if self._state == _DONE and rest == 0:
                    return True
                if self._state == _LENGTH and rest == self._remaining:
                    self._state = _DONE
                    return True
                data = data[end + 4 :]
        buf += data
        while True:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > _MAX_HEAD:
                        raise ValueError("response head larger than 64 KiB")
                    return False
                head = bytes(buf[:end])
                del buf[: end + 4]
                self._head(head)
            elif state == _LENGTH:
                if len(buf) >= self._remaining:
                    del buf[: self._remaining]
                    self._state = _DONE
                else:
                    self._remaining -= len(buf)
                    buf.clear()
                    return False
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 1024:
                        raise ValueError("chunk size line too long")
                    return False
                size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
                del buf[: end + 2]
                size = int(size_text, 16)
                if size < 0:
                    raise ValueError(f"negative chunk size {size_text!r}")
                if size == 0:
                    self._state = _TRAILER
                else:
                    self._remaining = size + 2  # data and its CRLF
                    self._state = _CHUNK_DATA
            elif state == _CHUNK_DATA:
                if len(buf) >= self._remaining:
                    del buf[: self._remaining]
                    self._state = _CHUNK_SIZE
                else:
                    self._remaining -= len(buf)
                    buf.clear()
                    return False
            elif state == _TRAILER:
                end = buf.find(b"\r\n")
                if end < 0:
                    return False
                empty = end == 0
                del buf[: end + 2]
                if empty:
                    self._state = _DONE
            elif state == _UNTIL_CLOSE:
                buf.clear()
                return False
            else:  # _DONE
                return True

    def _head(self, head: bytes) -> None:
        # A load test reads the same response head over and over (a Date header changes it
        # once a second): parse each distinct head once.
        known = _HEADS.get(head)
        if known is not None:
            self.status, self.keep_alive, self._state, self._remaining = known
            return
        lower = head.lower()
        eol = lower.find(b"\r\n")
        first = lower if eol < 0 else lower[:eol]
        parts = first.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"http/1."):
            raise ValueError(f"not an HTTP/1.x status line: {_first_line(head)!r}")
        try:
            status = int(parts[1])
        except ValueError:
            raise ValueError(f"bad status code in {_first_line(head)!r}") from None
        if not 100 <= status <= 999:
            raise ValueError(f"bad status code in {_first_line(head)!r}")
        keep_alive = parts[0] == b"http/1.1"
        # Every header line holds a colon; fewer colons than lines means a malformed line.
        # (Not a validating parser beyond that: the load generator reads what it needs.)
        if eol >= 0 and lower.count(b":") < lower.count(b"\r\n"):
            for line in head.split(b"\r\n")[1:]:
                if b":" not in line:
                    raise ValueError(f"malformed header line {line[:80]!r}")
        length: int | None = None
        at = lower.find(b"\r\ncontent-length:")
        if at >= 0:
            value = _header_value(lower, at + 17)
            length = int(value)
            if length < 0:
                raise ValueError(f"negative Content-Length {value!r}")
        at = lower.find(b"\r\ntransfer-encoding:")
        chunked = at >= 0 and b"chunked" in _header_value(lower, at + 20)
        at = lower.find(b"\r\nconnection:")
        if at >= 0:
            token = _header_value(lower, at + 13)
            if token == b"close":
                keep_alive = False
            elif token == b"keep-alive":
                keep_alive = True
        if 100 <= status < 200 and status != 101:
            return  # interim response (100 Continue): the real one follows
        self.status = status
        self.keep_alive = keep_alive
        if status in (204, 304) or status < 200:
            self._state = _DONE
        elif chunked:
            self._state = _CHUNK_SIZE
        elif length is not None:
            self._remaining = length
            self._state = _LENGTH if length else _DONE
        else:
            self._state = _UNTIL_CLOSE
            self.keep_alive = False
        if len(_HEADS) >= _HEADS_MAX:
            _HEADS.clear()
        _HEADS[head] = (self.status, self.keep_alive, self._state, self._remaining)


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
