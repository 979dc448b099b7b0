"""Real load runs against local servers: latency accounting, outcomes, connections, workers.

No timing asserts: what is checked is what the generator measured and counted (a stalled
server must show in the open-loop percentiles), not how fast anything was.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from dpt_load_server import HttpServer

from pytest_dataplane.errors import DataplaneError
from pytest_dataplane.load import LoadResult, run
from pytest_dataplane.load._schedule import offsets

ENGINES = ["httpx", "fast"]


def _accounted(result: LoadResult) -> None:
    assert result.scheduled == result.completed + result.errors + result.dropped
    assert result.errors == sum(result.error_kinds.values())
    assert len(result.timeline) == result.scheduled  # short runs keep every row
    sent = result.timeline.outcome != 8
    # Never early: a request leaves at or after its intended time.
    assert np.all(result.timeline.lag[sent] >= 0)
    if result.corrected:
        # Open loop: latency runs from the intended time, so it includes the lag.
        assert np.all(result.timeline.latency[sent] >= result.timeline.lag[sent])


def test_a_stalled_server_shows_in_open_loop_percentiles_not_in_closed_loop(
    http_server: HttpServer, load: Any
) -> None:
    """The server holds every response for 1 s, once, during a 6 s run at 200 req/s.

    Open loop: the ~200 requests due during the stall wait up to 1 s each, ~17 % of the run,
    so the p95 is several hundred ms. Closed loop: 10 workers wait once each, the requests
    they could not send meanwhile are sent late and measured from then: the stall all but
    vanishes from the percentiles (coordinated omission). Both runs see the same stall.
    """
    url = http_server.url
    with (
        load(url, rate=200, duration=6) as open_loop,
        load(url, rate=200, duration=6, arrival="closed", concurrency=10) as closed_loop,
    ):
        time.sleep(2.5)
        open_loop.mark("stall")
        http_server.state.stall(time.monotonic(), 1.0)
    opened, closed = open_loop.result, closed_loop.result
    for result in (opened, closed):
        _accounted(result)
    assert opened.completed == opened.scheduled == 1200
    # A closed loop counts what it sent; what its workers, held up by the stall, could not
    # send before the end (a few on a busy machine) is counted apart.
    assert closed.completed == closed.scheduled
    assert closed.scheduled + closed.extra["closed_unsent"] == 1200
    assert opened.corrected is True
    assert closed.corrected is False
    assert "NOT corrected" in closed.extra["note"]
    assert opened.percentile(95) >= 0.3
    assert closed.percentile(95) < 0.1
    assert closed.percentile(95) < opened.percentile(95) / 4
    # The stall sits where it was marked: the second after the mark holds the slow requests.
    (t_stall,) = opened.event_times("stall")
    during = opened.window(t_stall, t_stall + 0.9)
    assert during.percentile(50) > 0.1
    assert opened.window(0, t_stall - 0.1).percentile(99) < 0.3


@pytest.mark.parametrize("engine", ENGINES)
def test_nothing_listening_every_request_is_connect_refused(engine: str, closed_port: int) -> None:
    result = run(f"http://127.0.0.1:{closed_port}/", rate=100, duration=0.5, engine=engine)
    _accounted(result)
    assert result.scheduled == 50
    assert result.completed == 0
    assert result.error_kinds == {"connect_refused": 50}
    assert result.error_rate == 1.0
    assert np.isnan(result.percentile(50))


@pytest.mark.parametrize("engine", ENGINES)
def test_outcomes_are_classified(engine: str, http_server: HttpServer) -> None:
    actions = ["ok", "status:404", "status:503", "reset", "close", "garbage"]
    http_server.state.behaviour = lambda i: actions[i % len(actions)]
    result = run(http_server.url, rate=120, duration=0.5, engine=engine)
    _accounted(result)
    seen = http_server.state.actions
    assert sum(seen.values()) == result.scheduled == 60
    assert result.completed == seen["ok"]
    assert result.error_kinds == {
        "http_4xx": seen["status:404"],
        "http_5xx": seen["status:503"],
        "reset": seen["reset"] + seen["close"],
        "other": seen["garbage"],
    }


@pytest.mark.parametrize("engine", ENGINES)
def test_a_server_that_never_answers_is_a_read_timeout(
    engine: str, http_server: HttpServer
) -> None:
    http_server.state.behaviour = lambda i: "hang"
    result = run(http_server.url, rate=20, duration=0.25, engine=engine, timeout="300ms")
    _accounted(result)
    assert result.error_kinds == {"read_timeout": 5}
    # Reported at the timeout, measured from the intended send time.
    assert np.all(result.timeline.latency >= 0.3)


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A listening port whose accept queue is full: the kernel drops further SYNs."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            yield port


@pytest.mark.parametrize("engine", ENGINES)
def test_requests_beyond_the_in_flight_cap_are_dropped_and_saturate(
    engine: str, http_server: HttpServer
) -> None:
    http_server.state.behaviour = lambda i: "hang"
    result = run(
        http_server.url, rate=40, duration=0.25, engine=engine, timeout="1s", max_in_flight=3
    )
    _accounted(result)
    assert result.scheduled == 10
    assert result.error_kinds == {"read_timeout": 3}
    assert result.dropped == 7
    dropped = result.timeline.outcome == 8
    assert np.all(np.isnan(result.timeline.latency[dropped]))
    assert result.saturated
    assert "7 requests dropped, never sent (capacity exceeded" in result.saturation_reason


@pytest.mark.parametrize("engine", ENGINES)
def test_unanswered_syns_are_a_connect_timeout(engine: str, full_backlog: int) -> None:
    result = run(
        f"http://127.0.0.1:{full_backlog}/",
        rate=20,
        duration=0.25,
        engine=engine,
        timeout="300ms",
    )
    _accounted(result)
    assert result.error_kinds == {"connect_timeout": 5}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("connection", ["per-request", "pooled"])
def test_connection_modes(engine: str, connection: str, http_server: HttpServer) -> None:
    result = run(http_server.url, rate=100, duration=0.5, engine=engine, connection=connection)
    _accounted(result)
    state = http_server.state
    assert result.completed == state.requests == 50
    if connection == "per-request":
        assert state.connections == 50
    else:
        assert state.connections < 25  # kept alive and reused (50 requests)
    assert result.connection == connection


def test_the_timeline_is_the_schedule(http_server: HttpServer) -> None:
    result = run(http_server.url, rate=50, duration=1, engine="fast", processes=0)
    _accounted(result)
    np.testing.assert_array_equal(result.timeline.send, np.arange(50) / 50)
    assert result.target_rate == 50 and result.duration == 1
    assert result.extra["workers"][0]["thread"] is True


def test_poisson_runs_follow_their_seeded_schedule(http_server: HttpServer) -> None:
    result = run(http_server.url, rate=200, duration=0.5, arrival="poisson", engine="fast")
    _accounted(result)
    expected = list(offsets("poisson", 200, 0.5, seed=result.extra["seed"]))
    np.testing.assert_array_equal(result.timeline.send, expected)
    assert http_server.state.requests == len(expected)


def test_worker_processes_share_the_schedule_losslessly(http_server: HttpServer) -> None:
    result = run(
        http_server.url, rate=400, duration=0.5, engine="fast", connection="pooled", processes=2
    )
    _accounted(result)
    assert result.completed == http_server.state.requests == 200
    np.testing.assert_array_equal(result.timeline.send, np.arange(200) / 400)
    pids = {w["pid"] for w in result.extra["workers"]}
    assert len(pids) == 2 and all(pid != 0 for pid in pids)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_random_mix_of_failures_loses_nothing(engine: str, http_server: HttpServer) -> None:
    choices = itertools.cycle(
        np.random.default_rng(11)
        .choice(["ok", "ok", "ok", "status:500", "reset", "close"], 97)
        .tolist()
    )
    http_server.state.behaviour = lambda i: next(choices)
    result = run(
        http_server.url,
        rate=200,
        duration=0.5,
        engine=engine,
        connection="pooled",
        arrival="poisson",
    )
    _accounted(result)
    assert result.scheduled == len(list(offsets("poisson", 200, 0.5, seed=result.extra["seed"])))
    assert set(result.error_kinds) <= {"http_5xx", "reset"}


def test_a_failing_worker_surfaces_its_own_message(tmp_path: Any, http_server: HttpServer) -> None:
    bad_ca = tmp_path / "ca.pem"
    bad_ca.write_text("not a certificate\n")
    with pytest.raises(DataplaneError, match=r"load worker 1/1 .* failed to start: SSLError"):
        run(f"https://127.0.0.1:{http_server.port}/", rate=10, duration=1, verify=str(bad_ca))


def test_leaving_the_block_by_an_exception_stops_the_run(
    http_server: HttpServer, load: Any
) -> None:
    run_ = load(http_server.url, rate=100, duration=30)

    def block() -> None:
        with run_:
            time.sleep(0.3)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        block()
    result = run_.result
    _accounted(result)
    assert result.extra["stopped"] is True
    assert result.duration < 30
    assert 0 < result.scheduled < 3000


def test_a_worker_killed_mid_run_is_an_error_not_a_short_result(http_server: HttpServer) -> None:
    from pytest_dataplane.load._launch import Launch
    from pytest_dataplane.load._spec import LoadSpec

    launch = Launch(LoadSpec.create(http_server.url, rate=100, duration=5))
    try:
        launch.start()
        time.sleep(0.3)
        for worker in launch._workers:
            worker.process.kill()  # type: ignore[attr-defined]
        with pytest.raises(DataplaneError, match=r"ended without a summary \[exit status -9"):
            launch.wait()
    finally:
        launch.close()
