"""The lab's backend "pod": a small, fast HTTP/1.1 server answering with its pod name.

Run as ``python -m pytest_dataplane.providers.lab.backend --name NAME --port PORT`` inside a pod
namespace. It prints ``READY`` once its listening socket accepts connections (the lab's
readiness signal), optionally delays each response by a service time drawn from a
distribution (to emulate an application), and on SIGTERM stops accepting, finishes what it
is serving and exits — which is what turns a lagging dataplane into refused connections.

With ``--spare`` it starts without a pod: it does its imports, then waits for one JSON line on
stdin naming the pod (``netns``, ``name``, ``port``, ``version``, optional ``service_time``,
``seed``, ``drain``, ``log``), enters that network namespace and serves. A node agent keeps
one or two spares ready so that a new pod does not wait for an interpreter to start.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import math
import os
import random
import signal
import sys
from collections.abc import Callable

from ...config import ServiceTime
from . import _proc

_CLONE_NEWNET = 0x40000000


def _sampler(spec: str | None, seed: int | None) -> Callable[[], float]:
    service_time = ServiceTime.parse(spec) if spec else None
    rng = random.Random(seed)
    if service_time is None:
        return lambda: 0.0
    median, sigma = service_time.median, service_time.sigma
    if service_time.distribution == "constant":
        return lambda: median
    if service_time.distribution == "lognormal":
        return lambda: median * math.exp(sigma * rng.gauss(0.0, 1.0))
    mean = median / math.log(2)
    return lambda: rng.expovariate(1.0 / mean) if mean > 0 else 0.0


class _Http(asyncio.Protocol):
    """One connection: parse pipelined request heads, answer each after its service time."""

    def __init__(self, server: _Backend) -> None:
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.pending = 0
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > 65536:
                    self._reply(431, b"request head too large\n", close=True)
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            lines = head.split(b"\r\n")
            request = lines[0].split()
            close = len(request) < 3 or request[2] != b"HTTP/1.1"
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"connection" and b"close" in value.lower():
                    close = True
            self.pending += 1
            delay = self.server.sample()
            if delay > 0:
                asyncio.get_running_loop().call_later(delay, self._answer, close)
            else:
                self._answer(close)

    def _answer(self, close: bool) -> None:
        self.pending -= 1
        self._reply(200, self.server.body, close=close or self.server.stopping)

    def _reply(self, status: int, body: bytes, *, close: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        reason = b"OK" if status == 200 else b"Error"
        head = (
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            b"X-Pod: %s\r\nX-Version: %s\r\n%s\r\n"
            % (
                status,
                reason,
                len(body),
                self.server.name.encode(),
                self.server.version.encode(),
                b"Connection: close\r\n" if close else b"",
            )
        )
        self.transport.write(head + body)
        if close:
            self.close_after = True
        if self.close_after and self.pending == 0:
            self.transport.close()


class _Backend:
    def __init__(self, name: str, version: str, sample: Callable[[], float]) -> None:
        self.name = name
        self.version = version
        self.sample = sample
        self.body = f"{name}\n".encode()
        self.connections: set[_Http] = set()
        self.stopping = False

    async def serve(self, host: str, port: int, grace: float) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Http(self), host, port, backlog=4096)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        print("READY", port, flush=True)
        await stop.wait()
        # Stop accepting first: from here on, connections to this pod are refused, as they
        # are for a terminated pod. Requests already received are still answered.
        self.stopping = True
        server.close()
        deadline = loop.time() + grace
        while any(c.pending for c in self.connections) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()


def _become(args: argparse.Namespace, line: str) -> None:
    """Take the pod a spare was waiting for: its settings, its log, its network namespace."""
    import json

    spec = json.loads(line)
    args.name = str(spec["name"])
    args.port = int(spec.get("port", args.port))
    args.version = str(spec.get("version", args.version))
    args.service_time = spec.get("service_time")
    args.seed = spec.get("seed")
    if spec.get("drain") is not None:
        args.drain = float(spec["drain"])
    if spec.get("log"):
        log = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 2)
        os.close(log)
    # Before any socket exists: every socket made from here on lives in the pod's namespace.
    libc = ctypes.CDLL(None, use_errno=True)
    netns = os.open(spec["netns"], os.O_RDONLY)
    try:
        if libc.setns(netns, _CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns into {spec['netns']}: {os.strerror(error)}")
    finally:
        os.close(netns)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="pytest-dataplane lab backend pod")
    parser.add_argument("--name", default=None, help="The pod's name (required unless --spare)")
    parser.add_argument(
        "--spare", action="store_true", help="Wait on stdin for the pod to become (JSON line)"
    )
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--version", default="v1")
    parser.add_argument("--service-time", default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--drain", type=float, default=5.0, help="seconds to finish in-flight")
    parser.add_argument("--parent", type=int, default=None, help="exit when this pid exits")
    args = parser.parse_args(argv)
    if args.name is None and not args.spare:
        parser.error("--name is required (or --spare)")
    # Die with the lab: a SIGKILLed test run must not leave pods serving forever.
    if args.parent is not None and not _proc.die_with_parent(signal.SIGTERM, args.parent):
        return 0
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional
        pass
    if args.spare:
        line = sys.stdin.readline()
        if not line.strip():
            return 0  # not needed after all
        _become(args, line)
    backend = _Backend(args.name, args.version, _sampler(args.service_time, args.seed))
    asyncio.run(backend.serve(args.host, args.port, args.drain))
    return 0


if __name__ == "__main__":
    sys.exit(main())
