"""The cluster's process handling on stand-in programs: namespace, cgroup, log tail in errors,
death with the owner. (No Kubernetes binaries needed.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubekit import ended, wait_for

from pytest_dataplane.errors import DataplaneError
from pytest_dataplane.providers.lab import netns
from pytest_dataplane.providers.lab._session import Session
from pytest_dataplane.providers.lab.cleanup import remove_session
from pytest_dataplane.providers.lab.kube.process import Process, stop_all

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")


@pytest.fixture
def session() -> Iterator[Session]:
    session = Session.new()
    yield session
    remove_session(session.prefix)


def test_a_process_runs_in_its_namespace_and_cgroup(session: Session, tmp_path: Path) -> None:
    name = f"{session.prefix}-t"
    netns.create(name)
    cgroup = session.cgroup / "t" if session.cgroup is not None else None
    process = Process(
        "probe",
        ["sh", "-c", "readlink /proc/self/ns/net; echo started; exec sleep 600"],
        netns=name,
        log_path=tmp_path / "probe.log",
        cgroup=cgroup,
    )
    process.start()
    try:
        process.wait_until(lambda: "started" in process.tail(), timeout=30, what="started")
        inside = os.readlink(f"/proc/{process.pid}/ns/net")
        assert inside != os.readlink("/proc/self/ns/net")
        assert inside in process.tail()
        if cgroup is not None:
            assert str(process.pid) in (cgroup / "cgroup.procs").read_text().split()
    finally:
        assert stop_all([process], timeout=5) == []
    assert process.exited() is not None


def _autogroup_nice(pid: int | str) -> int:
    # "/autogroup-<id> nice <n>"; empty for a process in no autogroup of its own (a session
    # the kernel left in the root group, as a CI runner's may be), which weighs as nice 0.
    fields = Path(f"/proc/{pid}/autogroup").read_text().split()
    return int(fields[-1]) if fields else 0


def test_a_control_plane_process_runs_at_a_lower_weight(tmp_path: Path) -> None:
    # The control plane's nice value and, where the kernel has autogroup, its session's: the
    # nodes' processes (and the test's own) keep theirs.
    process = Process(
        "low",
        ["sh", "-c", "echo started; exec sleep 600"],
        netns=None,
        log_path=tmp_path / "low.log",
        cgroup=None,
        nice=10,
    )
    process.start()
    try:
        process.wait_until(lambda: "started" in process.tail(), timeout=30, what="started")
        assert os.getpriority(os.PRIO_PROCESS, process.pid) == 10
        assert os.getpriority(os.PRIO_PROCESS, 0) == 0
        if Path(f"/proc/{process.pid}/autogroup").exists():
            assert _autogroup_nice(process.pid) == 10
            assert _autogroup_nice("self") == 0
    finally:
        assert stop_all([process], timeout=5) == []


def test_a_child_is_never_given_a_higher_weight() -> None:
    from pytest_dataplane.providers.lab.kube.process import child_setup

    with pytest.raises(ValueError, match=r"nice=-5: only a lower weight \(0 to 19\)"):
        child_setup(None, signal.SIGKILL, nice=-5)


def test_an_exit_before_ready_reports_the_log_tail(tmp_path: Path) -> None:
    process = Process(
        "broken",
        ["sh", "-c", "echo 'flag provided but not defined: --nope' >&2; exit 3"],
        netns=None,
        log_path=tmp_path / "broken.log",
        cgroup=None,
    )
    process.start()
    with pytest.raises(
        DataplaneError, match=r"(?s)broken exited with status 3 before ready.*--nope"
    ):
        process.wait_until(lambda: False, timeout=30, what="ready")


def test_a_timeout_names_what_was_awaited(tmp_path: Path) -> None:
    process = Process(
        "slow",
        ["sh", "-c", "echo waiting; exec sleep 600"],
        netns=None,
        log_path=tmp_path / "slow.log",
        cgroup=None,
    )
    process.start()
    try:
        with pytest.raises(
            DataplaneError, match=r"(?s)slow: not healthy \(/healthz\) after 0.2 s.*waiting"
        ):
            process.wait_until(lambda: False, timeout=0.2, what="healthy (/healthz)")
    finally:
        stop_all([process], timeout=5)


def test_a_process_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    process = Process(
        "stubborn",
        ["sh", "-c", "trap '' TERM; echo up; while :; do sleep 1; done"],
        netns=None,
        log_path=tmp_path / "stubborn.log",
        cgroup=None,
    )
    process.start()
    process.wait_until(lambda: "up" in process.tail(), timeout=30, what="up")
    assert stop_all([process], timeout=0.5) == ["stubborn"]
    assert process.exited() == -signal.SIGKILL


def test_components_die_with_their_owner(tmp_path: Path) -> None:
    """An owner SIGKILLed mid-run takes its components along (parent-death signal)."""
    owner_code = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from pytest_dataplane.providers.lab.kube.process import Process
        p = Process("child", ["sleep", "600"], netns=None,
                    log_path=Path({str(tmp_path / "child.log")!r}), cgroup=None)
        p.start()
        print(p.pid, flush=True)
        time.sleep(600)
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", owner_code], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    child = int(owner.stdout.readline())
    assert Path(f"/proc/{child}").exists()
    owner.kill()
    owner.wait()
    owner.stdout.close()

    wait_for(lambda: ended(child), timeout=10, what="the child gone with its owner")
