"""``pytest_dataplane.load.run``: one blocking load run."""

from __future__ import annotations

from collections.abc import Mapping

from ._launch import Launch
from ._result import LoadResult
from ._spec import LoadSpec

__all__ = ["run"]


def run(
    url: str,
    *,
    rate: float | str,
    duration: float | str,
    engine: str | None = None,
    arrival: str = "constant",
    connection: str = "per-request",
    timeout: float | str = "2s",
    netns: str | None = None,
    cgroup: str | None = None,
    concurrency: int | None = None,
    processes: int = 1,
    http2: bool = False,
    verify: bool | str = True,
    headers: Mapping[str, str] | None = None,
    max_in_flight: int | None = None,
    max_rows: int = 1_000_000,
    seed: int | None = None,
) -> LoadResult:
    """Send HTTP GET requests to ``url`` at ``rate`` for ``duration``; return what happened.

    Open loop by default: request ``i`` is due at ``i / rate`` seconds (``arrival="constant"``)
    or at Poisson arrival times (``"poisson"``), whatever the server does, and its latency is
    measured from that *intended* time — a server stall shows up in the percentiles instead
    of silently slowing the client down (coordinated omission corrected).
    ``arrival="closed"`` runs ``concurrency`` workers (default 10) that each wait for their
    response before sending the next request (paced to ``rate`` at most); its latencies are
    measured from the actual send and are **not** corrected (``result.corrected`` is False).

    Arguments:
        url: ``http://`` or ``https://`` URL (GET; its host is resolved once, where the
            engine runs).
        rate: requests per second (``300``, ``"30k/s"``, ``"1200/m"``).
        duration: how long to send (``30``, ``"30s"``, ``"2m"``).
        engine: ``"fast"`` (lean HTTP/1.1 on asyncio protocols: a third of httpx's CPU per
            request at 300 req/s) or ``"httpx"`` (HTTP/1.1, HTTP/2 with ``http2=True``,
            TLS); by default fast, and httpx for ``https://`` URLs and ``http2=True``.
        connection: ``"per-request"`` (a new TCP connection per request, which exercises the
            dataplane's NAT every time) or ``"pooled"`` (keep-alive).
        timeout: limit for connecting, and again for the response (``"2s"``).
        netns: name of a network namespace (``/run/netns/NAME``) to run the engine in.
        cgroup: cgroup v2 to run the engine in, as a directory (``/sys/fs/cgroup/x``) or a
            path in the hierarchy (``/x``); the engine joins it before opening any socket.
        concurrency: closed-loop workers (``arrival="closed"`` only).
        processes: worker processes sharing the schedule (default 1); ``0`` runs the engine
            in a thread of this process (not with ``netns``/``cgroup``).
        http2: HTTP/2 with the httpx engine (ALPN over TLS; prior knowledge on http://).
        verify: TLS certificate verification: True, False, or a CA bundle file.
        headers: extra request headers.
        max_in_flight: outstanding requests at most (open loop; default 1,000 for httpx,
            10,000 for fast, shared by the processes); a request due beyond it is ``dropped``.
        max_rows: per-request rows kept; longer runs keep a uniform random sample
            (``result.sampled``) and exact-to-3-digits percentiles from an HDR histogram.
        seed: seeds the Poisson schedule and the row sample (random when None; in
            ``result.extra["seed"]``).

    Every scheduled request is accounted for: ``scheduled == completed + errors + dropped``.
    When the generator itself could not keep the schedule — its own CPU near a full core,
    requests dropped for capacity, or a backlog that never drained — the result is
    ``saturated`` and the assertion helpers refuse it. Sends made late by a busy host are
    reported in ``result.generator`` (how late, and why) and judged from the intended send
    time.

    Raises ValueError for a bad argument (naming it), DataplaneError when a worker fails
    (with the worker's own message).
    """
    spec = LoadSpec.create(
        url,
        rate=rate,
        duration=duration,
        engine=engine,
        arrival=arrival,
        connection=connection,
        timeout=timeout,
        netns=netns,
        cgroup=cgroup,
        concurrency=concurrency,
        processes=processes,
        http2=http2,
        verify=verify,
        headers=headers,
        max_in_flight=max_in_flight,
        max_rows=max_rows,
        seed=seed,
    )
    launch = Launch(spec)
    try:
        launch.start()
        return launch.wait()
    finally:
        launch.close()
