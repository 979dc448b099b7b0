"""The lab's sync loop: a sync reads exactly the changes it is told of (no kernel needed)."""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping

from pytest_dataplane.providers.base import RuleCount
from pytest_dataplane.providers.lab._sync import Change, SyncLoop
from pytest_dataplane.providers.lab._types import Endpoint, ServiceSpec, SyncResult

WAIT = 10.0  # seconds; only reached if the loop is stuck


def _spec(name: str, *ips: str) -> ServiceSpec:
    index = ord(name[-1]) % 200
    return ServiceSpec(
        name=name, vip=f"10.96.0.{index}", port=80, endpoints=tuple(Endpoint(ip, 80) for ip in ips)
    )


class PartialProxier:
    """Rewrites only the services a sync names, as the lab's proxiers do, and records every
    difference between the desired state and what it holds that it was not told of."""

    name = "partial"

    def __init__(self) -> None:
        self.held: dict[str, ServiceSpec] = {}
        self.untold: list[str] = []

    def start(self) -> None:
        pass

    def sync(
        self, services: Mapping[str, ServiceSpec], changed: Collection[str] | None
    ) -> SyncResult:
        if changed is None:
            self.held = dict(services)
        else:
            for name in sorted(set(services) | set(self.held)):
                if services.get(name) == self.held.get(name):
                    continue
                if name not in changed:
                    self.untold.append(name)
                elif name in services:
                    self.held[name] = services[name]
                else:
                    del self.held[name]
        return SyncResult(wall=0.0, cpu=0.0, written=0, full=changed is None)

    def rule_count(self) -> RuleCount:  # pragma: no cover - not used here
        raise NotImplementedError

    def close(self) -> None:
        pass


def test_a_change_made_while_a_sync_starts_is_named_in_the_sync_that_reads_it() -> None:
    """The interleaving, forced: the sync thread has taken the pending changes (service a) and
    is about to read the desired state; another thread now changes service b and submits
    that change. If it can, the sync reads b's new endpoints without b among its names, and
    the proxier leaves b as it was (kube-proxy's layouts would even delete an endpoint chain
    that b's service chain still jumps to). The loop must hold the state's lock from taking
    the changes to reading the state, so that b's change waits for the next sync."""
    lock = threading.RLock()
    state = {
        "default/a": _spec("default/a", "10.0.0.2"),
        "default/b": _spec("default/b", "10.0.0.3"),
    }
    reading, go = threading.Event(), threading.Event()
    hold_next_read = threading.Event()

    def desired() -> dict[str, ServiceSpec]:
        if hold_next_read.is_set():
            hold_next_read.clear()
            reading.set()
            go.wait(WAIT)
        with lock:
            return dict(state)

    def change(name: str, *ips: str) -> int:
        with lock:  # as the cluster does: the state and its change under one lock
            state[name] = _spec(name, *ips)
            return loop.submit([Change(name, 0.0, f"{name} now {ips}")])

    proxier = PartialProxier()
    loop = SyncLoop(proxier, desired, min_sync_period=0.0, lock=lock)
    loop.start()
    try:
        loop.wait(loop.submit(full=True), WAIT)
        hold_next_read.set()
        change("default/a", "10.0.0.2", "10.0.0.4")
        assert reading.wait(WAIT), "the sync of a never read the desired state"
        # The sync thread is between taking [a] and reading the state.
        if lock.acquire(blocking=False):
            try:
                generation = change("default/b", "10.0.0.3", "10.0.0.5")
            finally:
                lock.release()
            go.set()
        else:  # the loop holds the lock: b's change waits for it, as it must
            go.set()
            generation = change("default/b", "10.0.0.3", "10.0.0.5")
        loop.wait(generation, WAIT)
    finally:
        go.set()
        loop.stop()
    assert proxier.untold == []
    assert proxier.held == state


def test_wait_covers_every_change_submitted_before_it() -> None:
    """Changes submitted from several threads at once are all programmed once wait()
    returns for the last generation any of them got."""
    lock = threading.RLock()
    state: dict[str, ServiceSpec] = {}

    def desired() -> dict[str, ServiceSpec]:
        with lock:
            return dict(state)

    proxier = PartialProxier()
    loop = SyncLoop(proxier, desired, min_sync_period=0.0, lock=lock)
    loop.start()
    generations: list[int] = []

    def writer(prefix: str) -> None:
        for i in range(50):
            name = f"{prefix}/svc-{i % 5}"
            with lock:
                state[name] = _spec(name, f"10.0.{i}.2")
                generations.append(loop.submit([Change(name, 0.0, f"{name} #{i}")]))

    threads = [threading.Thread(target=writer, args=(p,)) for p in ("x", "y", "z")]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        loop.wait(max(generations), WAIT)
    finally:
        loop.stop()
    assert proxier.untold == []
    assert proxier.held == state
