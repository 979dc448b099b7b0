"""Where the host's kernel state is read: the named network namespaces and the mount table.

One place for both so that every layer (the lab, the load generator, cleanup) agrees on the
namespace directory and unescapes mount points the same way.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: Where ``ip netns add NAME`` leaves the bind mount that names a network namespace.
NETNS_DIR: Final = "/run/netns"

MOUNTS: Final = "/proc/mounts"

# The kernel writes space, tab, newline and backslash in a mount's fields as a backslash and
# exactly three octal digits (fs/proc_namespace.c, mangle()); nothing else is escaped.
_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One line of the mount table, its fields unescaped."""

    source: str
    target: str
    fstype: str
    options: str


def unescape(field: str) -> str:
    """A mount-table field with its octal escapes (``\\040`` for a space ...) decoded."""
    return _ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def parse_mounts(text: str) -> list[Mount]:
    """The mounts listed in ``text`` (the format of ``/proc/mounts``), in table order."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            found.append(Mount(*(unescape(field) for field in fields[:4])))
    return found


def read_mounts(path: str = MOUNTS) -> list[Mount]:
    """The mounts of this process's mount namespace; empty when the table cannot be read."""
    try:
        with open(path, "rb") as table:
            # Paths are bytes to the kernel: decode them as os.listdir() would, so a name
            # that is not UTF-8 still round-trips to open() and umount.
            text = os.fsdecode(table.read())
    except OSError:
        return []
    return parse_mounts(text)


def cgroup2_mounts(table: Iterable[Mount] | None = None) -> list[Path]:
    """Where the cgroup v2 hierarchy is mounted, in table order: of ``table``, else of this
    process's mount namespace.

    Hybrid hosts mount it at ``/sys/fs/cgroup/unified``, unified ones at ``/sys/fs/cgroup``;
    nothing here assumes either.
    """
    mounts = read_mounts() if table is None else table
    return [Path(mount.target) for mount in mounts if mount.fstype == "cgroup2"]


def cgroup2_mount(path: str = MOUNTS) -> str | None:
    """The first cgroup v2 mount point of the mount table at ``path``, or None."""
    found = cgroup2_mounts(read_mounts(path))
    return str(found[0]) if found else None
