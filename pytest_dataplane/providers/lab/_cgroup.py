"""A lab session's cgroup v2 trees: the processes in them, killing them, removing the tree, and
the BPF programs attached to a cgroup (the eBPF dataplane's socket load balancer).

Shared by the cluster's own stop (:mod:`.kube.lab`) and by ``python -m pytest_dataplane
cleanup`` (:mod:`.cleanup`), which reaps what a killed session left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

__all__ = ["attached_programs", "cgroup_pids", "kill_cgroup", "remove_cgroup"]


def cgroup_pids(root: Path) -> set[int]:
    """The pids of every process in ``root`` and the cgroups below it (none if it is gone)."""
    pids: set[int] = set()
    if root.is_dir():
        for procs in root.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids |= {int(p) for p in procs.read_text().split()}
    return pids


def kill_cgroup(root: Path) -> None:
    """SIGKILL every process in the tree (but this one) and wait up to 5 s for them to go."""
    pids = cgroup_pids(root) - {os.getpid()}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while cgroup_pids(root) and time.monotonic() < deadline:
        time.sleep(0.02)


def remove_cgroup(root: Path) -> list[str]:
    """Remove the tree, deepest cgroups first; what could not be removed, described."""
    errors: list[str] = []
    if not root.is_dir():
        return errors
    below = sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True)
    for directory in (*below, root):
        try:
            directory.rmdir()
        except OSError as exc:
            errors.append(f"cgroup {directory}: {exc}")
    return errors


def attached_programs(cgroup: Path) -> list[tuple[int, str]]:
    """(id, attach type) of the BPF programs attached to ``cgroup`` (none without bpftool)."""
    try:
        done = subprocess.run(
            ["bpftool", "-j", "cgroup", "show", str(cgroup)],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        return []
    if done.returncode != 0 or not done.stdout.strip():
        return []
    try:
        return [(int(p["id"]), str(p["attach_type"])) for p in json.loads(done.stdout)]
    except (ValueError, KeyError, TypeError):
        return []
