"""The load generator measuring itself: its own CPU, its idle spin, its wait for a CPU.

Runs in a worker process (or the engine's thread); imports no numpy. The saturation guard
(:mod:`._saturation`) needs to tell two kinds of late sends apart:

- the generator could not keep up: its own thread was on a CPU doing its own work nearly all
  the time (near a full core), so a faster or lighter client would have sent on time;
- the host was busy: the generator had spare capacity but its thread was not running (it
  waited in the run queue while, say, a kube-proxy sync burned a core) — what a real client
  on that node suffers too.

:class:`SelfMeter` samples the engine thread's CPU time (``CLOCK_THREAD_CPUTIME_ID``, user +
system, so socket system calls count), its run-queue wait (``/proc/thread-self/schedstat``,
where the kernel has schedstats) and its involuntary context switches, at the start of the
schedule, every :data:`SAMPLE_EVERY` seconds while sending, and when the last request is sent.

The dispatcher waits for a send due within 200 µs by going round the event loop instead of
arming a timer (see ``_EARLY`` in :mod:`._engine`). That spin is CPU spent by choice, not
work: at 5,000 req/s it alone would keep a core busy. :meth:`SelfMeter.idle` accumulates the
short loop iterations in which nothing but the spin happened, and the guard subtracts them.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from typing import Any, Final

__all__ = ["IDLE_ITERATION", "SAMPLE_EVERY", "SelfMeter"]

#: Seconds between samples while sending.
SAMPLE_EVERY: Final = 0.25
#: A spin iteration that took longer than this did something else (I/O, or the thread was
#: preempted) and is not counted as idle: conservative, it can only overstate the busy CPU.
IDLE_ITERATION: Final = 50e-6
_RUSAGE_WHO: Final = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)


class SelfMeter:
    """Samples of this thread's own CPU, idle spin and run-queue wait during a schedule.

    Create it in the thread that runs the event loop (the schedstat file is per thread).
    """

    def __init__(self) -> None:
        self.idle = 0.0
        self._fd: int | None = None
        with contextlib.suppress(OSError):
            self._fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY | os.O_CLOEXEC)
        self.samples: list[list[float | None]] = []
        self.t0 = 0.0
        self.next_sample = float("inf")
        self._first: tuple[float, float, float | None, int] | None = None
        self._last: tuple[float, float, float | None, int] | None = None

    def _run_delay(self) -> float | None:
        if self._fd is None:
            return None
        try:
            fields = os.pread(self._fd, 128, 0).split()
            return int(fields[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return None

    def _read(self, now: float) -> tuple[float, float, float | None, int]:
        usage = resource.getrusage(_RUSAGE_WHO)
        return (now, time.thread_time(), self._run_delay(), int(usage.ru_nivcsw))

    def start(self, t0: float) -> None:
        """The schedule starts at ``t0`` (monotonic): the first call of :meth:`sample` (the
        dispatcher's first wake-up, just before the first send) opens the sending period."""
        self.t0 = t0
        self.next_sample = -float("inf")

    def _append(self, reading: tuple[float, float, float | None, int]) -> None:
        now, cpu, delay, _ = reading
        self.samples.append([round(now - self.t0, 6), cpu, round(self.idle, 6), delay])
        self._last = reading

    def sample(self, now: float) -> None:
        """Take a sample (the dispatcher calls this once ``now`` passes :attr:`next_sample`)."""
        reading = self._read(now)
        if self._first is None:
            self._first = reading
        self._append(reading)
        self.next_sample = now + SAMPLE_EVERY

    def finish(self) -> None:
        """The last request was sent: take the closing sample; later calls do nothing."""
        if self._first is not None and self.next_sample != float("inf"):
            self._append(self._read(time.monotonic()))
        self.next_sample = float("inf")

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def summary(self) -> dict[str, Any]:
        """Totals over the sending period and the samples (JSON-serialisable).

        ``wall``: seconds from the first sample to the last; ``cpu``: the thread's CPU time
        meanwhile; ``idle``: the spin iterations' share of it; ``run_delay``: seconds the
        thread waited for a CPU (None where schedstats are missing); ``nivcsw``: involuntary
        context switches; ``samples``: ``[t since t0, cpu, idle, run_delay]`` cumulative.
        """
        first, last = self._first, self._last
        if first is None or last is None:
            return {"wall": 0.0, "cpu": 0.0, "idle": 0.0, "run_delay": None, "samples": []}
        delay = None if first[2] is None or last[2] is None else last[2] - first[2]
        return {
            "wall": last[0] - first[0],
            "cpu": last[1] - first[1],
            "idle": self.idle,
            "run_delay": delay,
            "nivcsw": last[3] - first[3],
            "samples": [
                [t, float(cpu or 0.0) - first[1], idle, _minus(delay, first[2])]
                for t, cpu, idle, delay in self.samples
            ],
        }


def _minus(value: float | None, origin: float | None) -> float | None:
    return None if value is None or origin is None else value - origin
