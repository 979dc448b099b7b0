"""The binary stream a load worker writes to its parent, and the row buffer behind it.

A stream is a sequence of frames: one byte of kind, a little-endian uint32 payload length,
the payload. Kinds:

- ``H`` hello (JSON): the worker is ready; pid, cgroup, network namespace, event loop;
- ``R`` rows: uint32 n, then n float64 send offsets, n float32 latencies, n float32 lags,
  n uint8 outcomes (native byte order: both ends are on the same machine) — lossless, 17
  bytes a request, never JSON per request;
- ``D`` done (JSON): rows written and per-outcome counts, so the parent can prove it lost
  nothing;
- ``E`` error (UTF-8 text): the worker's message; the parent raises it as DataplaneError.

No numpy here: the worker imports this module and starts faster without it.
"""

from __future__ import annotations

import array
import json
import math
import struct
from collections.abc import Callable
from typing import IO, Any, Final

__all__ = ["HEADER", "RowBuffer", "decode_rows", "encode_frame", "read_frame"]

HEADER: Final = struct.Struct("<cI")
_COUNT: Final = struct.Struct("<I")
NAN: Final = math.nan


def encode_frame(kind: bytes, payload: bytes) -> bytes:
    """One frame: kind byte, payload length, payload."""
    return HEADER.pack(kind, len(payload)) + payload


def encode_json(kind: bytes, data: Any) -> bytes:
    """A frame whose payload is ``data`` as JSON."""
    return encode_frame(kind, json.dumps(data).encode())


class RowBuffer:
    """Per-request rows in four typed arrays, appended in completion order.

    ``flush`` hands the buffered rows (as four arrays) to ``emit`` and starts afresh; the
    engines call :meth:`add` once per request and flush in batches.
    """

    def __init__(
        self,
        emit: Callable[
            [array.array[float], array.array[float], array.array[float], array.array[int]], None
        ],
    ) -> None:
        self._emit = emit
        self.written = 0
        self.counts: list[int] = [0] * 9
        self._reset()

    def _reset(self) -> None:
        self.send: array.array[float] = array.array("d")
        self.latency: array.array[float] = array.array("f")
        self.lag: array.array[float] = array.array("f")
        self.outcome: array.array[int] = array.array("B")

    def __len__(self) -> int:
        return len(self.outcome)

    def add(self, send: float, latency: float, lag: float, outcome: int) -> None:
        self.send.append(send)
        self.latency.append(latency)
        self.lag.append(lag)
        self.outcome.append(outcome)
        self.counts[outcome] += 1

    def flush(self) -> None:
        if not self.outcome:
            return
        send, latency, lag, outcome = self.send, self.latency, self.lag, self.outcome
        self._reset()
        self.written += len(outcome)
        self._emit(send, latency, lag, outcome)


def encode_rows(
    send: array.array[float],
    latency: array.array[float],
    lag: array.array[float],
    outcome: array.array[int],
) -> bytes:
    """An ``R`` frame holding these rows."""
    payload = b"".join(
        (
            _COUNT.pack(len(outcome)),
            send.tobytes(),
            latency.tobytes(),
            lag.tobytes(),
            outcome.tobytes(),
        )
    )
    return encode_frame(b"R", payload)


def decode_rows(payload: bytes) -> tuple[Any, Any, Any, Any]:
    """The four numpy arrays of an ``R`` payload (views on ``payload``, no copy)."""
    import numpy as np

    (n,) = _COUNT.unpack_from(payload, 0)
    expected = _COUNT.size + n * 17
    if len(payload) != expected:
        raise ValueError(f"row frame of {len(payload)} bytes, expected {expected} for {n} rows")
    at = _COUNT.size
    send = np.frombuffer(payload, np.float64, n, at)
    at += 8 * n
    latency = np.frombuffer(payload, np.float32, n, at)
    at += 4 * n
    lag = np.frombuffer(payload, np.float32, n, at)
    at += 4 * n
    outcome = np.frombuffer(payload, np.uint8, n, at)
    return send, latency, lag, outcome


def read_frame(stream: IO[bytes]) -> tuple[bytes, bytes] | None:
    """The next ``(kind, payload)`` of ``stream``, or None at a clean end of stream.

    A stream cut inside a frame raises EOFError (the worker died mid-write).
    """
    header = _read_exactly(stream, HEADER.size)
    if header is None:
        return None
    kind, length = HEADER.unpack(header)
    payload = _read_exactly(stream, length) if length else b""
    if payload is None:
        raise EOFError(f"stream ended inside a {kind!r} frame of {length} bytes")
    return kind, payload


def _read_exactly(stream: IO[bytes], n: int) -> bytes | None:
    chunks: list[bytes] = []
    missing = n
    while missing:
        chunk = stream.read(missing)
        if not chunk:
            if missing == n:
                return None
            raise EOFError(f"stream ended {missing} bytes short of a {n}-byte read")
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)
