"""The lab's "kube-proxy" loop: applies endpoint changes the way kube-proxy schedules syncs.

kube-proxy runs its sync function through a bounded-frequency runner: a token bucket of
``burst`` (2) syncs refilled once per ``min_sync_period`` (1 s by default), changes that
arrive meanwhile are coalesced into the next sync, and a full resync happens periodically
(``full_sync_period``, one hour) and after a failure. The eBPF dataplane (Cilium) applies
changes as they come: its ``min_sync_period`` is 0.

For each endpoint change this loop records the network-programming latency — seconds from
the change to the end of the sync that put it in the kernel, as Kubernetes' SLI defines it —
and the CPU seconds of that sync, shared among the changes it carried.

A proxier rewrites only the services a sync names as changed, so the names and the desired
state a sync reads must agree: whoever changes the desired state submits the change while
holding ``lock``, and the loop holds ``lock`` while it takes the pending changes and reads
the desired state. Otherwise a change made between the two would be in the state but not
in the names, and kube-proxy's layouts would delete an endpoint chain that a service chain,
not rewritten, still jumps to (a failed sync) or the eBPF maps would skip it until the next
change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from ...errors import DataplaneError
from ...events import now
from ._types import Proxier, ServiceSpec, SyncResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Change:
    """An endpoint (or service) change waiting to be programmed."""

    service: str
    time: float
    description: str
    endpoint_change: bool = True


@dataclass(frozen=True)
class SyncRecord:
    """One sync: when it ended, what it cost, and the changes it carried."""

    finished: float
    result: SyncResult
    changes: tuple[Change, ...]


class SyncLoop:
    """A thread that keeps ``proxier`` in step with ``desired()``.

    ``lock`` guards the desired state: hold it while changing that state and submitting the
    change (see the module's docstring).
    """

    def __init__(
        self,
        proxier: Proxier,
        desired: Callable[[], Mapping[str, ServiceSpec]],
        *,
        min_sync_period: float,
        burst: int = 2,
        full_sync_period: float = 3600.0,
        lock: AbstractContextManager[object] | None = None,
    ) -> None:
        if min_sync_period < 0:
            raise ValueError(f"min_sync_period: {min_sync_period!r} must be >= 0 seconds")
        self.proxier = proxier
        self._desired = desired
        self._state_lock: AbstractContextManager[object] = lock or nullcontext()
        self.min_sync_period = min_sync_period
        self.burst = burst
        self.full_sync_period = full_sync_period
        self._cond = threading.Condition()
        self._pending: list[Change] = []
        self._need_full = True
        self._requested = 0  # generation of the newest request
        self._done = 0  # generation the kernel reflects
        self._stop = False
        self._error: BaseException | None = None
        self._tokens = float(burst)
        self._tokens_at = time.monotonic()
        self._last_full = 0.0
        self.records: list[SyncRecord] = []
        self._thread = threading.Thread(target=self._run, name="lab-kube-proxy", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, changes: list[Change] | None = None, *, full: bool = False) -> int:
        """Queue changes (or a full sync); returns the generation to wait for."""
        with self._cond:
            if changes:
                self._pending.extend(changes)
            self._need_full = self._need_full or full
            self._requested += 1
            self._cond.notify_all()
            return self._requested

    def wait(self, generation: int, timeout: float = 300.0) -> None:
        """Block until a sync covering ``generation`` has reached the kernel."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._done < generation:
                if self._error is not None:
                    raise DataplaneError(f"the lab's proxier failed: {self._error}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DataplaneError(
                        f"the dataplane did not reflect the change within {timeout:g} s"
                    )
                self._cond.wait(min(left, 0.5))

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=600)

    @property
    def error(self) -> BaseException | None:
        return self._error

    def _take_token(self) -> float:
        """Seconds to wait before the next sync is allowed (0: go now, token taken)."""
        if self.min_sync_period <= 0:
            return 0.0
        current = time.monotonic()
        self._tokens = min(
            float(self.burst),
            self._tokens + (current - self._tokens_at) / self.min_sync_period,
        )
        self._tokens_at = current
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) * self.min_sync_period

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and self._requested == self._done:
                    periodic = self._last_full + self.full_sync_period - time.monotonic()
                    if periodic <= 0:
                        self._need_full = True
                        self._requested += 1
                        break
                    self._cond.wait(min(periodic, 1.0))
                if self._stop:
                    return
                delay = self._take_token()
            if delay > 0:
                time.sleep(delay)
                continue
            with self._state_lock:  # the changes taken and the state read must agree
                with self._cond:
                    changes = tuple(self._pending)
                    self._pending.clear()
                    full = self._need_full
                    self._need_full = False
                    generation = self._requested
                services = dict(self._desired())
            names = None if full else {c.service for c in changes}
            try:
                result = self.proxier.sync(services, names)
            except Exception as exc:  # a failed sync: retry as a full sync, like kube-proxy
                log.warning("lab proxier sync failed: %s", exc)
                with self._cond:
                    self._pending[:0] = changes
                    self._need_full = True
                    self._error = exc
                    self._cond.notify_all()
                time.sleep(max(self.min_sync_period, 0.2))
                continue
            finished = now()
            with self._cond:
                if full:
                    self._last_full = time.monotonic()
                self._error = None
                self.records.append(SyncRecord(finished, result, changes))
                self._done = max(self._done, generation)
                self._cond.notify_all()

    # ------------------------------------------------------------------ measurements

    def programming_latencies(self) -> list[float]:
        """Seconds from each endpoint change to the end of the sync that programmed it."""
        with self._cond:
            return [
                record.finished - change.time
                for record in self.records
                for change in record.changes
                if change.endpoint_change
            ]

    def cpu_per_change(self) -> tuple[list[float], list[Change], float]:
        """(CPU seconds per endpoint change, the changes, total CPU of all syncs).

        A sync's CPU is shared equally among the endpoint changes it carried.
        """
        per_change: list[float] = []
        changes: list[Change] = []
        with self._cond:
            total = sum(record.result.cpu for record in self.records)
            for record in self.records:
                carried = [c for c in record.changes if c.endpoint_change]
                for change in carried:
                    per_change.append(record.result.cpu / len(carried))
                    changes.append(change)
        return per_change, changes, total

    def clear_records(self) -> None:
        with self._cond:
            self.records.clear()
