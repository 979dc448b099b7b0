"""Load runs inside a network namespace and a cgroup v2 the test creates (root only).

The server runs inside the namespace, so requests can only succeed if the worker really ran
there; the worker reports its own /proc/self/cgroup and netns inode, and ``ss --cgroup``
shows the cgroup its sockets were created in (a socket keeps the cgroup of its creator:
that is what the lab's cgroup connect4 BPF load balancer keys on).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dataplane._host import NETNS_DIR, cgroup2_mount
from pytest_dataplane.errors import DataplaneError
from pytest_dataplane.load import LoadFactory, run

SERVER = Path(__file__).with_name("dpt_load_server.py")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and cgroups need root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 'ip' is not installed"),
]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def netns() -> Iterator[str]:
    name = "dpt" + secrets.token_hex(3)[:5]
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a network namespace: {exc.stderr.decode().strip()}")
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(
            ["ip", "netns", "delete", name], check=False, capture_output=True, timeout=30
        )


@pytest.fixture
def cgroup() -> Iterator[str]:
    mount = cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy is mounted")
    path = os.path.join(mount, "dpt" + secrets.token_hex(3)[:5])
    try:
        os.mkdir(path)
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup under {mount}: {exc}")
    try:
        yield path
    finally:
        for _ in range(50):  # the last worker may still be exiting
            try:
                os.rmdir(path)
                break
            except OSError:
                time.sleep(0.1)


@pytest.fixture
def root_port() -> Iterator[int]:
    """A loopback port held (bound, not listening) in the root namespace for the test: a
    connection to it from here is refused, whatever else runs on the machine."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])


@pytest.fixture
def netns_server(
    netns: str, root_port: int
) -> Iterator[tuple[str, subprocess.Popen[str], list[str]]]:
    """The test server inside ``netns``, on the port ``root_port`` holds in the root
    namespace; yields (url, process, its final output)."""
    process = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, str(SERVER), "127.0.0.1", str(root_port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdin is not None
    output: list[str] = []
    try:
        port = int(process.stdout.readline())
        yield f"http://127.0.0.1:{port}/", process, output
    finally:
        with contextlib.suppress(OSError):
            process.stdin.close()
        try:
            if not process.stdout.closed:
                output.extend(process.stdout.read().splitlines())
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()


def _server_counters(process: subprocess.Popen[str], output: list[str]) -> dict[str, int]:
    import json

    assert process.stdin is not None and process.stdout is not None
    process.stdin.close()
    output.extend(process.stdout.read().splitlines())
    process.stdout.close()
    process.wait(timeout=10)
    counters: dict[str, int] = json.loads(output[-1])
    return counters


@pytest.mark.parametrize(("engine", "processes"), [("httpx", 1), ("fast", 2)])
def test_the_engine_runs_inside_the_namespace_and_the_cgroup(
    engine: str,
    processes: int,
    netns: str,
    cgroup: str,
    netns_server: tuple[str, subprocess.Popen[str], list[str]],
) -> None:
    url, server, output = netns_server
    port = int(url.rsplit(":", 1)[1].strip("/"))
    cgroup_path = "/" + os.path.basename(cgroup)
    sockets: list[str] = []

    def list_sockets() -> list[str]:
        # nsenter keeps this mount namespace (ip netns exec would remount /sys and hide the
        # cgroup hierarchy from ss, which then prints only the cgroup's id).
        listing = subprocess.run(
            [
                "nsenter",
                f"--net=/run/netns/{netns}",
                "ss",
                "-tnH",
                "--cgroup",
                "state",
                "established",
                f"dport = :{port}",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return [line for line in listing.stdout.splitlines() if line.strip()]

    # The pooled connections exist from the first request until the run ends: list them
    # while the run is going (the block begins once the schedule has started), as many
    # times as it takes on a busy machine.
    factory = LoadFactory(record=None)
    with factory(
        url,
        rate=40,
        duration=1.5,
        engine=engine,
        processes=processes,
        connection="pooled",
        netns=netns,
        cgroup=cgroup,
    ) as load_run:
        end = time.monotonic() + 1.5
        while not sockets and time.monotonic() < end:
            sockets = list_sockets()
    result = load_run.result
    counters = _server_counters(server, output)
    assert result.completed == result.scheduled == 60
    assert counters["requests"] == 60
    inode = os.stat(f"{NETNS_DIR}/{netns}").st_ino
    workers = result.extra["workers"]
    assert len(workers) == processes
    for worker in workers:
        assert worker["cgroup"] == cgroup_path
        assert worker["netns_inode"] == inode
    assert result.extra["netns"] == netns and result.extra["cgroup"] == cgroup_path
    assert sockets, "no client socket seen by ss inside the namespace"
    # A cgroup v2's id is its directory's inode number.
    cgroup_id = f"{os.stat(cgroup).st_ino:x}"
    for line in sockets:
        assert f"cgroup:{cgroup_path}" in line or line.endswith(f":{cgroup_id}"), sockets


def test_the_same_url_outside_the_namespace_reaches_nothing(
    netns: str, netns_server: tuple[str, subprocess.Popen[str], list[str]]
) -> None:
    url, _, _ = netns_server
    outside = run(url, rate=20, duration=0.25)
    assert outside.error_kinds == {"connect_refused": 5}
    inside = run(url, rate=20, duration=0.25, netns=netns)
    assert inside.completed == 5


def test_the_cgroup_can_be_named_by_its_hierarchy_path(cgroup: str, closed_port: int) -> None:
    path = "/" + os.path.basename(cgroup)
    result = run(f"http://127.0.0.1:{closed_port}/", rate=20, duration=0.1, cgroup=path)
    assert result.extra["workers"][0]["cgroup"] == path
    assert result.error_kinds == {"connect_refused": 2}


def test_a_worker_that_cannot_enter_the_namespace_says_why(netns: str) -> None:
    # The namespace's handle disappears between validation and the worker's setns.
    from pytest_dataplane.load._launch import Launch
    from pytest_dataplane.load._spec import LoadSpec

    spec = LoadSpec.create("http://127.0.0.1:9/", rate=1, duration=1, netns=netns)
    _ip("netns", "delete", netns)
    launch = Launch(spec)
    try:
        with pytest.raises(DataplaneError, match=rf"in netns '{netns}' failed to start: .*{netns}"):
            launch.start()
    finally:
        launch.close()
    _ip("netns", "add", netns)  # for the fixture's teardown to remove
