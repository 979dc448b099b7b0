"""Nothing the lab creates outlives it, and the root namespace's firewall is never touched.

Each case runs a real pytest session in a subprocess on the iptables and ebpf dataplanes (real
Kubernetes in namespaces: etcd and its tmpfs, the control plane, kube-proxy, node agents and
their pods, the eBPF controller, cgroups, BPF program and pins) and ends it a different way.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubekit import ended

from pytest_dataplane.providers.lab._session import CGROUP_DIR, STATE_ROOT, cgroup2_mount

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

INNER_TEST = """
import os, pathlib, time

def test_story(dataplane):
    service = dataplane.deploy("web", replicas=2)
    marks = pathlib.Path(os.environ["LAB_MARKS"])
    marks.mkdir(exist_ok=True)
    (marks / dataplane.name).write_text(dataplane.handle.prefix)
    mode = os.environ["LAB_MODE"]
    if mode == "fail" and dataplane.name == "ebpf":
        raise AssertionError("this test fails on purpose")
    if mode == "hang" and dataplane.name == "ebpf":
        time.sleep(600)
"""


def _lab_objects() -> set[str]:
    found = set()
    if os.path.isdir("/run/netns"):
        found |= {f"netns:{n}" for n in os.listdir("/run/netns") if n.startswith("dpl")}
    if STATE_ROOT.is_dir():
        found |= {f"state:{p.name}" for p in STATE_ROOT.iterdir()}
    mount = cgroup2_mount()
    if mount is not None:
        found |= {f"cgroup:{p.name}" for p in mount.iterdir() if p.name.startswith(CGROUP_DIR)}
    with open("/proc/mounts") as mounts:
        found |= {f"mount:{line.split()[1]}" for line in mounts if str(STATE_ROOT) in line}
    return found


def _bpf_programs() -> set[int]:
    done = subprocess.run(
        ["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True
    )
    return {p["id"] for p in json.loads(done.stdout) if p.get("name") == "dpt_connect4"}


def _programs_of_other_sessions(ours: set[str]) -> set[int]:
    # Other runs on this machine (other sessions, xdist workers) load programs of their own;
    # those attached to their sessions' cgroups are known not to be ours.
    done = subprocess.run(
        ["bpftool", "-j", "cgroup", "tree"], capture_output=True, text=True, check=True
    )
    found: set[int] = set()
    for entry in json.loads(done.stdout or "[]"):
        match = re.search(rf"/{re.escape(CGROUP_DIR)}(dpl[0-9a-f]{{6}})\b", entry["cgroup"])
        if match is not None and match.group(1) not in ours:
            found |= {program["id"] for program in entry["programs"]}
    return found


def _root_firewall() -> str:
    outputs = []
    for argv in (["iptables-legacy-save"], ["iptables-nft-save"], ["nft", "list", "ruleset"]):
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        # Dump headers carry timestamps; everything else must be identical.
        outputs.append(re.sub(r"^# (Generated|Completed) .*$", "", done.stdout, flags=re.M))
    return "\n".join(outputs)


def _processes_of(sessions: set[str]) -> list[str]:
    # A session's running processes (not zombies: see ended()): they name its prefix (state
    # paths, namespaces) or sit in its cgroup.
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or ended(entry.name):
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cgroup = (entry / "cgroup").read_text()
        except OSError:
            continue
        if any(s in cmdline or f"{CGROUP_DIR}{s}" in cgroup for s in sessions):
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


@pytest.fixture
def inner(tmp_path: Path):
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    before = (_lab_objects(), _bpf_programs(), _root_firewall())

    def start(mode: str) -> subprocess.Popen[str]:
        env = {**os.environ, "LAB_MODE": mode, "LAB_MARKS": str(tmp_path / "marks")}
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "-q",
                "-x",
                "--dataplane=iptables,ebpf",
                "--rootdir",
                str(tmp_path),
                str(tmp_path),
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_for_marks(count: int, process: subprocess.Popen[str]) -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            marks = tmp_path / "marks"
            if marks.is_dir() and len(list(marks.iterdir())) >= count:
                return
            if process.poll() is not None:
                pytest.fail(f"inner pytest ended early:\n{process.stdout.read()}")  # type: ignore[union-attr]
            time.sleep(0.1)
        pytest.fail("inner pytest never created its clusters")

    def sessions() -> set[str]:
        # Each inner test wrote its cluster's prefix, "<session>-<dataplane>".
        marks = tmp_path / "marks"
        found = {p.read_text().split("-")[0] for p in marks.iterdir()} if marks.is_dir() else set()
        assert found, "set-up: the inner run created clusters"
        return found

    def assert_clean() -> None:
        objects, programs, firewall = before
        ours = sessions()

        def leftovers() -> set[str]:
            return {o for o in _lab_objects() - objects if any(s in o for s in ours)}

        deadline = time.monotonic() + 10
        while leftovers() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert leftovers() == set()

        def leaked_programs() -> set[int]:
            return _bpf_programs() - programs - _programs_of_other_sessions(ours)

        # The kernel frees a released program after an RCU grace period, and another run's
        # program is attached to its cgroup only once loaded: allow for both.
        deadline = time.monotonic() + 10
        while leaked_programs() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert leaked_programs() == set()
        # A killed process is out of its cgroup's list a moment before it is a zombie.
        deadline = time.monotonic() + 10
        while _processes_of(ours) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _processes_of(ours) == []
        assert _root_firewall() == firewall

    start.wait_for_marks = wait_for_marks  # type: ignore[attr-defined]
    start.assert_clean = assert_clean  # type: ignore[attr-defined]
    return start


def test_a_finished_run_leaves_nothing(inner) -> None:
    # One run, two endings: iptables' test passes, ebpf's fails (each cluster boots in ~15 s).
    process = inner("fail")
    output, _ = process.communicate(timeout=900)
    assert "1 failed, 1 passed" in output, output
    inner.assert_clean()


def test_ctrl_c_leaves_nothing(inner) -> None:
    process = inner("hang")
    inner.wait_for_marks(2, process)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=300)
    assert "KeyboardInterrupt" in output, output
    inner.assert_clean()


def test_sigkill_then_cleanup_command_leaves_nothing(inner) -> None:
    process = inner("hang")
    inner.wait_for_marks(2, process)
    left_before = _lab_objects()
    process.kill()
    process.communicate(timeout=60)
    assert any(o.startswith("netns:") for o in left_before), "set-up: the run had namespaces"
    done = subprocess.run(
        [sys.executable, "-m", "pytest_dataplane", "cleanup"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "remove network namespace" in done.stdout, done.stdout
    inner.assert_clean()


def test_a_killed_but_unreaped_owner_counts_as_gone(tmp_path: Path, monkeypatch) -> None:
    from pytest_dataplane.providers.lab import _session

    monkeypatch.setattr(_session, "STATE_ROOT", tmp_path)
    child = subprocess.Popen(["sleep", "60"])
    try:
        session = _session.Session("dpl0000aa")
        session.state_dir.mkdir()
        start = _session._start_time(child.pid)
        (session.state_dir / "owner.json").write_text(
            json.dumps({"pid": child.pid, "start": start})
        )
        assert session.owner_alive()
        assert _session.running(child.pid)
        child.kill()
        deadline = time.monotonic() + 5
        # Not reaped yet: the child is a zombie, which is dead for cleanup's purposes.
        while session.owner_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not session.owner_alive()
        assert not _session.running(child.pid)  # what cleanup waits for after its signals
        assert Path(f"/proc/{child.pid}").exists(), "set-up: the zombie is still there"
    finally:
        child.kill()
        child.wait()
