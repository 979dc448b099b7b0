"""Remove what lab sessions left behind: processes, namespaces, mounts, cgroups, state.

``python -m pytest_dataplane cleanup`` reaps sessions whose owning process is gone (a
SIGKILLed or crashed run); a session that is still running is left alone unless its prefix
is named explicitly. Only objects carrying a lab prefix (``dpl`` + 6 hex digits) are touched.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from ..._host import NETNS_DIR, read_mounts
from ._cgroup import attached_programs, cgroup_pids
from ._session import CGROUP_DIR, PREFIX_RE, STATE_ROOT, Session, cgroup2_mount, running

_NETNS_RE = re.compile(r"^(dpl[0-9a-f]{6})-")
_PROBE_RE = re.compile(r"^dplprobe[0-9a-f]{6}$")


def _netns_names() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def known_prefixes() -> set[str]:
    """Prefixes of every lab session with anything left on this machine."""
    prefixes = {m.group(1) for n in _netns_names() if (m := _NETNS_RE.match(n))}
    if STATE_ROOT.is_dir():
        prefixes |= {p.name for p in STATE_ROOT.iterdir() if PREFIX_RE.match(p.name)}
    mount = cgroup2_mount()
    if mount is not None and mount.is_dir():
        for entry in mount.iterdir():
            if entry.name.startswith(CGROUP_DIR):
                candidate = entry.name[len(CGROUP_DIR) :]
                if PREFIX_RE.match(candidate):
                    prefixes.add(candidate)
    return prefixes


def _netns_pids(name: str) -> set[int]:
    done = subprocess.run(
        ["ip", "netns", "pids", name], capture_output=True, text=True, check=False
    )
    return {int(p) for p in done.stdout.split() if p.isdigit()}


def _kill(pids: set[int]) -> None:
    pids.discard(os.getpid())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in list(pids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pids.discard(pid)
        deadline = time.monotonic() + 3
        while pids and time.monotonic() < deadline:
            for pid in list(pids):
                if not running(pid):
                    pids.discard(pid)
            time.sleep(0.05)


def _mounts_under(path: Path) -> list[str]:
    found = []
    for mount in read_mounts():
        if mount.target == str(path) or mount.target.startswith(f"{path}/"):
            found.append(mount.target)
    return sorted(found, key=len, reverse=True)


def remove_session(prefix: str, *, dry_run: bool = False) -> list[str]:
    """Remove everything of session ``prefix``; returns what was (or would be) removed."""
    if not PREFIX_RE.match(prefix):
        raise ValueError(f"prefix: {prefix!r} is not a lab prefix; accepted: dpl + 6 hex digits")
    session = Session(prefix)
    actions: list[str] = []
    namespaces = [n for n in _netns_names() if n.startswith(f"{prefix}-")]
    cgroup = session.cgroup
    pids: set[int] = set()
    for name in namespaces:
        pids |= _netns_pids(name)
    if cgroup is not None:
        pids |= cgroup_pids(cgroup)
    if pids:
        actions.append(f"kill processes {sorted(pids)}")
        if not dry_run:
            _kill(pids)
    for name in namespaces:
        actions.append(f"remove network namespace {name}")
        if not dry_run:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
    for target in _mounts_under(session.state_dir):
        actions.append(f"unmount {target}")
        if not dry_run:
            subprocess.run(["umount", target], capture_output=True, check=False)
    if cgroup is not None and cgroup.is_dir():
        for directory in sorted((p for p in cgroup.rglob("*") if p.is_dir()), reverse=True):
            # Detach first: a removed cgroup lets go of its programs only when the kernel
            # frees it, seconds later; a detached, unpinned program is freed at once.
            for program, attach_type in attached_programs(directory):
                actions.append(f"detach BPF program {program} ({attach_type}) from {directory}")
                if not dry_run:
                    subprocess.run(
                        [
                            "bpftool",
                            "cgroup",
                            "detach",
                            str(directory),
                            attach_type,
                            "id",
                            str(program),
                        ],
                        capture_output=True,
                        check=False,
                    )
            actions.append(f"remove cgroup {directory}")
            if not dry_run:
                os.rmdir(directory)
        actions.append(f"remove cgroup {cgroup}")
        if not dry_run:
            os.rmdir(cgroup)
    if session.state_dir.exists():
        actions.append(f"remove {session.state_dir}")
        if not dry_run:
            shutil.rmtree(session.state_dir, ignore_errors=True)
    return actions


def main(*, prefix: str | None = None, dry_run: bool = False) -> int:
    """``python -m pytest_dataplane cleanup``: reap dead sessions (or the one named)."""
    if prefix is not None:
        targets = [prefix]
    else:
        targets = sorted(p for p in known_prefixes() if not Session(p).owner_alive())
        live = sorted(p for p in known_prefixes() if Session(p).owner_alive())
        for p in live:
            print(f"{p}: still running (pid in {Session(p).state_dir}/owner.json), left alone")
    for probe in (n for n in _netns_names() if _PROBE_RE.match(n)):
        print(f"{'would remove' if dry_run else 'removed'} network namespace {probe}")
        if not dry_run:
            subprocess.run(["ip", "netns", "delete", probe], capture_output=True, check=False)
    for target in targets:
        for action in remove_session(target, dry_run=dry_run):
            print(f"{target}: {'would ' if dry_run else ''}{action}")
    if not targets:
        print("nothing to clean up")
    return 0
