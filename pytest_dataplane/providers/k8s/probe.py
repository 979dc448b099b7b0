"""Network-programming latency by connection, for dataplanes that publish no histogram.

After an ``endpoint-added`` event, requests go through the service (a new connection each, so
the dataplane chooses a backend every time) until one is answered by the new pod — agnhost's
``/hostname`` names the pod that served it. The latency is from the event to that answer; it
includes up to one probe interval of sampling delay, and with n endpoints about n tries.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from ...events import now

__all__ = ["Probe", "Prober", "fetch_hostname"]


def fetch_hostname(url: str, *, timeout: float = 1.0) -> str | None:
    """GET ``<url>hostname`` on a fresh connection; the pod name that answered, or None."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", "/hostname", headers={"Connection": "close"})
        response = connection.getresponse()
        body = response.read(256).decode(errors="replace").strip()
        return body if response.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


@dataclass(frozen=True)
class Probe:
    """One endpoint to wait for: the service URL, the new pod, and when it was announced."""

    url: str
    pod: str
    since: float
    label: str = ""


class Prober:
    """Runs probes concurrently (a rollout adds several endpoints at once, and each must be
    timed from its own event); collects latencies and misses."""

    def __init__(
        self,
        *,
        timeout: float = 15.0,
        interval: float = 0.005,
        workers: int = 8,
        fetch: Callable[[str], str | None] = fetch_hostname,
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.timeout = timeout
        self._fetch = fetch
        self.interval = interval
        self._lock = threading.Lock()
        self._latencies: list[float] = []
        self.misses: list[str] = []
        self._generation = 0
        self._closed = False
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dataplane-probe")

    def submit(self, probe: Probe) -> None:
        """Start timing ``probe``."""
        with self._lock:
            if self._closed:
                return
            generation = self._generation
        self._pool.submit(self._probe, generation, probe)

    def latencies(self) -> list[float]:
        """Latencies measured since the last :meth:`clear`."""
        with self._lock:
            return list(self._latencies)

    def clear(self) -> None:
        """Forget results; probes still running are not counted."""
        with self._lock:
            self._generation += 1
            self._latencies.clear()
            self.misses.clear()

    def close(self) -> None:
        """Stop: waits for running probes (each ends within its timeout)."""
        with self._lock:
            self._closed = True
            self._generation += 1
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _current(self, generation: int) -> bool:
        with self._lock:
            return generation == self._generation

    def _probe(self, generation: int, probe: Probe) -> None:
        deadline = probe.since + self.timeout
        answered: float | None = None
        while now() < deadline and self._current(generation):
            if self._fetch(probe.url) == probe.pod:
                answered = now()
                break
            time.sleep(self.interval)
        with self._lock:
            if generation != self._generation:
                return
            if answered is None:
                self.misses.append(
                    f"{probe.label or probe.pod}: no answer from {probe.pod} within "
                    f"{self.timeout:g} s"
                )
            else:
                self._latencies.append(answered - probe.since)
