"""Argument validation of pytest_dataplane.load.run: every bad value is named."""

from __future__ import annotations

import os
from typing import Any

import pytest

from pytest_dataplane._host import cgroup2_mount
from pytest_dataplane.load import run
from pytest_dataplane.load._spec import LoadSpec, resolve_cgroup

URL = "http://127.0.0.1:9/"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 0}, r"rate: 0 is not positive"),
        ({"rate": -5}, r"rate: -5 is not positive"),
        ({"rate": "fast"}, r"rate: cannot parse 'fast'"),
        ({"rate": True}, r"rate: cannot use True"),
        ({"duration": 0}, r"duration: 0 is not positive"),
        ({"duration": "-1s"}, r"duration: '-1s' is negative"),
        ({"duration": "10 parsecs"}, r"duration: unknown unit 'parsecs' in '10 parsecs'"),
        ({"timeout": 0}, r"timeout: 0 is not positive"),
        ({"url": "localhost:80"}, r"url: 'localhost:80' has no http/https scheme"),
        ({"url": "ftp://h/"}, r"url: 'ftp://h/' has no http/https scheme"),
        ({"url": "http://"}, r"url: 'http://' has no host"),
        ({"url": "http://h:99999/"}, r"url: 'http://h:99999/' has a bad port"),
        ({"url": "http://h /"}, r"url: 'http://h /' is malformed"),
        ({"url": ""}, r"url: '' is malformed"),
        ({"url": 80}, r"url: 80 is not a string"),
        ({"url": "http://u:p@h/"}, r"carries credentials"),
        ({"engine": "curl"}, r"engine: unknown value 'curl'; accepted: httpx, fast"),
        ({"arrival": "burst"}, r"arrival: unknown value 'burst'; accepted: constant, poisson"),
        ({"connection": "keepalive"}, r"connection: unknown value 'keepalive'; accepted: "),
        ({"engine": "fast", "url": "https://h/"}, r"engine 'fast' speaks http:// only"),
        ({"engine": "fast", "http2": True}, r"http2: True needs engine='httpx'"),
        ({"concurrency": 4}, r"concurrency: 4 applies to arrival='closed' only"),
        ({"arrival": "closed", "concurrency": 0}, r"concurrency: 0 is not a positive"),
        ({"arrival": "closed", "concurrency": 2, "processes": 3}, r"cannot be split over 3"),
        ({"processes": -1}, r"processes: -1 is not"),
        ({"processes": 65}, r"processes: 65 is above 64"),
        ({"max_in_flight": 0}, r"max_in_flight: 0 is not a positive integer"),
        ({"max_rows": 1.5}, r"max_rows: 1.5 is not a positive integer"),
        ({"seed": -1}, r"seed: -1 is not"),
        ({"netns": "dpt-does-not-exist"}, r"netns: no network namespace 'dpt-does-not-exist'"),
        ({"netns": "a/b"}, r"netns: 'a/b' is not a network namespace name"),
        ({"cgroup": "/dpt-does-not-exist"}, r"cgroup: '/dpt-does-not-exist'"),
        ({"verify": "/dpt/no/such/ca.pem"}, r"verify: CA bundle '/dpt/no/such/ca.pem'"),
        ({"headers": {"X-A": "1\r\nInjected: 1"}}, r"headers: 'X-A'"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"url": URL, "rate": 10, "duration": 1, **kwargs}
    url = args.pop("url")
    with pytest.raises(ValueError, match=message):
        run(url, **args)


def test_strings_are_parsed_at_the_boundary() -> None:
    spec = LoadSpec.create(URL, rate="1.2k/s", duration="1m", timeout="250ms", seed=3)
    assert (spec.rate, spec.duration, spec.timeout) == (1200.0, 60.0, 0.25)
    assert spec.engine_config(0).seed == 3


def test_work_is_split_over_processes() -> None:
    spec = LoadSpec.create(
        URL, rate=10, duration=1, arrival="closed", concurrency=7, processes=3, max_in_flight=10
    )
    configs = [spec.engine_config(k) for k in range(3)]
    assert [c.part for c in configs] == [0, 1, 2]
    assert {c.parts for c in configs} == {3}
    assert sum(c.concurrency for c in configs) == 7
    assert all(c.max_in_flight == 4 for c in configs)
    assert LoadSpec.create(URL, rate=1, duration=1).seed >= 0  # random when not given
    assert LoadSpec.create(URL, rate=1, duration=1).max_in_flight == 10_000  # fast
    assert LoadSpec.create(URL, rate=1, duration=1, engine="httpx").max_in_flight == 1_000
    assert LoadSpec.create(URL, rate=1, duration=1, engine="fast").max_in_flight == 10_000


def test_in_process_runs_cannot_enter_namespaces(tmp_path: Any) -> None:
    mount = cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy mounted")
    with pytest.raises(ValueError, match=r"processes: 0 .* cannot enter a netns or cgroup"):
        LoadSpec.create(URL, rate=1, duration=1, processes=0, cgroup=mount)


def test_cgroup_given_as_directory_or_as_hierarchy_path(tmp_path: Any) -> None:
    root = tmp_path / "cg"
    (root / "a" / "b").mkdir(parents=True)
    for directory in (root, root / "a", root / "a" / "b"):
        (directory / "cgroup.procs").write_text("")
    expected = (os.path.realpath(root / "a" / "b"), "/a/b")
    assert resolve_cgroup(str(root / "a" / "b"), mount=str(root)) == expected
    assert resolve_cgroup("/a/b", mount=str(root)) == expected
    assert resolve_cgroup("a/b", mount=str(root)) == expected
    assert resolve_cgroup("/", mount=str(root)) == (os.path.realpath(root), "/")
    with pytest.raises(ValueError, match="not a cgroup v2 directory under"):
        resolve_cgroup(str(tmp_path), mount=str(root))  # outside the hierarchy
    with pytest.raises(ValueError, match="not a cgroup v2 directory under"):
        resolve_cgroup("/a/../../etc", mount=str(root))
