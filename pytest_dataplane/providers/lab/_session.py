"""A lab session: its unique prefix, its state directory, its cgroup, and who owns it.

Every object a session creates carries its prefix (``dpl`` + 6 hex digits): network
namespaces ``<prefix>-<cluster>-...``, the state directory ``/run/pytest-dataplane/<prefix>``
(pod logs, the private bpffs mount, the owner record) and the cgroup
``<cgroup2>/pytest-dataplane.<prefix>``. The owner record (pid and start time) lets
``cleanup`` tell a live session from one a killed run left behind.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..._host import cgroup2_mounts

STATE_ROOT = Path("/run/pytest-dataplane")
PREFIX_RE = re.compile(r"^dpl[0-9a-f]{6}$")
CGROUP_DIR = "pytest-dataplane."


def cgroup2_mount() -> Path | None:
    """The first cgroup v2 mount of this process, or None (``_host.cgroup2_mounts`` has
    them all)."""
    found = cgroup2_mounts()
    return found[0] if found else None


def _start_time(pid: int) -> str | None:
    """Start time of a running process ``pid``; None when it is gone (or a zombie: killed,
    not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # The fields after the command name (which may contain spaces): state is the
            # first, start time the twentieth.
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has: its parent, perhaps
    PID 1 or a CI runner's subreaper, has only not reaped it yet)."""
    return _start_time(pid) is not None


@dataclass(frozen=True)
class Session:
    """One lab session's names and places."""

    prefix: str

    @property
    def state_dir(self) -> Path:
        return STATE_ROOT / self.prefix

    @property
    def cgroup(self) -> Path | None:
        mount = cgroup2_mount()
        return None if mount is None else mount / f"{CGROUP_DIR}{self.prefix}"

    @classmethod
    def new(cls) -> Session:
        """Create a session with a fresh prefix and record this process as its owner."""
        while True:
            session = cls("dpl" + secrets.token_hex(3))
            try:
                session.state_dir.mkdir(parents=True, exist_ok=False)
                break
            except FileExistsError:
                continue
        owner = {"pid": os.getpid(), "start": _start_time(os.getpid())}
        (session.state_dir / "owner.json").write_text(json.dumps(owner))
        return session

    def owner_alive(self) -> bool:
        """Whether the process that created this session is still running."""
        try:
            owner = json.loads((self.state_dir / "owner.json").read_text())
        except (OSError, ValueError):
            return False
        return bool(_start_time(int(owner["pid"])) == owner.get("start"))
