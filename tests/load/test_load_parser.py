"""The fast engine's HTTP/1.x response parser and request bytes."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_dataplane.load._client import Target
from pytest_dataplane.load._http1 import ResponseParser, build_request

RESPONSES = {
    "length": (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, True),
    "chunked": (
        b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\nX-Trailer: y\r\n\r\n",
        503,
        True,
    ),
    "close": (b"HTTP/1.1 404 Nope\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 404, False),
    "http10": (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, False),
    "http10-keepalive": (
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
        200,
        True,
    ),
    "continue": (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", 204, True),
    "not-modified": (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n", 304, True),
}


@pytest.mark.parametrize("name", sorted(RESPONSES))
@given(cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_complete_exactly_at_the_end_however_the_bytes_arrive(name: str, cuts: list[int]) -> None:
    data, status, keep_alive = RESPONSES[name]
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    parser = ResponseParser()
    pieces = [data[a:b] for a, b in itertools.pairwise(points)]
    for i, piece in enumerate(pieces):
        complete = parser.feed(piece)
        assert complete == (i == len(pieces) - 1), (name, points, i)
    assert parser.status == status
    assert parser.keep_alive is keep_alive


def test_body_until_close() -> None:
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\n\r\nsome body") is False
    assert parser.until_close and parser.keep_alive is False
    assert parser.feed(b"more") is False


def test_reset_allows_reuse_on_a_keep_alive_connection() -> None:
    parser = ResponseParser()
    assert parser.feed(RESPONSES["length"][0])
    parser.reset()
    assert not parser.started
    assert parser.feed(RESPONSES["chunked"][0])
    assert parser.status == 503


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"HELLO THERE\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 abc OK\r\n\r\n", "bad status code"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "negative Content-Length"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * 70_000, "larger than 64 KiB"),
    ],
)
def test_malformed_responses(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ResponseParser().feed(data)


def test_request_bytes() -> None:
    target = Target("http", "svc.example", 8080, "/p?q=1", "10.0.0.1")
    close = build_request(target, (("X-Test", "1"),), close=True)
    assert close == (
        b"GET /p?q=1 HTTP/1.1\r\nHost: svc.example:8080\r\nUser-Agent: pytest-dataplane\r\n"
        b"Connection: close\r\nX-Test: 1\r\n\r\n"
    )
    keep = build_request(Target("http", "::1", 80, "/", "::1"), (), close=False)
    assert keep == b"GET / HTTP/1.1\r\nHost: [::1]\r\nUser-Agent: pytest-dataplane\r\n\r\n"
