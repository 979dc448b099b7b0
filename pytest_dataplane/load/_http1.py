"""HTTP/1.1 on the wire for the ``fast`` engine: the request bytes and an incremental
response parser. Pure byte handling, no I/O: :mod:`._fast` feeds it what its connections
receive.
"""

from __future__ import annotations

from typing import Final

from ._client import Target

__all__ = ["ResponseParser", "build_request"]

_MAX_HEAD: Final = 64 * 1024

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
