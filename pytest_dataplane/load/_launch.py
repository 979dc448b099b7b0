"""The parent side of a load run: start the engines, collect their rows, build the result.

Engines run in worker processes by default (``processes=1``): the test's own work — Python
code holding the GIL, garbage collection, subprocesses it waits on — then cannot delay a
send, and a worker can enter a network namespace and a cgroup that the test process must not.
``processes=0`` runs the engine in a thread of this process instead (no start-up cost; fine
for short blocking runs that nothing else competes with).

Every worker announces itself (pid, cgroup, netns) once its client is ready; the run's t=0
is then set a little in the future on the shared monotonic clock and sent to all of them, so
start-up time is never counted as send lag. Rows stream back in binary frames; each worker's
final summary states how many rows of each outcome it wrote, and the parent checks that it
received exactly those.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from typing import IO, Any, Final, Protocol

import numpy as np

from .. import events
from .._host import NETNS_DIR
from ..errors import DataplaneError
from ._client import EngineConfig
from ._engine import Engine, new_loop
from ._outcomes import OUTCOMES
from ._recorder import Recorder
from ._result import LoadResult
from ._spec import LoadSpec
from ._wire import RowBuffer, decode_rows, read_frame

__all__ = ["Launch"]

#: Seconds between the moment every worker is ready and the schedule's t=0.
START_MARGIN: Final = 0.05
#: How long a worker may take to start (imports, namespace, client).
READY_TIMEOUT: Final = 60.0
#: Slack on top of duration + timeouts before a worker counts as hung.
FINISH_SLACK: Final = 15.0


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Worker(Protocol):
    label: str
    hello: dict[str, Any] | None
    summary: dict[str, Any] | None
    error: str | None
    ready: threading.Event

    def begin(self, t0: float) -> None: ...

    def stop(self) -> None: ...

    def join(self, timeout: float | None) -> bool: ...

    def kill(self) -> None: ...

    def received(self) -> tuple[int, list[int]]: ...

    def diagnostics(self) -> str: ...


class _Counter:
    def __init__(self) -> None:
        self.rows = 0
        self.counts = np.zeros(len(OUTCOMES), np.int64)

    def add(self, outcome: Any) -> None:
        self.rows += int(outcome.size)
        self.counts += np.bincount(outcome, minlength=len(OUTCOMES))


class _ProcessWorker:
    def __init__(self, spec: LoadSpec, config: EngineConfig, sink: Any) -> None:
        self.label = f"load worker {config.part + 1}/{config.parts}"
        self.hello: dict[str, Any] | None = None
        self.summary: dict[str, Any] | None = None
        self.error: str | None = None
        self.ready = threading.Event()
        self._sink = sink
        self._counter = _Counter()
        # Closed in kill(), which every path through Launch reaches.
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        env = dict(os.environ)
        root = _package_root()
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        request = {"engine": config.to_dict(), "netns": spec.netns, "cgroup": spec.cgroup}
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pytest_dataplane.load._worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=env,
                # Its own session: a Ctrl-C at the terminal reaches the parent only, which
                # then stops or kills its workers itself.
                start_new_session=True,
            )
        except OSError as exc:
            self._stderr.close()
            raise DataplaneError(f"cannot start a load worker: {exc}") from None
        self.label += f" (pid {self.process.pid})"
        self._send(json.dumps(request).encode() + b"\n")
        self._thread = threading.Thread(target=self._read, name=self.label, daemon=True)
        self._thread.start()

    def _send(self, data: bytes) -> None:
        stdin = self.process.stdin
        if stdin is None or stdin.closed:
            return
        try:
            stdin.write(data)
            stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # the worker is gone; its stream and exit status say why

    def _read(self) -> None:
        stream = self.process.stdout
        try:
            if stream is None:
                raise DataplaneError("the worker was started without a pipe on its stdout")
            while True:
                frame = read_frame(stream)
                if frame is None:
                    break
                kind, payload = frame
                if kind == b"R":
                    columns = decode_rows(payload)
                    self._counter.add(columns[3])
                    self._sink(*columns)
                elif kind == b"H":
                    self.hello = json.loads(payload)
                    self.ready.set()
                elif kind == b"D":
                    self.summary = json.loads(payload)
                elif kind == b"E":
                    self.error = payload.decode(errors="replace")
                else:
                    raise ValueError(f"unknown frame kind {kind!r}")
        except Exception as exc:
            self.error = self.error or f"its result stream broke: {type(exc).__name__}: {exc}"
        finally:
            self.ready.set()

    def begin(self, t0: float) -> None:
        self._send(f"start {t0!r}\n".encode())

    def stop(self) -> None:
        self._send(b"stop\n")

    def join(self, timeout: float | None) -> bool:
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        try:
            self.process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            return False
        self._close_pipes()
        return True

    def _close_pipes(self) -> None:
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None and not pipe.closed:
                with contextlib.suppress(OSError):
                    pipe.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._thread.join(5.0)
        self._close_pipes()
        if not self._stderr.closed:
            self._stderr.close()

    def received(self) -> tuple[int, list[int]]:
        return self._counter.rows, [int(c) for c in self._counter.counts]

    def diagnostics(self) -> str:
        code = self.process.poll()
        status = "running" if code is None else f"exit status {code}"
        text = ""
        if not self._stderr.closed:
            self._stderr.seek(0)
            text = self._stderr.read().decode(errors="replace").strip()
        tail = "\n".join(text.splitlines()[-15:])
        return f"{status}" + (f"; its stderr:\n{tail}" if tail else "")


class _ThreadWorker:
    def __init__(self, config: EngineConfig, sink: Any) -> None:
        self.label = "load engine thread"
        self.hello: dict[str, Any] | None = None
        self.summary: dict[str, Any] | None = None
        self.error: str | None = None
        self.ready = threading.Event()
        self._config = config
        self._sink = sink
        self._counter = _Counter()
        self._begin = threading.Event()
        self._t0: float | None = None
        self._lock = threading.Lock()
        self._loop: Any = None
        self._engine: Engine | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._main, name=self.label, daemon=True)
        self._thread.start()

    def _emit(self, send: Any, latency: Any, lag: Any, outcome: Any) -> None:
        columns = (
            np.frombuffer(send, np.float64),
            np.frombuffer(latency, np.float32),
            np.frombuffer(lag, np.float32),
            np.frombuffer(outcome, np.uint8),
        )
        self._counter.add(columns[3])
        self._sink(*columns)

    def _main(self) -> None:
        loop = new_loop(self._config.uvloop)
        engine = Engine(self._config, loop)
        try:
            loop.run_until_complete(engine.prepare())
            self.hello = {
                "pid": os.getpid(),
                "loop": type(loop).__module__.split(".")[0],
                "part": 0,
                "thread": True,
            }
            with self._lock:
                self._loop, self._engine = loop, engine
            self.ready.set()
            self._begin.wait()
            if self._t0 is None:
                self.summary = {"rows": 0, "counts": [0] * len(OUTCOMES), "aborted": True}
                return
            if self._stop:
                engine.stop()
            rows = RowBuffer(self._emit)
            self.summary = loop.run_until_complete(engine.run(self._t0, rows))
        except BaseException as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                self._loop = None
            try:
                loop.run_until_complete(engine.aclose())
            finally:
                loop.close()
                self.ready.set()

    def begin(self, t0: float) -> None:
        self._t0 = t0
        self._begin.set()

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            loop, engine = self._loop, self._engine
            if loop is not None and engine is not None and self._begin.is_set():
                loop.call_soon_threadsafe(engine.stop)
        self._begin.set()

    def join(self, timeout: float | None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def kill(self) -> None:
        self.stop()
        self._thread.join(5.0)

    def received(self) -> tuple[int, list[int]]:
        return self._counter.rows, [int(c) for c in self._counter.counts]

    def diagnostics(self) -> str:
        return "thread " + ("running" if self._thread.is_alive() else "ended")


class Launch:
    """One load run in flight: :meth:`start`, optionally :meth:`stop`, :meth:`wait`, and
    always :meth:`close` (it kills what is left, on any path)."""

    def __init__(self, spec: LoadSpec, *, configs: Sequence[EngineConfig] | None = None) -> None:
        self.spec = spec
        # A duet gives each side its own slots of a shared schedule (see _duet.py).
        self.configs = (
            list(configs)
            if configs is not None
            else [spec.engine_config(part) for part in range(spec.parts)]
        )
        expected = int(spec.rate * spec.duration * 1.05) + 64  # Poisson counts vary
        self.recorder = Recorder(max_rows=spec.max_rows, seed=spec.seed, expected_rows=expected)
        self.t0: float | None = None
        self.stopped_at: float | None = None
        self.ended_at: float | None = None
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._sink_error: str | None = None

    def _sink(self, send: Any, latency: Any, lag: Any, outcome: Any) -> None:
        try:
            with self._lock:
                self.recorder.add(send, latency, lag, outcome)
        except Exception as exc:  # reported by wait(); never lose the fact silently
            self._sink_error = f"{type(exc).__name__}: {exc}"

    def start(self) -> float:
        """Start the engines, wait until all are ready, start the schedule; return its t=0."""
        self.prepare()
        t0 = events.now() + START_MARGIN
        self.begin(t0)
        return t0

    def prepare(self) -> None:
        """Start the engines and wait until every one is ready to send."""
        spec = self.spec
        try:
            if spec.processes == 0:
                self._workers.append(_ThreadWorker(self.configs[0], self._sink))
            else:
                for config in self.configs:
                    self._workers.append(_ProcessWorker(spec, config, self._sink))
            deadline = events.now() + READY_TIMEOUT
            for worker in self._workers:
                worker.ready.wait(max(deadline - events.now(), 0.0))
                if worker.error is not None or worker.hello is None:
                    raise DataplaneError(self._failure(worker, "failed to start"))
                self._check_identity(worker)
        except BaseException:
            self.close()
            raise

    def begin(self, t0: float) -> None:
        """Start the prepared engines' schedule at ``t0`` (on the shared monotonic clock)."""
        for worker in self._workers:
            worker.begin(t0)
        self.t0 = t0

    def _check_identity(self, worker: _Worker) -> None:
        hello = worker.hello or {}
        spec = self.spec
        if spec.netns is not None:
            expected = os.stat(os.path.join(NETNS_DIR, spec.netns)).st_ino
            if hello.get("netns_inode") != expected:
                raise DataplaneError(
                    f"{worker.label} is not in network namespace {spec.netns!r} "
                    f"(its netns inode {hello.get('netns_inode')}, expected {expected})"
                )
        if spec.cgroup_path is not None and hello.get("cgroup") != spec.cgroup_path:
            raise DataplaneError(
                f"{worker.label} is in cgroup {hello.get('cgroup')!r}, not {spec.cgroup_path!r}"
            )

    def _failure(self, worker: _Worker, what: str) -> str:
        where = []
        if self.spec.netns:
            where.append(f"netns {self.spec.netns!r}")
        if self.spec.cgroup:
            where.append(f"cgroup {self.spec.cgroup!r}")
        place = f" in {', '.join(where)}" if where else ""
        message = f"{worker.label}{place} {what}"
        if worker.error:
            message += f": {worker.error}"
        return f"{message} [{worker.diagnostics()}]"

    def stop(self) -> None:
        """Stop sending now; requests in flight are cancelled (reported as ``other``)."""
        if self.stopped_at is None:
            self.stopped_at = events.now()
        for worker in self._workers:
            worker.stop()

    @property
    def running(self) -> bool:
        return self.t0 is not None and self.ended_at is None

    def wait(self, *, label: str = "") -> LoadResult:
        """Wait for every engine to finish its schedule and build the result."""
        if self.t0 is None:
            raise DataplaneError("the load run was not started")
        spec = self.spec
        # Per request: a connect timeout, then a response timeout, then the close grace.
        deadline = self.t0 + spec.duration + 2 * spec.timeout + FINISH_SLACK
        try:
            for worker in self._workers:
                if not worker.join(max(deadline - events.now(), 0.0)):
                    raise DataplaneError(
                        self._failure(worker, f"did not finish within {deadline - self.t0:.1f} s")
                    )
            self.ended_at = events.now()
            summaries = []
            for worker in self._workers:
                if worker.error is not None:
                    raise DataplaneError(self._failure(worker, "failed"))
                if worker.summary is None:
                    raise DataplaneError(self._failure(worker, "ended without a summary"))
                rows, counts = worker.received()
                if rows != worker.summary["rows"] or counts != list(worker.summary["counts"]):
                    raise DataplaneError(
                        f"{worker.label}: received {rows} rows {counts}, but it wrote "
                        f"{worker.summary['rows']} rows {worker.summary['counts']}"
                    )
                summaries.append(worker.summary)
            if self._sink_error is not None:
                raise DataplaneError(f"recording the load run's rows failed: {self._sink_error}")
        finally:
            self.close()
        return self._build(summaries, label)

    def _build(self, summaries: list[dict[str, Any]], label: str) -> LoadResult:
        spec = self.spec
        if self.t0 is None:
            raise DataplaneError("the load run was not started")
        duration = spec.duration
        if self.stopped_at is not None:
            duration = min(duration, max(self.stopped_at - self.t0, 0.0))
        extra: dict[str, Any] = {
            "seed": spec.seed,
            "processes": spec.processes,
            "timeout": spec.timeout,
            "max_rows": spec.max_rows,
            "workers": [w.hello for w in self._workers],
            "stopped": self.stopped_at is not None,
            "cancelled": sum(int(s.get("cancelled", 0)) for s in summaries),
            "precise_timer": all(s.get("precise_timer", True) for s in summaries),
        }
        if spec.netns:
            extra["netns"] = spec.netns
        if spec.cgroup_path:
            extra["cgroup"] = spec.cgroup_path
        if spec.arrival == "closed":
            extra["concurrency"] = spec.concurrency
            extra["closed_unsent"] = sum(int(s.get("closed_unsent", 0)) for s in summaries)
            extra["note"] = (
                "closed loop: latency measured from the actual send, NOT corrected for "
                "coordinated omission; requests a busy worker could not send were never sent"
            )
        if spec.http2:
            extra["http2"] = True
        recorder = self.recorder
        return LoadResult.build(
            recorder.timeline(),
            start=self.t0,
            target_rate=spec.rate,
            duration=duration,
            counts=recorder.counts(),
            url=spec.url,
            engine=spec.engine,
            arrival=spec.arrival,
            connection=spec.connection,
            corrected=spec.arrival != "closed",
            sampled=recorder.sampled,
            histogram=recorder.histogram,
            label=label,
            extra=extra,
            workers=[s["health"] for s in summaries if s.get("health")],
        )

    def close(self) -> None:
        """Kill whatever is still running (idempotent)."""
        for worker in self._workers:
            worker.kill()
