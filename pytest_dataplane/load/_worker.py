"""Entry point of a load worker process: ``python -m pytest_dataplane.load._worker``.

Protocol with the parent (see :mod:`._wire` for the output stream):

1. stdin line 1: JSON ``{"engine": EngineConfig, "netns": name|null, "cgroup": dir|null}``;
2. the worker enters the network namespace, moves itself into the cgroup — both before it
   opens any socket, so that a cgroup ``connect4`` BPF program sees every connection — prepares
   its client, and writes ``H`` (pid, its ``/proc/self/cgroup`` line, its netns inode);
3. stdin line 2: ``start <t0>`` (a monotonic time) — or ``stop`` / end of input to give up;
4. it runs its part of the schedule, streaming ``R`` frames; ``stop`` on stdin (or stdin
   closing because the parent died) stops it early; it ends with ``D`` (or ``E`` on error).

The real stdout is kept for frames; fd 1 is pointed at stderr so that a stray print cannot
corrupt the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import gc
import json
import os
import resource
import sys
import traceback
from typing import Any, Final

from .._host import NETNS_DIR
from ._client import EngineConfig
from ._engine import Engine, new_loop
from ._timer import reduce_timer_slack
from ._wire import RowBuffer, encode_frame, encode_json, encode_rows

_CLONE_NEWNET: Final = 0x40000000
_F_SETPIPE_SZ: Final = 1031


class _Output:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]


class _Input:
    """Line reader on fd 0 without read-ahead surprises (the loop watches the same fd)."""

    def __init__(self) -> None:
        self.buffer = b""

    def line(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = os.read(0, 4096)
            if not chunk:
                line, self.buffer = self.buffer, b""
                return line
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line


def enter_netns(name: str) -> None:
    """Move this (single-threaded) process into network namespace ``name``."""
    path = os.path.join(NETNS_DIR, name)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns = getattr(os, "setns", None)
        if setns is not None:  # Python 3.12+
            setns(fd, _CLONE_NEWNET)
            return
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def join_cgroup(directory: str) -> None:
    """Move this process into the cgroup v2 at ``directory``."""
    with open(os.path.join(directory, "cgroup.procs"), "w", encoding="ascii") as handle:
        handle.write(str(os.getpid()))


def identity() -> dict[str, Any]:
    """Where this process runs: pid, cgroup v2 path, network namespace inode."""
    cgroup = ""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("0::"):
                    cgroup = line[3:].strip()
    except OSError:
        pass
    return {
        "pid": os.getpid(),
        "cgroup": cgroup,
        "netns_inode": os.stat("/proc/self/ns/net").st_ino,
    }


def _tune() -> None:
    # Per-request runs at high rates hold many sockets at once.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with contextlib.suppress(OSError):
        fcntl.fcntl(1, _F_SETPIPE_SZ, 1 << 20)
    reduce_timer_slack()


def main() -> int:
    out = _Output(os.dup(1))
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    stdin = _Input()
    try:
        request = json.loads(stdin.line() or b"{}")
        if request.get("netns"):
            enter_netns(request["netns"])
        if request.get("cgroup"):
            join_cgroup(request["cgroup"])
        _tune()
        config = EngineConfig.from_dict(request["engine"])
        loop = new_loop(config.uvloop)
        try:
            return _serve(loop, config, out, stdin)
        finally:
            loop.close()
    except BaseException as exc:  # report everything, KeyboardInterrupt included
        traceback.print_exc(file=sys.stderr)
        out.write(encode_frame(b"E", f"{type(exc).__name__}: {exc}".encode(errors="replace")))
        return 1


def _serve(
    loop: asyncio.AbstractEventLoop, config: EngineConfig, out: _Output, stdin: _Input
) -> int:
    engine = Engine(config, loop)
    loop.run_until_complete(engine.prepare())
    try:
        # Objects of the set-up are moved out of the collector's reach so that its passes
        # stay short (a raised threshold was tried: fewer but ~0.5 ms pauses, worse tails).
        gc.collect()
        gc.freeze()
        hello = identity()
        hello["loop"] = type(loop).__module__.split(".")[0]
        hello["part"] = config.part
        out.write(encode_json(b"H", hello))
        command = stdin.line().decode(errors="replace").split()
        if not command or command[0] != "start":
            out.write(encode_json(b"D", {"rows": 0, "counts": [0] * 9, "aborted": True}))
            return 0
        t0 = float(command[1])
        rows = RowBuffer(lambda *columns: out.write(encode_rows(*columns)))

        def on_input() -> None:
            try:
                data = os.read(0, 4096)
            except BlockingIOError:
                return
            if not data or b"stop" in data:
                loop.remove_reader(0)
                engine.stop()

        if b"stop" in stdin.buffer:
            engine.stop()
        else:
            loop.add_reader(0, on_input)
        summary = loop.run_until_complete(engine.run(t0, rows))
        loop.remove_reader(0)
        out.write(encode_json(b"D", summary))
        return 0
    finally:
        loop.run_until_complete(engine.aclose())


if __name__ == "__main__":
    sys.exit(main())
