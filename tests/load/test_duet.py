"""Duets: two targets on one schedule, interleaved request by request, on one clock."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from dpt_load_server import HttpServer

from pytest_dataplane import events
from pytest_dataplane.load import duet
from pytest_dataplane.load._duet import make_duet
from pytest_dataplane.load._schedule import offsets


@pytest.fixture
def second_server() -> Iterator[HttpServer]:
    server = HttpServer()
    yield server
    server.close()


def test_a_constant_duet_gives_each_side_every_other_slot(
    http_server: HttpServer, second_server: HttpServer
) -> None:
    result = duet(http_server.url, second_server.url, rate=100, duration=1.0, engine="fast")
    base, cand = result.baseline, result.candidate
    assert base.scheduled == cand.scheduled == 100
    assert base.completed == cand.completed == 100
    assert http_server.state.requests == second_server.state.requests == 100
    # One schedule at 200/s: the candidate's request i is due half a period after the
    # baseline's, both counted from the same t=0.
    np.testing.assert_allclose(base.timeline.send, np.arange(100) / 100)
    np.testing.assert_allclose(cand.timeline.send, np.arange(100) / 100 + 0.005)
    assert base.start == cand.start
    assert result.offset == pytest.approx(0.005)
    assert base.target_rate == cand.target_rate == result.rate == 100
    assert base.extra["duet"]["id"] == cand.extra["duet"]["id"] == result.id
    assert (base.extra["duet"]["side"], cand.extra["duet"]["side"]) == ("baseline", "candidate")
    assert result.to_dict()["duet"]["offset"] == pytest.approx(0.005)


def test_a_poisson_duet_alternates_the_slots_of_one_schedule(
    http_server: HttpServer, second_server: HttpServer
) -> None:
    result = duet(
        http_server.url,
        second_server.url,
        rate=150,
        duration=1.0,
        engine="fast",
        arrival="poisson",
        seed=5,
        processes=2,
    )
    # Two processes per side: the combined schedule has four parts, each side two of them.
    expected = list(offsets("poisson", 300, 1.0, seed=5))
    np.testing.assert_allclose(np.sort(result.baseline.timeline.send), expected[0::2])
    np.testing.assert_allclose(np.sort(result.candidate.timeline.send), expected[1::2])
    assert result.offset is None
    assert len(result.baseline.extra["workers"]) == 2


def test_both_sides_sit_through_the_same_stall(http_server: HttpServer) -> None:
    """The same server behind both sides, stalled for 0.4 s once the duet runs: requests of
    either side that arrive in the stall wait it out, so both sides see the same moment."""
    run = make_duet(http_server.url, http_server.url, rate=100, duration=1.5, engine="fast")
    with run:
        http_server.state.stall(events.now() + 0.3, 0.4)
    result = run.result
    first = []
    for side in (result.baseline, result.candidate):
        waited = (side.timeline.outcome == 0) & (side.timeline.latency >= 0.1)
        assert waited.any(), "the stall must show on this side"
        first.append(float(side.timeline.send[waited].min()))
    # On the shared clock the stall begins at the same point of both sides' schedules (up to
    # the half-period interleave and how late each side's sends were).
    assert abs(first[0] - first[1]) <= 0.1


def test_a_closed_loop_cannot_be_interleaved(http_server: HttpServer) -> None:
    with pytest.raises(ValueError, match="arrival: 'closed' cannot be interleaved"):
        duet(http_server.url, http_server.url, rate=10, duration=1, arrival="closed")
    with pytest.raises(ValueError, match="url: 'ftp://x/' has no http/https scheme"):
        duet(http_server.url, "ftp://x/", rate=10, duration=1)


INNER = """
from types import SimpleNamespace

import pytest

from pytest_dataplane import _collect, assert_no_regression

A, B = {a!r}, {b!r}


def test_duet_fixture(load):
    old = SimpleNamespace(url=A, name="old")
    new = SimpleNamespace(url=B, name="new")
    with load.duet(old, new, rate=50, duration=1.0) as run:
        mark = run.mark("deploy")
    result = run.result
    assert run.baseline is result.baseline and run.candidate is result.candidate
    assert result.baseline.label == "old (duet baseline)"
    assert result.candidate.label == "new (duet candidate)"
    assert result.baseline.engine == "fast"
    assert mark in result.baseline.events and mark in result.candidate.events
    assert result.baseline.completed == result.candidate.completed == 50
    recorded = _collect.current().results
    assert recorded == [
        ("old (duet baseline)", result.baseline), ("new (duet candidate)", result.candidate)
    ]


def test_a_failing_block_stops_both_sides(load):
    with pytest.raises(RuntimeError, match="boom"):
        with load.duet(A, B, rate=50, duration=60) as run:
            raise RuntimeError("boom")
    result = run.result
    for side in (result.baseline, result.candidate):
        assert side.extra["stopped"] is True
        assert side.scheduled == side.completed + side.errors + side.dropped < 3000
"""


def test_the_duet_fixture(
    pytester: pytest.Pytester, http_server: HttpServer, second_server: HttpServer
) -> None:
    pytester.makepyfile(test_inner=INNER.format(a=http_server.url, b=second_server.url))
    result = pytester.runpytest("--dataplane-load-engine=fast", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
